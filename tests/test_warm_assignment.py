"""The warm-started assignment solver reaches SciPy's optimum on every matrix of a sequence,
and weight matching with it finds what it finds with SciPy."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import same_perm
from permalign import lap
from permalign.errors import PermalignError

pytest.importorskip("numba")
from permalign.warm_assignment import WarmAssignment  # noqa: E402


def optimum(sim: np.ndarray) -> float:
    return float(sim[np.arange(len(sim)), lap.solve(sim, "scipy")].sum())


def value(sim: np.ndarray, perm: np.ndarray) -> float:
    assert sorted(perm.tolist()) == list(range(len(sim)))  # a permutation
    return float(sim[np.arange(len(sim)), perm].sum())


def drifting(rng, n: int, steps: int, step: float, ties: bool = False):
    """Successive similarities of one group: a low-rank matrix nudged a little each time
    (as when neighbours move a few units); ``ties``: small integers, many equal entries."""
    sim = rng.standard_normal((n, 8)) @ rng.standard_normal((8, n))
    for _ in range(steps):
        yield np.round(sim * 2) if ties else sim
        sim = sim + step * rng.standard_normal((n, n))


@pytest.mark.parametrize("n", [1, 2, 3, 17, 120])
@pytest.mark.parametrize("ties", [False, True])
def test_every_solve_of_a_sequence_is_optimal(n, ties):
    rng = np.random.default_rng(n)
    solver = WarmAssignment()
    for step in (0.0, 0.01, 0.3, 3.0):  # unchanged, slightly and much changed matrices
        for sim in drifting(rng, n, 6, step, ties):
            assert value(sim, solver(sim)) == pytest.approx(optimum(sim), rel=1e-12, abs=1e-9)


def test_the_warm_start_keeps_most_rows():
    """A matrix close to the previous one, or the same one again, is solved with few rows left
    to augment (rounding in the duals can break a tie between two tight columns)."""
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((200, 200))
    solver = WarmAssignment()
    first = solver(sim)
    assert solver.freed == 200  # from nothing: every row augments
    assert np.array_equal(solver(sim), first) and solver.freed <= 20
    solver(sim + 1e-3 * rng.standard_normal((200, 200)))
    assert solver.freed <= 20


def test_a_size_change_starts_afresh():
    rng = np.random.default_rng(2)
    solver = WarmAssignment()
    for n in (30, 31, 30):
        sim = rng.standard_normal((n, n))
        assert value(sim, solver(sim)) == pytest.approx(optimum(sim), rel=1e-12)


def test_assigner_is_warm_with_numba_and_scipy_without(monkeypatch):
    rng = np.random.default_rng(3)
    sims = list(drifting(rng, lap.JV_FROM, 4, 0.05))
    assert lap.choose(lap.JV_FROM, warm=True) == "jv" and lap.choose(lap.JV_FROM) == "scipy"
    assert lap.choose(lap.JV_FROM - 1, warm=True) == "scipy"
    assign = lap.assigner("auto")
    assert [value(s, assign(s)) for s in sims] == pytest.approx([optimum(s) for s in sims],
                                                                 rel=1e-12)
    from permalign import warm_assignment
    monkeypatch.setattr(lap, "has_numba", lambda: False)
    monkeypatch.setattr(warm_assignment, "has_numba", lambda: False)
    assert lap.choose(lap.JV_FROM, warm=True) == "scipy"
    assert np.array_equal(lap.assigner("auto")(sims[0]), lap.solve(sims[0], "scipy"))
    with pytest.raises(PermalignError, match="pip install numba"):
        lap.assigner("jv")(sims[0])


def test_assigner_checks_its_input():
    with pytest.raises(PermalignError, match="NaN or Inf"):
        lap.assigner("jv")(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(PermalignError, match="square"):
        lap.assigner("jv")(np.zeros((2, 3)))


@pytest.mark.parametrize("name", ["mlp:depth=3,width=128", "vgg11:width=0.125,norm=ln",
                                  "resnet20:width=1,norm=ln"])
def test_weight_matching_finds_the_same_with_the_warm_solver(trained, name):
    """Every solve is optimal with either solver, so the coordinate descent takes the same
    steps (trained weights: no tied optima) and ends in the same permutation."""
    from permalign.match.weight import _coordinate_descent
    _, spec, a = trained(name, 0, 3)
    _, _, b = trained(name, 1, 3)
    options = dict(max_iter=100, init=None, device=None, similarity_keys=None)
    for seed in range(3):
        warm = _coordinate_descent(spec, a, b, seed=seed, solver="jv", **options)
        cold = _coordinate_descent(spec, a, b, seed=seed, solver="scipy", **options)
        assert same_perm(warm.perm, cold.perm)
        assert warm.history == pytest.approx(cold.history, rel=1e-9)


@pytest.mark.parametrize("previous_scale", [1e20, 1e300, 1e-300])
def test_a_previous_matrix_on_another_scale_does_not_spoil_the_next(previous_scale):
    """Duals of a matrix on a far larger scale would drown the next matrix's entries in
    rounding: the solver starts afresh then (and shifts its duals so they cannot drift)."""
    rng = np.random.default_rng(4)
    first, sim = rng.standard_normal((40, 40)), rng.standard_normal((40, 40))
    solver = WarmAssignment()
    solver(first)
    solver(first * previous_scale)
    assert value(sim, solver(sim)) == pytest.approx(optimum(sim), rel=1e-12)
    assert value(first, solver(first)) == pytest.approx(optimum(first), rel=1e-12)
    for _ in range(200):
        solver(rng.standard_normal((40, 40)))
    assert solver.v.max() - solver.v.min() < 100 and abs(solver.v.max()) < 100


def test_the_solver_refuses_what_is_not_a_finite_square_matrix():
    solver = WarmAssignment()
    solver(np.eye(2))
    for bad in ([[np.nan, 1.0], [1.0, 0.0]], np.zeros((2, 3)), [[np.inf, 0.0], [0.0, 1.0]]):
        with pytest.raises(PermalignError, match="square matrix|NaN or Inf"):
            solver(np.asarray(bad))


def test_a_numba_that_does_not_import_counts_as_absent(tmp_path):
    """numba pins NumPy tightly: installed beside a newer NumPy it fails on import. Then
    ``auto`` uses SciPy and ``jv`` says what is missing, in one line."""
    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.2 or less")\n')
    code = ("import numpy as np; from permalign import lap\n"
            "assert lap.choose(lap.JV_FROM, warm=True) == 'scipy'\n"
            "sim = np.random.default_rng(0).standard_normal((lap.JV_FROM, lap.JV_FROM))\n"
            "assert (lap.assigner('auto')(sim) == lap.solve(sim, 'scipy')).all()\n"
            "try:\n    lap.assigner('jv')(sim)\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), src])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("PermalignError assignment solver 'jv' needs the optional "
                                  "package: pip install numba")


def test_the_keep_step_leaves_feasible_duals_tight_on_every_kept_pair():
    """After the keep step (row duals set, freed columns' duals raised), every reduced cost is
    >= 0 and every pair still assigned has reduced cost 0: what the later steps rely on."""
    from permalign import _warm_kernels as kernels
    rng = np.random.default_rng(5)
    sims = list(drifting(rng, 150, 4, 0.05))
    solver = WarmAssignment()
    solver(sims[0])
    for sim in sims[1:]:
        n = len(sim)
        u, v, col4row = np.zeros(n), solver.v.copy(), solver.col4row.copy()
        row4col = np.empty(n, dtype=np.int64)
        row4col[col4row] = np.arange(n)
        free, total = kernels.keep_tight(sim, u, v, col4row, row4col)
        reduced = -sim - u[:, None] - v[None, :]  # (n, n)
        assert reduced.min() >= -1e-9
        kept = np.flatnonzero(col4row >= 0)
        assert np.abs(reduced[kept, col4row[kept]]).max() <= 1e-9
        assert sorted(free.tolist() + kept.tolist()) == list(range(n))
        assert (row4col[col4row[kept]] == kept).all() and total == pytest.approx(sim.sum())
        solver(sim)


def test_entries_whose_sum_overflows_are_still_solved():
    """The warm start checks the entries through their sum; a sum that overflows (finite
    entries near the float64 limit) is checked entry by entry, not refused."""
    rng = np.random.default_rng(6)
    sim = rng.uniform(0.5, 1.0, (20, 20)) * 1e306  # (20, 20); rows sum to ~1.5e307
    with np.errstate(over="ignore"):
        assert np.isinf(sim.sum())
    solver = WarmAssignment()
    solver(sim)
    assert value(sim, solver(sim)) == pytest.approx(optimum(sim), rel=1e-12)


def test_large_groups_are_warm_started_not_handed_to_lapjv(monkeypatch):
    """Weight matching's successive similarities of groups of LAPJV_FROM units and more go to
    the warm-started solver (a one-off solve of that size goes to LAPJV): here the sizes are
    lowered and LAPJV claimed installed but absent, so a hand-over to it would fail."""
    import torch
    from permalign.match import weight_matching
    from permalign.spec import Member, PermutationSpec
    if lap.has_lapjv():
        pytest.skip("lap is installed: the absent-LAPJV probe does not apply")
    monkeypatch.setattr(lap, "LAPJV_FROM", 64)
    monkeypatch.setattr(lap, "JV_FROM", 64)
    monkeypatch.setattr(lap, "has_lapjv", lambda: True)
    spec = PermutationSpec()
    spec.add_group("h0", 96, [Member("l0.weight", 0), Member("l1.weight", 1)])
    spec.add_group("h1", 96, [Member("l1.weight", 0), Member("l2.weight", 1)])
    generator = torch.Generator().manual_seed(0)
    shapes = {"l0.weight": (96, 8), "l1.weight": (96, 96), "l2.weight": (4, 96)}
    a, b = ({k: torch.randn(*s, generator=generator) for k, s in shapes.items()}
            for _ in range(2))
    warm = weight_matching(spec, a, b, seed=0, init=None, solver="auto")
    cold = weight_matching(spec, a, b, seed=0, init=None, solver="scipy")
    assert same_perm(warm.perm, cold.perm) and warm.history == pytest.approx(cold.history)
    assert warm.info["solves"] > len(spec.groups)  # warm solves happened
    with pytest.raises(PermalignError, match="pip install lap"):
        lap.solve(np.eye(64), "auto")  # a one-off solve of that size: LAPJV
