"""The output layer (permalign.output): regular files only, symlinks written through, short
temporary names, all-or-none commits, race-free no-clobber, one-line OS errors, signals."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest

from permalign import output
from permalign.errors import OutputError
from permalign.io import atomic_write, atomic_write_text


def listing(folder) -> list[str]:
    """Every path under ``folder`` (relative), so debris anywhere shows up."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def private_char_device(folder):
    """A private copy of /dev/null's device node (root only): refusing to replace it is tested
    on this node, never on the machine's real /dev/null."""
    node = folder / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("creating device nodes needs root")
    return node


# ------------------------------------------------------------------ targets
def test_non_regular_targets_are_refused_even_with_force(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    targets = {"a FIFO": fifo, "a directory": tmp_path / "dir"}
    if os.geteuid() == 0:
        targets["a character device"] = private_char_device(tmp_path)
    for kind, target in targets.items():
        before = os.stat(target).st_mode
        with pytest.raises(OutputError, match=f"is {kind}.*not a regular file"):
            atomic_write_text(target, "x", force=True)
        assert os.stat(target).st_mode == before, kind  # still the same kind of file
    assert listing(tmp_path) == sorted(p.name for p in targets.values())


def test_symlinks_are_written_through(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real.name)
    with pytest.raises(OutputError, match="already exists"):
        atomic_write_text(link, "new", force=False)
    atomic_write_text(link, "new", force=True)
    assert link.is_symlink() and real.read_text() == "new"
    assert listing(tmp_path) == ["link.txt", "real.txt"]


def test_dangling_symlink_is_refused(tmp_path):
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(OutputError, match="symbolic link to .*does not exist"):
        atomic_write_text(link, "x", force=True)
    assert not (tmp_path / "nowhere.txt").exists() and link.is_symlink()


def test_names_near_name_max_work_and_longer_ones_are_one_line(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = tmp_path / ("n" * limit)
    atomic_write_text(longest, "fits", force=False)
    assert longest.read_text() == "fits"
    with pytest.raises(OutputError, match="file name too long") as info:
        atomic_write_text(tmp_path / ("n" * (limit + 1)), "x", force=False)
    assert "\n" not in str(info.value)
    assert listing(tmp_path) == [longest.name]


def test_missing_directory_and_file_as_directory(tmp_path):
    with pytest.raises(OutputError, match="does not exist; create it first"):
        atomic_write_text(tmp_path / "no" / "x.txt", "x", force=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="(?i)not a directory"):
        atomic_write_text(tmp_path / "file" / "x.txt", "x", force=False)
    with pytest.raises(OutputError, match="regular file, not a folder"):
        output.make_dir(tmp_path / "file")


# ------------------------------------------------------------------ all or none
def test_outputs_appear_together_or_not_at_all(tmp_path):
    with output.transaction() as txn:
        atomic_write_text(tmp_path / "a.txt", "a", force=False)
        atomic_write_text(tmp_path / "b.txt", "b", force=False)
        assert listing(tmp_path) != ["a.txt", "b.txt"]  # staged, not yet in place
    assert txn.committed == [tmp_path / "a.txt", tmp_path / "b.txt"]
    assert listing(tmp_path) == ["a.txt", "b.txt"]

    def broken(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OutputError, match=r"cannot write .*c\.txt: No space left on device"):
        with output.transaction():
            atomic_write_text(tmp_path / "d.txt", "d", force=False)
            atomic_write(tmp_path / "c.txt", broken, force=False)
    assert listing(tmp_path) == ["a.txt", "b.txt"]


def test_failed_commit_rolls_back_what_it_placed(tmp_path, monkeypatch):
    (tmp_path / "old.txt").write_text("old")
    real_link = os.link

    def link(src, dst, *a, **k):
        if str(dst).endswith("z.txt"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real_link(src, dst, *a, **k)
    monkeypatch.setattr(os, "link", link)
    with pytest.raises(OutputError, match="z.txt: Disk quota exceeded"):
        with output.transaction(force=True):
            atomic_write_text(tmp_path / "old.txt", "new", force=True)
            atomic_write_text(tmp_path / "new.txt", "new", force=True)
            atomic_write_text(tmp_path / "z.txt", "z", force=True)
    assert listing(tmp_path) == ["old.txt"] and (tmp_path / "old.txt").read_text() == "old"


def test_folders_a_failed_transaction_created_are_removed(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with output.transaction():
            output.make_dir(tmp_path / "new" / "deeper")
            output.make_dir(tmp_path / "kept")
            atomic_write_text(tmp_path / "new" / "deeper" / "x.txt", "x", force=False)
            atomic_write_text(tmp_path / "kept" / "y.txt", "y", force=False)
            raise KeyboardInterrupt
    assert listing(tmp_path) == ["kept"]


def test_same_file_for_two_outputs_is_an_error(tmp_path):
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    with output.transaction() as txn:
        txn.declare(tmp_path / "x.json", "--out")
        txn.declare(tmp_path / "x.json", "--out")  # declaring again under one name is fine
        for other in (tmp_path / "x.json", tmp_path / "alias" / "x.json",
                      tmp_path / "alias" / ".." / tmp_path.name / "x.json"):
            with pytest.raises(OutputError, match="--out and --perm-out name the same file"):
                txn.declare(other, "--perm-out")


# ------------------------------------------------------------------ races
def test_no_clobber_is_race_free(tmp_path):
    """Two runs write one output without --force: exactly one wins, the other says so."""
    target = tmp_path / "out.txt"
    first, second = output.Transaction(), output.Transaction()
    first.stage(target, lambda tmp: tmp.write_text("first"))
    second.stage(target, lambda tmp: tmp.write_text("second"))  # both checked before either lands
    first.commit()
    with pytest.raises(OutputError, match="created by someone else while this command ran"):
        second.commit()
    assert target.read_text() == "first" and listing(tmp_path) == ["out.txt"]


def test_no_clobber_race_between_processes(tmp_path):
    """The same, between real processes started together on one target."""
    code = ("import sys, time; from permalign import output\n"
            "t = output.Transaction(); t.stage(sys.argv[1], lambda p: p.write_text(sys.argv[2]))\n"
            "time.sleep(float(sys.argv[3]) - time.time())\n"
            "try:\n    t.commit(); print('won')\n"
            "except Exception as e:\n    print('lost:', e)\n")
    import time
    start = time.time() + 20
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "o.txt"), name,
                               str(start)], stdout=subprocess.PIPE, text=True)
             for name in ("one", "two")]
    results = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert sorted(r.split(":")[0] for r in results) == ["lost", "won"], results
    winner = ("one", "two")[results.index("won")]
    assert (tmp_path / "o.txt").read_text() == winner and listing(tmp_path) == ["o.txt"]


