"""Issue 11, class by class: bad or unusual input, as a hostile user gives it.

Each test is named after the class of the issue it covers (c01 ... c12); the output layer's
own tests are in test_output.py and the random argument vectors in test_fuzz_cli.py.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import time
from pathlib import Path

import pytest
import torch

from clitools import (SMALL, is_one_line_error, listing, run_cli, start_hanging, wait_for)
from permalign.errors import SpecError
from permalign.io import load_state_dict, save_state_dict
from permalign.models import build_model, resolve_model
from permalign.permutation import apply_permutation, perm_from_json


@pytest.fixture
def ckpts(tmp_path):
    """Two untrained checkpoints of SMALL (seeds 0 and 1) in ``tmp_path``."""
    for seed, name in ((0, "a.pt"), (1, "b.pt")):
        save_state_dict(build_model(SMALL, (1, 8, 8), 10, seed=seed).state_dict(),
                        tmp_path / name)
    return tmp_path / "a.pt", tmp_path / "b.pt"


def refused(code: int, err: str, *fragments: str) -> bool:
    return code == 2 and is_one_line_error(err) and all(f in err for f in fragments)


# ------------------------------------------------------------------ 1. non-regular targets
def test_c01_device_target_with_force_is_refused(tmp_path):
    """`--out /dev/null --force` (on a private copy of the device node, never the real one)."""
    if os.geteuid() != 0:
        pytest.skip("creating device nodes needs root")
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    code, _, err = run_cli("spec", "--model", SMALL, "--out", node, "--force")
    assert refused(code, err, "is a character device, not a regular file")
    assert stat.S_ISCHR(os.stat(node).st_mode)


@pytest.mark.parametrize("kind", ["directory", "FIFO"])
def test_c01_directory_or_fifo_target_with_force_is_refused(ckpts, tmp_path, kind):
    target = tmp_path / "target"
    target.mkdir() if kind == "directory" else os.mkfifo(target)
    code, _, err = run_cli("align", *ckpts, "--model", SMALL, "--out", target, "--force")
    assert refused(code, err, f"--out {target} is a", kind, "not a regular file")
    assert listing(tmp_path) == ["a.pt", "b.pt", "target"]


def test_c01_symlink_target_is_written_through(ckpts, tmp_path):
    real = tmp_path / "real.pt"
    real.write_bytes(b"old")
    (tmp_path / "link.pt").symlink_to(real)
    code, _, err = run_cli("align", *ckpts, "--model", SMALL, "--out", tmp_path / "link.pt",
                           "--force")
    assert code == 0, err
    assert (tmp_path / "link.pt").is_symlink() and set(load_state_dict(real)) == \
        set(load_state_dict(ckpts[0]))
    assert listing(tmp_path) == ["a.pt", "b.pt", "link.pt", "real.pt"]


# ------------------------------------------------------------------ 2. silently wrong results
def one_sided_spec(path: Path) -> Path:
    """SMALL's spec with the next layer's input axis dropped: shapes fit, outputs change."""
    _, spec = resolve_model(SMALL, (1, 8, 8), 10)
    record = spec.to_json()
    record["groups"]["hidden0"]["members"] = [
        m for m in record["groups"]["hidden0"]["members"] if m[0] != "head.weight"]
    path.write_text(json.dumps(record))
    return path


def test_c02_spec_that_changes_outputs_is_refused(ckpts, tmp_path):
    bad = one_sided_spec(tmp_path / "bad.json")
    code, _, err = run_cli("align", *ckpts, "--model", SMALL, "--spec", bad,
                           "--out", tmp_path / "o.pt")
    assert refused(code, err, "outputs changed", "--no-spec-check")
    assert not (tmp_path / "o.pt").exists()
    # the check is skipped only when asked, by name
    code, _, err = run_cli("align", *ckpts, "--model", SMALL, "--spec", bad, "--no-spec-check",
                           "--out", tmp_path / "o.pt")
    assert code == 0, err


@pytest.mark.parametrize("values, why", [
    ([0, 0, 1, 2, 3, 4, 5, 6], "duplicate"), ([0, 1, 2, 3, 4, 5, 6], "short"),
    ([-1, 1, 2, 3, 4, 5, 6, 7], "negative"), ([0.0, 1, 2, 3, 4, 5, 6, 7], "non-integer"),
    ([0, 1, 2, 3, 4, 5, 6, 8], "out of range")])
def test_c02_bad_permutations_are_refused_by_the_api(values, why):
    _, spec = resolve_model(SMALL, (1, 8, 8), 10)
    state = build_model(SMALL, (1, 8, 8), 10).state_dict()
    with pytest.raises(SpecError):
        apply_permutation(spec, {"hidden0": torch.tensor(values)}, state)
    with pytest.raises(SpecError):
        perm_from_json({"hidden0": values}, spec)


def test_c02_perm_from_json_reads_what_perm_out_writes(ckpts, tmp_path):
    code, _, err = run_cli("align", *ckpts, "--model", SMALL, "--out", tmp_path / "o.pt",
                           "--perm-out", tmp_path / "p.json")
    assert code == 0, err
    _, spec = resolve_model(SMALL, (1, 8, 8), 10)
    perm = perm_from_json(json.loads((tmp_path / "p.json").read_text()), spec)
    again = apply_permutation(spec, perm, load_state_dict(ckpts[1]))
    aligned = load_state_dict(tmp_path / "o.pt")
    assert all(torch.equal(again[k], aligned[k]) for k in aligned)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "argument --lr: must be a finite number > 0"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0"),
    (["--lr", "1e30"], "training diverged"),  # finite, but the loss becomes NaN
    (["--batch-size", "-4"], "argument --batch-size: must be >= 1"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--epochs", "-1"], "argument --epochs: must be >= 0"),
])
def test_c02_training_options_are_checked_and_divergence_stops(tmp_path, argv, message):
    code, _, err = run_cli("train", "--model", SMALL, "--epochs", "1", *argv,
                           "--out", tmp_path / "m.pt")
    assert refused(code, err, message)
    assert listing(tmp_path) == []


def test_c02_max_iter_zero_is_refused(ckpts, tmp_path):
    code, _, err = run_cli("align", *ckpts, "--model", SMALL, "--max-iter", "0",
                           "--out", tmp_path / "o.pt")
    assert refused(code, err, "--max-iter", ">= 1")
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("convert, dtype", [
    (lambda t: t.to(torch.int32), "int32"), (lambda t: t.to(torch.bool), "bool"),
    (lambda t: t.to(torch.complex64), "complex64"),
    (lambda t: t.to(torch.float8_e4m3fn), "float8_e4m3fn"),
    (lambda t: t.to_sparse(), "sparse")])
def test_c02_unsupported_checkpoint_dtypes_are_refused_by_name(ckpts, tmp_path, convert, dtype):
    state = load_state_dict(ckpts[1])
    torch.save({k: convert(v) for k, v in state.items()}, tmp_path / "odd.pt")
    code, _, err = run_cli("align", ckpts[0], tmp_path / "odd.pt", "--model", SMALL,
                           "--out", tmp_path / "o.pt")
    assert refused(code, err, dtype)
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_c02_float_checkpoints_still_load(ckpts, tmp_path, dtype):
    state = load_state_dict(ckpts[1])
    save_state_dict({k: v.to(dtype) for k, v in state.items()}, tmp_path / "half.safetensors")
    code, _, err = run_cli("align", ckpts[0], tmp_path / "half.safetensors", "--model", SMALL,
                           "--out", tmp_path / "o.pt")
    assert code == 0, err


# ------------------------------------------------------------------ 3. two outputs
def failing_json(monkeypatch):
    """Make every JSON output fail as a full disk would, after the other outputs are staged."""
    import errno

    from permalign.cli import commands

    def fail(path, obj, *, force):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(commands, "_write_json", fail)


def test_c03_align_keeps_no_checkpoint_when_perm_out_fails(ckpts, tmp_path, monkeypatch):
    failing_json(monkeypatch)
    code, out, err = run_cli("align", *ckpts, "--model", SMALL, "--out", tmp_path / "o.pt",
                             "--perm-out", tmp_path / "p.json")
    assert refused(code, err, "p.json", "No space left on device")
    assert listing(tmp_path) == ["a.pt", "b.pt"] and "wrote" not in out


def test_c03_interpolate_keeps_no_plot_when_out_fails(ckpts, tmp_path, monkeypatch):
    failing_json(monkeypatch)
    code, _, err = run_cli("interpolate", *ckpts, "--model", SMALL, "--points", "2",
                           "--eval-subset", "50", "--plot", tmp_path / "c.png",
                           "--out", tmp_path / "c.json")
    assert refused(code, err, "c.json", "No space left on device")
    assert listing(tmp_path) == ["a.pt", "b.pt"]


@pytest.mark.parametrize("command, second", [("align", "--perm-out"), ("interpolate", "--plot")])
def test_c03_one_file_for_two_outputs_is_refused(ckpts, tmp_path, command, second):
    same = tmp_path / "same"
    code, _, err = run_cli(command, *ckpts, "--model", SMALL, "--out", same, second, same)
    assert refused(code, err, f"--out and {second} name the same file")
    assert listing(tmp_path) == ["a.pt", "b.pt"]


# ------------------------------------------------------------------ 4. no overwrite w/o --force
def test_c04_report_refuses_to_overwrite_without_force(tmp_path):
    code, _, err = run_cli("experiment", "counterexample", "--quick", "--quiet",
                           "--out", tmp_path / "exp")
    assert code == 0, err
    (tmp_path / "RESULTS.md").write_text("mine")
    code, _, err = run_cli("report", tmp_path / "exp", "--out", tmp_path / "RESULTS.md")
    assert refused(code, err, "already exists; pass --force")
    assert (tmp_path / "RESULTS.md").read_text() == "mine"
    code, _, err = run_cli("report", tmp_path / "exp", "--out", tmp_path / "RESULTS.md",
                           "--force")
    assert code == 0 and "counterexample" in (tmp_path / "RESULTS.md").read_text()
    # experiment: a second run into the same folder needs --force too
    before = (tmp_path / "exp" / "results.json").read_bytes()
    code, _, err = run_cli("experiment", "counterexample", "--quick", "--quiet",
                           "--out", tmp_path / "exp")
    assert refused(code, err, "already exists; pass --force")
    assert (tmp_path / "exp" / "results.json").read_bytes() == before
    code, _, err = run_cli("experiment", "counterexample", "--quick", "--quiet",
                           "--out", tmp_path / "exp", "--force")
    assert code == 0, err


# ------------------------------------------------------------------ 5. unbounded memory
@pytest.mark.parametrize("command", ["interpolate", "demo"])
def test_c05_huge_point_counts_are_refused_at_once(ckpts, tmp_path, command):
    args = [*ckpts, "--model", SMALL] if command == "interpolate" else ["--out", tmp_path / "d"]
    started = time.monotonic()
    code, _, err = run_cli(command, *args, "--points", "1000000000")
    assert refused(code, err, "--points: must be <= 1000")
    assert time.monotonic() - started < 5
    assert listing(tmp_path) == ["a.pt", "b.pt"]


# ------------------------------------------------------------------ 6. one line, not traceback
FACTORIES = '''
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(64, 16), torch.nn.Linear(16, 10)
    def forward(self, x):
        h = self.a(x.flatten(1))
        if h.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            h = h * 2
        return self.b(h)
class Flat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(64, 10)
    def forward(self, x):  # wants (N, 64), not images
        return self.a(x)
def data_dependent(): return Net()
def flat(): return Flat()
def raises(): raise ValueError("no weights for you")
def not_a_module(): return 42
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "facts.py").write_text(FACTORIES)
    (tmp_path / "broken_import.py").write_text("x = 1 / 0\n")
    (tmp_path / "syntax_error.py").write_text("def (:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("model, message", [
    ("facts:raises", "raises() raised ValueError: no weights for you"),
    ("facts:not_a_module", "not a torch.nn.Module"),
    ("broken_import:f", "importing 'broken_import'"),
    ("syntax_error:f", "SyntaxError"),
    ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
    ("facts:flat", "fails on an input of shape 1,8,8"),
    ("facts:data_dependent", "torch.export could not trace the model"),
])
def test_c06_factories_that_fail_give_one_line(factories, model, message):
    code, _, err = run_cli("spec", "--model", model)
    assert refused(code, err, message)


SPEC_JSON = {
    "size as a string": {"groups": {"g": {"size": "8", "members": [["layers.0.weight", 0]]}}},
    "members not a list": {"groups": {"g": {"size": 8, "members": "layers.0.weight"}}},
    "axis as a string": {"groups": {"g": {"size": 8, "members": [["layers.0.weight", "0"]]}}},
    "groups as a list": {"groups": []},
    "unknown key": {"groups": {"g": {"size": 8, "members": [["nope.weight", 0]]}}},
    "top level a list": [1, 2],
}


@pytest.mark.parametrize("what", [*SPEC_JSON, "not UTF-8", "not JSON", "a directory", "a FIFO"])
def test_c06_bad_spec_files_give_one_line(ckpts, tmp_path, what):
    path = tmp_path / "spec.json"
    if what in SPEC_JSON:
        path.write_text(json.dumps(SPEC_JSON[what]))
    elif what == "not UTF-8":
        path.write_bytes(b"\xff\xfe{\x00")
    elif what == "not JSON":
        path.write_text("{groups: ")
    elif what == "a directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    code, _, err = run_cli("align", *ckpts, "--model", SMALL, "--spec", path,
                           "--out", tmp_path / "o.pt")
    assert refused(code, err, "spec"), what
    assert not (tmp_path / "o.pt").exists()


def write_cifar(folder: Path, damage: str) -> None:
    folder.mkdir()
    good = {b"data": [[0] * 3072] * 2, b"labels": [1, 2]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if damage == "garbage":
            (folder / name).write_bytes(b"\x80\x04garbage")
        elif damage == "truncated":
            (folder / name).write_bytes(pickle.dumps(good)[:40])
        elif damage == "code":
            (folder / name).write_bytes(pickle.dumps({b"data": os.getcwd}))
        else:  # labels out of range
            (folder / name).write_bytes(pickle.dumps({**good, b"labels": [1, 99]}))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "code", "labels"])
def test_c06_corrupt_cifar_gives_one_line(tmp_path, damage):
    write_cifar(tmp_path / "cifar", damage)
    code, _, err = run_cli("train", "--model", SMALL, "--dataset", "cifar10",
                           "--data-dir", tmp_path / "cifar", "--out", tmp_path / "m.pt")
    assert refused(code, err, str(tmp_path / "cifar"), "CIFAR" if damage != "labels" else "0..9")
    assert not (tmp_path / "m.pt").exists()


RESULTS = {
    "not JSON": "{",
    "a list": [],
    "rows not lists": {"experiment": "x", "claim": "y", "table": {"columns": ["a"],
                                                                  "rows": [5]}},
    "plots a number": {"experiment": "x", "claim": "y", "plots": 5},
    "plots not names": {"experiment": "x", "claim": "y", "plots": [5]},
    "provenance a string": {"experiment": "x", "claim": "y", "provenance": "z"},
    "versions a list": {"experiment": "x", "claim": "y", "provenance": {"versions": []}},
    "deeply nested": "[" * 100000 + "]" * 100000,
}


@pytest.mark.parametrize("what", list(RESULTS))
def test_c06_malformed_results_json_gives_one_line(tmp_path, what):
    (tmp_path / "exp").mkdir()
    value = RESULTS[what]
    (tmp_path / "exp" / "results.json").write_text(value if isinstance(value, str)
                                                   else json.dumps(value))
    code, _, err = run_cli("report", tmp_path / "exp", "--out", tmp_path / "R.md")
    assert refused(code, err, "results.json"), what
    assert not (tmp_path / "R.md").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", SMALL, "--device", "meta", "--out", "OUT"], "'meta' is not supported"),
    (["train", "--model", SMALL, "--device", "cuda:x", "--out", "OUT"], "unknown device"),
    (["train", "--model", SMALL, "--seed", "99999999999999999999", "--out", "OUT"],
     "--seed: must be <="),
    (["train", "--model", SMALL, "--input-shape", "100000,100000", "--out", "OUT"],
     "at most"),
    (["demo", "--out", "FILE"], "is a regular file, not a folder"),
    (["experiment", "counterexample", "--quick", "--out", "FILE"],
     "is a regular file, not a folder"),
    (["demo", "--points", "1", "--out", "DIR"], "--points: must be >= 2"),
    (["spec", "--model", SMALL, "--out", "LONG"], "file name too long"),
    (["spec", "--model", "vgg11:width=nan", "--dataset", "cifar10"], "positive number"),
])
def test_c06_bad_options_give_one_line(tmp_path, argv, message):
    (tmp_path / "file").write_text("mine")
    names = {"OUT": tmp_path / "o.pt", "FILE": tmp_path / "file", "DIR": tmp_path / "d",
             "LONG": tmp_path / ("x" * 300)}
    code, _, err = run_cli(*[names.get(a, a) for a in argv])
    assert refused(code, err, message)
    assert listing(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "mine"


# ------------------------------------------------------------------ 7. library logs
LOG_SCRIPT = """
import json, os, sys, tempfile
from permalign.cli import main
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    with tempfile.TemporaryFile("w+") as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            code = main(argv)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
        capture.seek(0)
        results[name] = [code, capture.read()]
