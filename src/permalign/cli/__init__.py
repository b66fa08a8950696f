"""The ``permalign`` command: parser (:mod:`.parser`), input resolution (:mod:`.inputs`),
sub-commands (:mod:`.commands`) and how a run ends (:mod:`.run`)."""
from __future__ import annotations

from .commands import COMMANDS
from .parser import build_parser as _build_parser
from .run import run_command


def build_parser():
    """The ``permalign`` argument parser."""
    return _build_parser(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done; 2 a user error (one line on stderr, nothing
    written); 130, 143, 129 interrupted by Ctrl-C, SIGTERM, SIGHUP (nothing written)."""
    args = build_parser().parse_args(argv)
    return run_command(args)


def entry_point() -> None:
    import sys
    sys.exit(main())


__all__ = ["main", "entry_point", "build_parser"]
