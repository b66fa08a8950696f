"""How every command runs and ends: one output transaction, library chatter off unless
``--verbose``, signals turned into a clean exit, and one line per error.

Exit codes: 0 done; 2 a user error (one line on stderr, nothing written); 128 + the signal's
number when interrupted: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP (nothing written).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the command joins the process group
first (:func:`permalign.distributed.init_from_env`); every rank runs it, the data passes are
shared, and only rank 0 writes files and prints results; other ranks print only their errors,
prefixed with their rank. A user error found on rank 0 alone (a refused output: checks run
there, :func:`permalign.output.declare`) reaches every rank before any collective, and the
other ranks exit 2 without a message of their own.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from .. import distributed, output
from ..errors import PermalignError

SIGNAL_WORDS = {signal.SIGINT: "interrupted"}
for _name, _words in (("SIGTERM", "terminated (SIGTERM)"), ("SIGHUP", "hung up (SIGHUP)")):
    if hasattr(signal, _name):
        SIGNAL_WORDS[getattr(signal, _name)] = _words


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so the same clean-up runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupt_handlers() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` while the block runs (Ctrl-C already
    raises KeyboardInterrupt); a signal the caller ignores (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in SIGNAL_WORDS:
        if sig == signal.SIGINT:
            continue
        old = signal.getsignal(sig)
        if old == signal.SIG_IGN or old is None:
            continue
        previous[sig] = old
        signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def library_chatter(verbose: bool) -> Iterator[None]:
    """Without ``verbose``: no logging records and no Python warnings from the libraries we
    call (torch.export, transformers, ...) while the block runs."""
    if verbose:
        yield
        return
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _after_interrupt(written: list) -> str:
    if not written:
        return "no output was written"
    return "only these complete outputs were written before it: " + \
        ", ".join(map(str, written))


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func(args)`` inside one output transaction and report how it ended (on
    every rank of a ``torchrun`` launch; rank 0 writes and prints)."""
    try:
        joined = distributed.init_from_env()
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"permalign: error: cannot join the torchrun process group: {_one_line(exc)}",
              file=sys.stderr)
        return 2
    try:
        if distributed.is_main():
            return _run(args, "")
        with contextlib.redirect_stdout(open(os.devnull, "w")) as quiet:
            try:
                return _run(args, f"[rank {distributed.rank()}] ")
            finally:
                quiet.close()
    finally:
        if joined:
            distributed.shutdown()


def _run(args: argparse.Namespace, who: str) -> int:
    written = output.WRITTEN
    written.clear()
    with library_chatter(getattr(args, "verbose", False)), interrupt_handlers():
        try:
            with output.transaction(force=bool(getattr(args, "force", False)),
                                    join=False) as txn:
                args.func(args)
            if txn.committed:
                print("wrote " + ", ".join(map(str, txn.committed)), flush=True)
            return 0
        except distributed.RankZeroFailed:
            return 2  # a user error rank 0 reports; this rank ends with it, quietly
        except PermalignError as exc:
            print(f"{who}permalign: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        except OSError as exc:  # a file-system error no layer above turned into a message
            path = exc.filename if exc.filename is not None else "a file"
            print(f"{who}permalign: error: "
                  f"{_one_line(output.os_error_message(path, exc, 'use'))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            print(f"{who}permalign: {SIGNAL_WORDS.get(signum, 'interrupted')}; "
                  f"{_after_interrupt(written)}", file=sys.stderr)
            return 128 + int(signum)