print(json.dumps(results))
"""


def test_c07_library_logs_are_silent_unless_verbose(factories):
    """Everything that reaches file descriptor 2 is counted, logs from C++ included."""
    import subprocess
    import sys
    cases = {
        "data-dependent": ["spec", "--model", "facts:data_dependent"],
        "wrong shape": ["align", "a.pt", "b.pt", "--model", "facts:flat", "--input-shape",
                        "1,8,8", "--out", "o.pt"],
        "data-dependent --verbose": ["--verbose", "spec", "--model", "facts:data_dependent"],
    }
    proc = subprocess.run([sys.executable, "-c", LOG_SCRIPT, json.dumps(cases)],
                          cwd=factories, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("data-dependent", "wrong shape"):
        code, err = results[name]
        assert code == 2 and is_one_line_error(err), (name, err)
    code, err = results["data-dependent --verbose"]
    assert code == 2 and len(err.strip().splitlines()) > 5  # the logs do exist
    assert not (factories / "o.pt").exists()


# ------------------------------------------------------------------ 8. debris
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_c08_signal_while_writing_leaves_nothing(tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    ready = tmp_path / "ready"
    proc = start_hanging(["train", "--model", SMALL, "--epochs", "1", "--out",
                          str(out / "m.pt"), "--quiet"], "save", ready, tmp_path)
    wait_for(ready, proc)
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # caught in the middle
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    words = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}[sig]
    assert err.strip().splitlines() == [f"permalign: {words}; no output was written"]
    assert listing(out) == []


def interrupt_self_on_first_training_step(monkeypatch, sig):
    import torch.nn.functional as F
    real = F.cross_entropy

    def cross_entropy(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(30)  # the handler interrupts this sleep
        return real(*args, **kwargs)
    monkeypatch.setattr(F, "cross_entropy", cross_entropy)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_c08_interrupted_demo_removes_the_folder_it_created(tmp_path, monkeypatch, sig):
    interrupt_self_on_first_training_step(monkeypatch, sig)
    code, _, err = run_cli("demo", "--model", SMALL, "--out", tmp_path / "new" / "demo",
                           "--epochs", "1", "--quiet")
    assert code == 128 + sig and err.strip().endswith("no output was written")
    assert listing(tmp_path) == []


def test_c08_failed_experiment_removes_the_folder_it_created(tmp_path, monkeypatch):
    """The experiment fails after its plot was staged: no folder, no plot, no results."""
    from permalign.experiments import common

    def fail(*args, **kwargs):
        raise common.PermalignError("results cannot be written today")
    monkeypatch.setattr("permalign.experiments.write_results", fail)
    code, _, err = run_cli("experiment", "counterexample", "--quick", "--out",
                           tmp_path / "exp")
    assert refused(code, err, "results cannot be written today")
    assert listing(tmp_path) == []


def test_c08_experiment_keeps_an_existing_folder(tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "notes.txt").write_text("mine")
    interrupt_self_on_first_training_step(monkeypatch, signal.SIGINT)
    code, _, err = run_cli("experiment", "mlp-barrier", "--quick", "--dataset", "digits",
                           "--out", tmp_path / "exp")
    assert code == 130, err
    assert [p for p in listing(tmp_path / "exp") if not p.startswith("checkpoints")] == \
        ["notes.txt"]


# ------------------------------------------------------------------ 9. races
def test_c09_two_runs_one_output_exactly_one_wins(tmp_path):
    """Two runs both pass the early check; the one that finishes second is refused, says why,
    and leaves the winner's file alone (the process-level race is in test_output.py)."""
    from permalign import output
    from permalign.errors import OutputError
    from permalign.io import atomic_write_text
    target = tmp_path / "RESULTS.md"
    with pytest.raises(OutputError, match="created by someone else while this command ran"):
        with output.transaction(join=False):
            atomic_write_text(target, "slow run", force=False)
            with output.transaction(join=False):
                atomic_write_text(target, "fast run", force=False)
    assert target.read_text() == "fast run" and listing(tmp_path) == ["RESULTS.md"]


