"""Linear assignment: the solver behind every matching method.

``solve(similarity)`` returns ``perm`` with ``perm[i] = j``: row i (a unit of model A) is matched
to column j (a unit of model B), maximising the total similarity. ``solver="auto"`` picks by
size from measurements on weight-matching similarities (``bench/lap_solvers.py``, results in
``bench/results/lap_solvers.md``): SciPy below :data:`LAPJV_FROM` units, and LAPJV from the
optional ``lap`` or ``lapx`` package above it when one is installed (SciPy otherwise).

``assigner(solver)`` gives a solver for the successive similarities of one group (weight
matching's coordinate descent): with ``auto``, from :data:`JV_FROM` units on (from
:data:`JV_BESIDE_LARGER_FROM` in a run that warm-starts such a group) and the optional
``numba`` package installed, that is ``jv``, warm-started from the group's previous solve
(:mod:`permalign.warm_assignment`): SciPy's optimum in less time, at every size (its first,
cold solve is the fastest measured up to 2048 units and 1.2-1.5x slower than LAPJV from 4096;
the warm ones that follow take a fraction of a cold solve).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import PermalignError
from .warm_assignment import WarmAssignment, checked_similarity, has_numba


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


def _jv(similarity: np.ndarray) -> np.ndarray:
    return WarmAssignment()(similarity)  # one solve from nothing (no numba: one-line error)


SOLVERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"scipy": _scipy, "lap": _lapjv,
                                                          "jv": _jv}

# From this size on LAPJV beat SciPy on every weight-matching similarity measured (1.04-1.6x at
# n = 2048 ... 16384); below it SciPy was faster at n = 1024 and, at n = 512, on the matrices
# met late in a matching run (LAPJV took ~3.7x SciPy's time there), though LAPJV was 1.3x
# faster on the first similarity of a 512-unit run.
LAPJV_FROM = 2048


def has_lapjv() -> bool:
    """Whether the optional ``lap`` module (from the ``lap`` or ``lapx`` package) imports."""
    return importlib.util.find_spec("lap") is not None


# The warm-started solver took 3.0x less time than SciPy per solve at n = 512 on the successive
# similarities of trained MLP, ResNet-20 x8 and VGG-16 runs (3.5 ms saved per solve), 2.3x at
# 256 (0.6 ms) and 1.8x at 128 (bench/warm_assignment.py; 2.3x, 2.1x, 1.8x before the keep
# step raised freed columns' duals). A process pays about 0.3-0.5 s once to import numba and
# load the compiled kernels: below 512 units that takes hundreds to thousands of solves to
# repay, at 512 about 100-150 (one run of weight matching on the MLP 3x512 makes 40-50).
JV_FROM = 512
# Once a run pays that one-off cost for a group of JV_FROM units, its groups from this size on
# take jv too: 2.3x less time per solve at 256 units in bench/results/warm_assignment.md; at
# 128 units that bench gave 1.8x but a re-run on recorded ResNet-20 x8 and VGG-16 sequences
# came out about even (0.1 ms a solve either way), so 256.
JV_BESIDE_LARGER_FROM = 256
# Successive similarities of groups of 2048 units and more go to jv too, not to LAPJV: whole
# weight-matching runs of trained 784-n-n-10 MLPs took 3.0x less time at n = 2048 and 4.1x
# less at 4096 than with LAPJV (bench/lap_solvers.py --runs, bench/results/lap_solvers.md),
# the same permutations; LAPJV stays the choice for one-off solves of that size.


def choose(size: int, warm: bool = False, paid: bool = False) -> str:
    """The solver ``auto`` uses for an ``(size, size)`` matrix; ``warm``: one of a sequence of
    similarities of one group (:func:`assigner`); ``paid``: in a run that warm-starts another
    group of :data:`JV_FROM` units or more (numba's one-off cost is paid anyway)."""
    smallest = min(JV_FROM, JV_BESIDE_LARGER_FROM) if paid else JV_FROM
    if warm and size >= smallest and has_numba():
        return "jv"
    if size >= LAPJV_FROM:
        return "lap" if has_lapjv() else "scipy"
    return "scipy"


def _checked(similarity: np.ndarray, solver: str) -> np.ndarray:
    """``similarity`` as a contiguous float64 square matrix; a clear error for a bad one or an
    unknown solver."""
    if solver not in SOLVERS:
        raise PermalignError(f"unknown assignment solver {solver!r}; use one of auto, "
                             f"{', '.join(SOLVERS)}")
    return checked_similarity(similarity)


def solve(similarity: np.ndarray, solver: str = "scipy") -> np.ndarray:
    """Maximum-weight perfect matching of a square ``(n, n)`` similarity matrix.

    ``solver`` is ``scipy``, ``lap`` (needs the optional ``lap`` or ``lapx`` package), ``jv``
    (needs ``numba``) or ``auto`` (by size, see :func:`choose`).
    """
    if solver == "auto":
        solver = choose(len(similarity))
    similarity = _checked(similarity, solver)
    return SOLVERS[solver](similarity)


def assigner(solver: str = "auto", paid: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A solver for successive similarities of one group, ``similarity -> perm`` as
    :func:`solve`; ``jv`` (``auto``'s choice from :data:`JV_FROM` units on when numba is
    installed, and from :data:`JV_BESIDE_LARGER_FROM` when ``paid``: the run
    warm-starts such a group too) starts each solve from the previous one's duals and
    assignment."""
    warm: dict[int, WarmAssignment] = {}  # by size: ``auto`` may choose per size

    def assign(similarity: np.ndarray) -> np.ndarray:
        name = (choose(len(similarity), warm=True, paid=paid) if solver == "auto"
                else solver)
        if name != "jv":
            return SOLVERS[name](_checked(similarity, name))
        return warm.setdefault(len(similarity), WarmAssignment())(similarity)  # checks it
    return assign
