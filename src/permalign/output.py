"""Output files: a command leaves all of its outputs or none of them.

A command runs inside one :func:`transaction`. Every file written through
:func:`write_file` (``io.atomic_write`` and everything built on it: checkpoints, JSON, plots)
while it is open goes to a temporary file beside its target; when the transaction ends without
error all of them are moved into place together, and on an error, Ctrl-C, SIGTERM or SIGHUP the
temporary files and every folder the transaction created (:meth:`Transaction.make_dir`) are
removed. Outside a transaction each write is a transaction of its own.

Rules, the same for every command:

- targets are regular files: a directory, device (``/dev/null``), FIFO or socket is refused;
- a symbolic link is written through (the file it points to is replaced, the link stays);
  a link that points nowhere is refused;
- an existing target is refused unless ``force``; the check is race-free: the commit uses
  ``os.link``, which fails if another process created the file meanwhile;
- one path given for two outputs (:meth:`Transaction.declare`) is an error;
- temporary names are short (``.NAME.XXXXXXXX.tmp`` with NAME cut to 32 characters), so any
  target name the file system accepts works;
- every OS error becomes an :class:`~permalign.errors.OutputError` naming the path and cause;
- under a ``torch.distributed`` process group only rank 0 writes: on the other ranks
  :func:`declare`, :func:`make_dir` and :func:`write_file` check and write nothing (no
  temporary files either) and return the path.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import distributed
from .errors import OutputError, first_line

DEFERRED_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None),
                                     getattr(signal, "SIGHUP", None)) if s is not None)


# ------------------------------------------------------------------ messages
def os_error_message(path: str | Path, exc: OSError, doing: str = "write") -> str:
    """One line: what could not be done to which path, and why (the OS's words)."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENAMETOOLONG:
        cause = "file name too long for this file system"
    return f"cannot {doing} {path}: {cause}"


def file_kind(mode: int) -> str:
    """``a directory``, ``a character device``, ... for a stat mode."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


# ------------------------------------------------------------------ signals
@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while the block runs, then deliver them.

    Used around the few steps that must not be cut in half (creating and registering a
    temporary file, moving a command's outputs into place). Only the main thread can install
    handlers; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for sig in DEFERRED_SIGNALS:
        old = signal.getsignal(sig)
        if old is None or old == signal.SIG_IGN:
            continue  # not installed from Python, or ignored: leave it alone
        previous[sig] = old
        signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


# ------------------------------------------------------------------ targets
def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def resolve_target(path: str | Path) -> Path:
    """The file that writing ``path`` replaces: symbolic links followed, made absolute.

    Raises OutputError for a link that points nowhere (or into a loop).
    """
    path = Path(path)
    real = Path(os.path.realpath(path))
    if os.path.islink(path) and not real.exists():
        raise OutputError(f"{path} is a symbolic link to {real}, which does not exist; "
                          "permalign writes through links only to existing files")
    return real


def _stat_or_none(target: Path, shown: str | Path,
                  stat_fn: Callable[[Path], os.stat_result]) -> os.stat_result | None:
    """``stat_fn(target)``, None if it does not exist; other OS errors name ``shown``."""
    try:
        return stat_fn(target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(os_error_message(shown, exc)) from None


def check_target(path: str | Path, *, force: bool, what: str | None = None) -> Path:
    """Raise OutputError unless ``path`` can be written as a regular file; return the file
    that will be written (``path`` with symbolic links followed)."""
    label = f"{what} {path}" if what else str(path)
    target = resolve_target(path)
    st = _stat_or_none(target, path, os.stat)
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{label} is {file_kind(st.st_mode)}, not a regular file; "
                              "give a file name to write")
        if not force:
            raise OutputError(f"{label} already exists; pass --force to overwrite it")
    parent = target.parent
    try:
        parent_st = os.stat(parent)
    except FileNotFoundError:
        raise OutputError(f"directory {Path(path).parent} does not exist; create it first"
                          ) from None
    except OSError as exc:
        raise OutputError(os_error_message(path, exc)) from None
    if not stat.S_ISDIR(parent_st.st_mode):
        raise OutputError(f"{Path(path).parent} is {file_kind(parent_st.st_mode)}, not a "
                          f"directory, so {path} cannot be written")
    limit = _name_max(parent)
    if len(os.fsencode(target.name)) > limit:
        raise OutputError(f"cannot write {path}: file name too long ({len(os.fsencode(target.name))} "
                          f"bytes; this file system allows {limit})")
    if not os.access(parent, os.W_OK):
        err = errno.EROFS if _read_only(parent) else errno.EACCES
        raise OutputError(os_error_message(path, OSError(err, os.strerror(err))))
    return target


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------ transactions
@dataclass
class _Staged:
    path: Path  # as the user gave it
    target: Path  # the regular file it names
    tmp: Path


@dataclass
class Transaction:
    """The output files of one command, moved into place together by :meth:`commit`."""

    force: bool = False
    staged: dict[Path, _Staged] = field(default_factory=dict)  # target -> staged file
    declared: dict[Path, str] = field(default_factory=dict)  # target -> option name
    created_dirs: list[Path] = field(default_factory=list)
    committed: list[Path] = field(default_factory=list)
    obsolete: list[Path] = field(default_factory=list)  # removed once the commit succeeds
    closed: bool = False

    def declare(self, path: str | Path | None, what: str) -> Path | None:
        """Check an output named on the command line before any work is done.

        Raises OutputError if it cannot be written or if another output names the same file.
        ``None`` (an optional output not given) is accepted and returned.
        """
        if path is None:
            return None
        target = check_target(path, force=self.force, what=what)
        other = self.declared.get(target)
        if other is not None and other != what:
            raise OutputError(f"{other} and {what} name the same file {path}; give each "
                              "output its own file")
        self.declared[target] = what
        return Path(path)

    def make_dir(self, path: str | Path, what: str = "--out") -> Path:
        """Create the folder ``path`` (and missing parents); removed again if the transaction
        fails. An existing folder is used as it is."""
        path = Path(path)
        missing: list[Path] = []
        probe = Path(os.path.abspath(path))
        while True:
            try:
                st = os.stat(probe)
            except FileNotFoundError:
                missing.append(probe)
                probe = probe.parent
                continue
            except OSError as exc:
                raise OutputError(os_error_message(probe, exc, "inspect")) from None
            if not stat.S_ISDIR(st.st_mode):
                shown = path if probe == Path(os.path.abspath(path)) else probe
                raise OutputError(f"{what} {shown} is {file_kind(st.st_mode)}, not a folder")
            break
        if missing:
            with signals_deferred():
                try:
                    os.makedirs(path)
                except OSError as exc:
                    shutil.rmtree(missing[-1], ignore_errors=True)  # whatever part was made
                    raise OutputError(os_error_message(path, exc, "create folder")) from None
                self.created_dirs.append(missing[-1])
        return path

    def stage(self, path: str | Path, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp)`` on a new temporary file beside ``path``'s target; the file takes
        ``path``'s place at :meth:`commit`. Writing the same path again replaces the earlier
        version."""
        if self.closed:
            raise RuntimeError("this output transaction is already closed")
        target = check_target(path, force=self.force)
        with signals_deferred():
            try:
                fd, name = tempfile.mkstemp(prefix=f".{target.name[:32]}.", suffix=".tmp",
                                            dir=target.parent)
            except OSError as exc:
                raise OutputError(os_error_message(path, exc)) from None
            os.close(fd)
            item = _Staged(Path(path), target, Path(name))
            previous = self.staged.pop(target, None)
            self.staged[target] = item
        if previous is not None:
            previous.tmp.unlink(missing_ok=True)
        try:
            write(item.tmp)
            _finish_file(item.tmp, target)
        except BaseException as exc:
            with signals_deferred():  # a failed write is never committed
                self.staged.pop(target, None)
                item.tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise OutputError(os_error_message(path, exc)) from None
            if isinstance(exc, (RuntimeError, ValueError)):  # torch.save, safetensors, savefig
                raise OutputError(f"cannot write {path}: {first_line(exc)}") from None
            raise
        return Path(path)

    def commit(self) -> list[Path]:
        """Move every staged file into place, all or none; returns the paths written."""
        if self.closed:
            return self.committed
        placed: list[tuple[Path, Path | None]] = []  # target, backup of what it replaced
        with signals_deferred():
            try:
                for item in self.staged.values():
                    placed.append((item.target, self._place(item)))
                for directory in {item.target.parent for item in self.staged.values()}:
                    _fsync_dir(directory)
            except BaseException:
                for target, backup in reversed(placed):
                    with contextlib.suppress(OSError):
                        if backup is None:
                            os.unlink(target)
                        else:
                            os.replace(backup, target)
                self._discard()
                raise
            for _, backup in placed:
                if backup is not None:
                    backup.unlink(missing_ok=True)
            self.committed = [item.path for item in self.staged.values()]
            WRITTEN.extend(self.committed)
            self.staged.clear()
            self.closed = True
            for path in self.obsolete:  # files of an earlier output the new one replaces
                with contextlib.suppress(OSError):
                    os.unlink(path)
        return self.committed

    def remove_on_commit(self, path: str | Path) -> None:
        """Delete ``path`` (a file of an earlier run that the new outputs replace) after a
        successful commit only."""
        self.obsolete.append(Path(path))

    def abort(self) -> None:
        """Remove the temporary files and the folders this transaction created."""
        if self.closed:
            return
        with signals_deferred():
            self._discard()

    def _place(self, item: _Staged) -> Path | None:
        """Move one staged file onto its target; returns a backup of a replaced file."""
        target, path = item.target, item.path
        st = _stat_or_none(target, path, os.lstat)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{path} became {file_kind(st.st_mode)} while this command ran; "
                              "nothing was written")
        if st is None or not self.force:
            try:
                _link_new(item.tmp, target)
                item.tmp.unlink(missing_ok=True)
                return None
            except FileExistsError:
                if not self.force:
                    raise OutputError(f"{path} was created by someone else while this command "
                                      "ran; nothing was written (pass --force to overwrite it)"
                                      ) from None
            except OSError as exc:
                raise OutputError(os_error_message(path, exc)) from None
        backup = Path(f"{item.tmp}.old")
        try:
            os.link(target, backup)
        except OSError:
            backup = None  # no hard links here: the replaced file cannot be restored
        try:
            os.replace(item.tmp, target)
        except OSError as exc:
            if backup is not None:
                backup.unlink(missing_ok=True)
            raise OutputError(os_error_message(path, exc)) from None
        return backup

    def _discard(self) -> None:
        for item in self.staged.values():
            with contextlib.suppress(OSError):
                item.tmp.unlink(missing_ok=True)
        self.staged.clear()
        for directory in reversed(self.created_dirs):
            shutil.rmtree(directory, ignore_errors=True)
        self.created_dirs.clear()
        self.closed = True