# ------------------------------------------------------------------ 10. misleading messages
@pytest.mark.parametrize("kind", ["directory", "FIFO", "/dev/zero"])
def test_c10_non_regular_checkpoint_is_not_a_regular_file(ckpts, tmp_path, kind):
    if kind == "directory":
        path = tmp_path / "dir.pt"
        path.mkdir()
    elif kind == "FIFO":
        path = tmp_path / "pipe.pt"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")  # only ever read: refused before it is opened
    code, _, err = run_cli("align", ckpts[0], path, "--model", SMALL, "--out", tmp_path / "o")
    if kind == "directory":  # a folder may be a Hugging Face model; this one is not
        assert refused(code, err, f"checkpoint {path} is a folder without config.json")
    else:
        assert refused(code, err, f"checkpoint {path} is", "not a regular file")
    assert "does not exist" not in err


@pytest.mark.parametrize("model, message", [
    ("transformer:depth=2", "unknown model family 'transformer'"),
    ("mlp:depth=2,depth=3", "option depth given twice"),
    ("mlp:depht=3", "bad option 'depht=3'"),
])
def test_c10_model_string_messages(tmp_path, model, message):
    code, _, err = run_cli("spec", "--model", model)
    assert refused(code, err, message)
    if "family" in message:
        assert "mlp, vgg11, vgg16, resnet20" in err