# ------------------------------------------------------------------ OS errors
@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                                 errno.EIO])
def test_os_errors_are_one_line_naming_path_and_cause(tmp_path, monkeypatch, err):
    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(output.tempfile, "mkstemp", fail)
    with pytest.raises(OutputError) as info:
        atomic_write_text(tmp_path / "x.txt", "x", force=False)
    assert str(info.value) == f"cannot write {tmp_path / 'x.txt'}: {os.strerror(err)}"
    assert listing(tmp_path) == []


def mount_tmpfs_and_run(folder, options: str, code: str) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in a private mount namespace with a tmpfs on ``folder``."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private mount")
    folder.mkdir()
    script = (f"mount -t tmpfs -o {options} none {folder} || exit 77; "
              f'exec {sys.executable} -c "$0" "$@"')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, code, str(folder)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    return proc


CLI_IN_FOLDER = """
import os, sys
from permalign.cli import main
folder = sys.argv[1]
code = main(["train", "--model", "mlp:depth=2,width=256", "--epochs", "0",
             "--out", os.path.join(folder, "m.pt"), "--quiet"])
print("LEFT", sorted(os.listdir(folder)))
sys.exit(code)
"""


def test_read_only_file_system_is_one_line(tmp_path):
    proc = mount_tmpfs_and_run(tmp_path / "ro", "ro,size=1m", CLI_IN_FOLDER)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"permalign: error: cannot write {tmp_path / 'ro' / 'm.pt'}: " \
        "Read-only file system"


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A 64 KiB file system; the checkpoint needs about 340 KB."""
    proc = mount_tmpfs_and_run(tmp_path / "full", "size=64k", CLI_IN_FOLDER)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == \
        f"permalign: error: cannot write {tmp_path / 'full' / 'm.pt'}: No space left on device"
    assert "LEFT []" in proc.stdout  # no temporary file left in the full folder


# ------------------------------------------------------------------ signals
def test_signals_are_held_while_outputs_move_into_place(tmp_path, monkeypatch):
    """A signal that arrives during the commit is delivered after it: never half a commit."""
    seen = []
    real_link = os.link

    def link(src, dst, *args, **kwargs):
        real_link(src, dst, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives between placing the two files

    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(listing(tmp_path)))
    try:
        with output.transaction():
            atomic_write_text(tmp_path / "a.txt", "a", force=False)
            atomic_write_text(tmp_path / "b.txt", "b", force=False)
            monkeypatch.setattr(os, "link", link)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == [["a.txt", "b.txt"]]  # held until both were in place, delivered once
    assert listing(tmp_path) == ["a.txt", "b.txt"]
