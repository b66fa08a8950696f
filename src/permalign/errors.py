"""Error types shared by the library and the command line."""
from __future__ import annotations


class PermalignError(Exception):
    """A problem with the user's input: reported as one line, exit code 2, no traceback."""


class SpecError(PermalignError):
    """A permutation spec that does not fit a model or state dict."""


class CheckpointError(PermalignError):
    """A checkpoint that cannot be loaded safely or does not fit the model."""


class DataError(PermalignError):
    """A data set that cannot be found or read."""


class OutputError(PermalignError):
    """An output file that cannot be written (not a regular file, exists, OS error)."""


class TrainingError(PermalignError):
    """Training that cannot go on (the loss became NaN or infinite)."""


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (cut to ``limit`` characters), or its type's
    name when the message is empty: how foreign errors appear inside our one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