# ------------------------------------------------------------------ 11. help
def all_parsers():
    import argparse

    from permalign.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_c11_every_command_and_option_has_help():
    import argparse
    parser, commands = all_parsers()
    missing = []
    for name, p in [("permalign", parser), *commands.items()]:
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help and action.help.strip()) or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert all(choice.help for choice in sub._choices_actions)


def test_c11_help_shows_defaults_and_every_experiment():
    import argparse

    from permalign.experiments import REGISTRY
    _, commands = all_parsers()
    for name, p in commands.items():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings \
                    or isinstance(action, argparse._HelpAction):
                continue
            shown = f"(default: {action.default})" in text or "default" in (action.help or "")
            assert shown, f"{name} {action.option_strings[0]} does not show its default"
    code, out, _ = run_cli("experiment", "--help")
    assert code == 0 and all(name in " ".join(out.split()) for name in REGISTRY)
    assert "bn-repair" in out


# ------------------------------------------------------------------ 12. private temp files
def test_c12_tests_write_no_fixed_names_in_the_system_temp_dir():
    """A fixed file in /tmp (like the old /tmp/permalign-pwned) breaks every later run once a
    run leaves it behind; tests use pytest's tmp_path."""
    here = Path(__file__).parent
    offenders = [f"{p.name}: {line.strip()}" for p in sorted(here.glob("*.py"))
                 for line in p.read_text().splitlines()
                 if ("'/tmp/" in line or '"/tmp/' in line) and "fixed-tmp-ok" not in line]  # fixed-tmp-ok
    assert offenders == []
