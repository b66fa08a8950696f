"""Exact linear assignment warm-started from the previous solve of the same group (numba).

Weight matching solves one assignment per group per sweep, and a group's similarity changes
only as much as its neighbours' permutations moved since its last solve. SciPy starts every
solve from nothing. :class:`WarmAssignment` keeps the column duals ``v`` and the assignment of
its last solve and starts the next one from them (minimising ``cost = -similarity``, read as
such by the kernels):

1. *Keep*: each row's dual ``u[i]`` becomes its lowest reduced cost ``cost[i, j] - v[j]``; a
   row whose assigned column has it keeps it. For every other row, its column's dual is raised
   as far as feasibility allows (to its lowest ``cost - u`` over the rows): the row keeps the
   column if that makes the pair tight; else both are freed. (Duals of an optimum have about
   n - 1 tight pairs besides the assignment, so a small change of the matrix leaves many rows
   a column cheaper than their own; raising the columns' duals keeps many of those rows.)
2. *Bid* (Jonker-Volgenant's augmenting row reduction, at most ``BIDS_PER_ROW * n`` bids): a
   free row takes its best column and lowers that column's dual by the gap to its second best,
   freeing the column's owner.
3. *Augment*: each row still free is assigned along a shortest augmenting path (the
   Dijkstra-like step SciPy's solver also uses), which keeps every reduced cost non-negative.

Every step keeps the duals feasible (``cost[i, j] - u[i] - v[j] >= 0``) and tight on the
assigned pairs, so the result is an optimal assignment, as SciPy's (ties may be broken
differently). The first solve of a group is step 3 alone, from zero duals. Measured on the
sequences of similarities of real weight-matching runs (``bench/warm_assignment.py``, results
in ``bench/results/warm_assignment.md``). Needs the optional ``numba`` package; the kernels
are compiled on first use and cached on disk.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .errors import PermalignError

# Step 2 stops after this many bids per row and leaves the rest to step 3: with no bound,
# bidding can trade a column back and forth in tiny steps ("price wars").
BIDS_PER_ROW = 4

# The previous duals are used only while their spread stays within this many times n times the
# new matrix's spread (an optimal dual's spread is at most (n - 1) times the matrix's): duals
# of a matrix on a far larger scale would drown the new entries in rounding.
DUAL_SPREAD = 10


def checked_similarity(similarity: np.ndarray, finite: bool = True) -> np.ndarray:
    """``similarity`` as a contiguous float64 square matrix, or a one-line error; with
    ``finite``, also one for NaN or Inf entries (else the caller checks them)."""
    similarity = np.ascontiguousarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise PermalignError(f"assignment needs a square matrix, got shape {similarity.shape}")
    if finite and not np.isfinite(similarity).all():
        raise PermalignError("similarity matrix has NaN or Inf entries (are the weights finite?)")
    return similarity


def _spread(sim: np.ndarray) -> float:
    """A cheap lower bound of the spread of ``sim``'s entries: over its first row, first
    column and diagonal (O(n))."""
    return float(max(np.ptp(sim[0]), np.ptp(sim[:, 0]), np.ptp(np.diagonal(sim))))


@functools.cache
def has_numba() -> bool:
    """Whether the optional ``numba`` package imports (installed but broken, e.g. by a NumPy
    newer than it supports, counts as absent); tried once per process."""
    try:
        from . import _warm_kernels  # noqa: F401  (imports numba; compiles nothing yet)
    except Exception:
        return False
    return True


def _compile() -> Any:
    """The numba kernels (each compiled, or loaded from numba's cache, on its first call)."""
    if not has_numba():
        raise PermalignError("assignment solver 'jv' needs the optional package: pip install "
                             "numba")
    from . import _warm_kernels
    return _warm_kernels


class WarmAssignment:
    """Maximum-weight assignment of successive ``(n, n)`` similarities of one group.

    ``solver(similarity)`` returns ``perm`` with ``perm[i] = j`` (row i to column j), optimal
    for that matrix, warm-started from the previous call when the size is the same.
    """

    def __init__(self) -> None:
        self.v: np.ndarray | None = None  # (n,) column duals of the last solve
        self.col4row: np.ndarray | None = None  # (n,) its assignment
        self.freed = 0  # rows the last solve assigned along augmenting paths (for benches)

    def __call__(self, similarity: np.ndarray) -> np.ndarray:
        k = _compile()
        sim = checked_similarity(similarity, finite=False)  # (n, n), maximised
        n = len(sim)
        u = np.zeros(n)
        if self.v is not None and len(self.v) == n:
            self.v = self.v - self.v.max()  # a shift of every dual changes nothing; no drift
            if np.ptp(self.v) > DUAL_SPREAD * n * max(_spread(sim), np.finfo(float).tiny):
                self.v = None  # duals of a matrix on another scale: start afresh
        if self.v is None or len(self.v) != n:
            checked_similarity(sim)  # (a warm start checks the entries in its first pass)
            v = np.zeros(n)
            col4row = np.full(n, -1, dtype=np.int64)
            row4col = np.full(n, -1, dtype=np.int64)
            free = np.arange(n, dtype=np.int64)
        else:
            v, col4row = self.v.copy(), self.col4row.copy()
            row4col = np.empty(n, dtype=np.int64)
            row4col[col4row] = np.arange(n)
            free, total = k.keep_tight(sim, u, v, col4row, row4col)
            if not np.isfinite(total):
                checked_similarity(sim)  # a NaN or Inf entry, or only a sum that overflowed
            free = k.bid(sim, v, col4row, row4col, free, BIDS_PER_ROW * n)
            assigned = col4row >= 0
            u[assigned] = -sim[assigned, col4row[assigned]] - v[col4row[assigned]]
        self.freed = len(free)
        if not k.augment_all(sim, u, v, col4row, row4col, free):  # (cannot for finite input)
            raise PermalignError("assignment has no finite solution")
        self.v, self.col4row = v, col4row
        return col4row.copy()