def _link_new(tmp: Path, target: Path) -> None:
    """Give ``tmp``'s file the name ``target``; FileExistsError if ``target`` exists."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # no hard links on this file system: claim the name exclusively, then replace it
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.replace(tmp, target)


def _finish_file(tmp: Path, target: Path) -> None:
    """Flush ``tmp`` to disk and give it the target's permissions (or the umask's)."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    _fsync(tmp)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(directory)


# ------------------------------------------------------------------ the current transaction
_LOCAL = threading.local()  # each thread has its own stack of open transactions
WRITTEN: list[Path] = []  # every file committed in this process (the CLI clears it per run)


def _stack() -> list[Transaction]:
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    return _LOCAL.stack


def current() -> Transaction | None:
    """The innermost open transaction of this thread, or None."""
    stack = _stack()
    return stack[-1] if stack else None


@contextlib.contextmanager
def transaction(*, force: bool = False, join: bool = True) -> Iterator[Transaction]:
    """Stage every file written inside the block; commit them together when it ends without
    error, remove them (and created folders) when it does not.

    With ``join`` (the default) an enclosing transaction is reused, so library code can open
    one freely; ``join=False`` starts an independent one (e.g. one per experiment of
    ``experiment all``).
    """
    stack = _stack()
    if join and stack:
        yield stack[-1]
        return
    txn = Transaction(force=force)
    stack.append(txn)
    try:
        yield txn
    except BaseException:
        txn.abort()
        raise
    else:
        txn.commit()
    finally:
        stack.remove(txn)


