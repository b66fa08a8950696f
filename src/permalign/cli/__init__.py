"""The ``permalign`` command: parser (:mod:`.parser`), input resolution (:mod:`.inputs`) and
sub-commands (:mod:`.commands`)."""
from __future__ import annotations

import sys

from ..errors import PermalignError
from .commands import COMMANDS
from .parser import build_parser as _build_parser


def build_parser():
    """The ``permalign`` argument parser."""
    return _build_parser(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line and return 2, Ctrl-C returns 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PermalignError as exc:
        print(f"permalign: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("permalign: interrupted; no output was written", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())


__all__ = ["main", "entry_point", "build_parser"]
