"""Helpers for tests that run the ``permalign`` command as a user would."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from permalign.cli import main

SMALL = "mlp:depth=1,width=8"


def run_cli(*argv: object) -> tuple[int, str, str]:
    """``permalign ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: usage errors and --help
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def is_one_line_error(err: str) -> bool:
    """Exactly one line on stderr, permalign's own, and no traceback."""
    lines = err.strip().splitlines()
    return (len(lines) == 1 and lines[0].startswith("permalign") and "error:" in lines[0]
            and "Traceback" not in err)


def listing(folder: Path) -> list[str]:
    """Every path under ``folder``, relative (hidden temporary files included)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Wait until ``proc`` creates ``path`` (its readiness signal); fail if it exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never became ready"
        time.sleep(0.05)


# Runs ``permalign ARGV`` with one library function replaced by a version that creates
# $READY_FILE and then blocks, so a test can signal the command at a known point of its work.
HANG_SCRIPT = """
import os, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F

ready = Path(os.environ["READY_FILE"])
where = os.environ["HANG_IN"]


def hang():
    ready.touch()
    time.sleep(600)


if where == "save":  # in the middle of writing a checkpoint: half the bytes are there
    def save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        f.flush()
        hang()
    torch.save = save
elif where == "train":  # during the first training step
    def cross_entropy(*args, **kwargs):
        hang()
    F.cross_entropy = cross_entropy

from permalign.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_hanging(argv: list[str], where: str, ready: Path, cwd: Path) -> subprocess.Popen:
    """Start ``permalign ARGV`` in a subprocess that blocks at ``where`` (save | train)."""
    return subprocess.Popen([sys.executable, "-c", HANG_SCRIPT, *argv], cwd=cwd,
                            env={**os.environ, "READY_FILE": str(ready), "HANG_IN": where},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
