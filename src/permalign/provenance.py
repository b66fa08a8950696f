"""Provenance recorded with every result: command, seeds, versions, device, wall time."""
from __future__ import annotations

import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def git_commit() -> str | None:
    """The commit of the permalign checkout this runs from, if it is one (else None)."""
    import subprocess
    from pathlib import Path
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(*, seeds: Any, device: torch.device | str, started: float,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-safe record of how a result was produced; ``started`` is a time.time() stamp."""
    from . import __version__
    record = {
        "command": "permalign " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if sys.argv and sys.argv[0].endswith("permalign") else " ".join(map(shlex.quote,
                                                                              sys.argv)),
        "seeds": seeds,
        "versions": {"permalign": __version__, "git_commit": git_commit(),
                     "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "device": device_name(device),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 3),
    }
    record.update(extra or {})
    return record