def declare(path: str | Path | None, what: str) -> Path | None:
    """:meth:`Transaction.declare` on the current transaction (just the checks without one).

    Under a process group rank 0 checks and every rank gets its verdict (a refused output
    fails on every rank before any work, so none is left waiting in a collective)."""
    if distributed.active():
        return distributed.on_main(_declare, path, what) if path is not None else None
    if not distributed.is_main():  # inside distributed.local(): rank 0 checks and writes
        return None if path is None else Path(path)
    return _declare(path, what)


def _declare(path: str | Path | None, what: str) -> Path | None:
    txn = current()
    if txn is not None:
        return txn.declare(path, what)
    if path is not None:
        check_target(path, force=False, what=what)
    return None if path is None else Path(path)


def make_dir(path: str | Path, what: str = "--out") -> Path:
    """:meth:`Transaction.make_dir` on the current transaction (a plain ``mkdir -p`` with the
    same checks and messages without one). Under a process group rank 0 makes it and every
    rank gets its verdict (see :func:`declare`)."""
    if distributed.active():
        return distributed.on_main(make_dir, path, what)
    if not distributed.is_main():
        return Path(path)
    txn = current()
    return (txn or Transaction()).make_dir(path, what)


def write_file(path: str | Path, write: Callable[[Path], None], *, force: bool,
               now: bool = False) -> Path:
    """Write ``path`` with ``write(tmp)`` through the current transaction, or at once.

    Inside a transaction the transaction's ``force`` decides, so ``--force`` means the same
    for everything a command writes. ``now`` writes at once even inside a transaction (for
    caches that later steps read back); the file is still complete or absent. Ranks other
    than 0 of a process group write nothing.
    """
    if not distributed.is_main():
        return Path(path)
    txn = current()
    if txn is not None and not now:
        return txn.stage(path, write)
    single = Transaction(force=force)
    try:
        single.stage(path, write)
    except BaseException:
        single.abort()
        raise
    single.commit()
    return Path(path)
