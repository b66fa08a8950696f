"""Linear assignment: the solver behind every matching method.

``solve(similarity)`` returns ``perm`` with ``perm[i] = j``: row i (a unit of model A) is matched
to column j (a unit of model B), maximising the total similarity. SciPy's solver is the default;
``lap`` (LAPJV) is used when asked for and installed (``bench/lap_solvers.py`` compares them).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import PermalignError


def _scipy(similarity: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return cols[np.argsort(rows)]


def _lapjv(similarity: np.ndarray) -> np.ndarray:
    import lap  # optional dependency
    _, row_to_col, _ = lap.lapjv(-similarity, extend_cost=False)
    return np.asarray(row_to_col)


SOLVERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"scipy": _scipy, "lap": _lapjv}


def solve(similarity: np.ndarray, solver: str = "scipy") -> np.ndarray:
    """Maximum-weight perfect matching of a square ``(n, n)`` similarity matrix."""
    if solver not in SOLVERS:
        raise PermalignError(f"unknown assignment solver {solver!r}; use one of "
                             f"{', '.join(SOLVERS)}")
    similarity = np.ascontiguousarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise PermalignError(f"assignment needs a square matrix, got shape {similarity.shape}")
    if not np.isfinite(similarity).all():
        raise PermalignError("similarity matrix has NaN or Inf entries (are the weights finite?)")
    return SOLVERS[solver](similarity)
