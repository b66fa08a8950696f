"""Linear assignment: the solver behind every matching method.

``solve(similarity)`` returns ``perm`` with ``perm[i] = j``: row i (a unit of model A) is matched
to column j (a unit of model B), maximising the total similarity. ``solver="auto"`` picks by
size from measurements on weight-matching similarities (``bench/lap_solvers.py``, results in
``bench/results/lap_solvers.md``): SciPy below :data:`LAPJV_FROM` units, and LAPJV from the
optional ``lap`` or ``lapx`` package above it when one is installed (SciPy otherwise).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import PermalignError


def _scipy(similarity: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return cols[np.argsort(rows)]


def _lapjv(similarity: np.ndarray) -> np.ndarray:
    try:
        import lap  # optional dependency
    except ImportError:
        raise PermalignError("assignment solver 'lap' needs the optional package: pip install "
                             "lap (or lapx)") from None
    _, row_to_col, _ = lap.lapjv(-similarity, extend_cost=False)
    return np.asarray(row_to_col)


SOLVERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"scipy": _scipy, "lap": _lapjv}

# From this size on LAPJV beat SciPy on every weight-matching similarity measured (1.04-1.6x at
# n = 2048 ... 16384); below it SciPy was faster at n = 1024 and, at n = 512, on the matrices
# met late in a matching run (LAPJV took ~3.7x SciPy's time there), though LAPJV was 1.3x
# faster on the first similarity of a 512-unit run.
LAPJV_FROM = 2048


def has_lapjv() -> bool:
    """Whether the optional ``lap`` module (from the ``lap`` or ``lapx`` package) imports."""
    return importlib.util.find_spec("lap") is not None


def choose(size: int) -> str:
    """The solver ``auto`` uses for an ``(size, size)`` matrix."""
    return "lap" if size >= LAPJV_FROM and has_lapjv() else "scipy"


def solve(similarity: np.ndarray, solver: str = "scipy") -> np.ndarray:
    """Maximum-weight perfect matching of a square ``(n, n)`` similarity matrix.

    ``solver`` is ``scipy``, ``lap`` (needs the optional ``lap`` or ``lapx`` package) or
    ``auto`` (by size, see :func:`choose`).
    """
    if solver == "auto":
        solver = choose(len(similarity))
    if solver not in SOLVERS:
        raise PermalignError(f"unknown assignment solver {solver!r}; use one of auto, "
                             f"{', '.join(SOLVERS)}")
    similarity = np.ascontiguousarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise PermalignError(f"assignment needs a square matrix, got shape {similarity.shape}")
    if not np.isfinite(similarity).all():
        raise PermalignError("similarity matrix has NaN or Inf entries (are the weights finite?)")
    return SOLVERS[solver](similarity)
