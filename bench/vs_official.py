"""permalign's weight matching beside the official Git Re-Basin implementation, same process.

    python bench/vs_official.py [--models mlp3x512,resnet20x1,...] [--seeds 5] [--out FILE]

Needs ``jax`` (CPU) and the official ``weight_matching.py`` (MIT, unchanged; ``--official`` or
``$PERMALIGN_OFFICIAL``); without them it prints why and exits 0. Run it from a virtual
environment of its own (jax is never a dependency of permalign).

For every model both implementations get the same weights and the same spec (ours converted to
the official ``axes_to_perm`` form; tensors keep PyTorch's layout, which the official code
handles since it only names axes). Both run once before timing (the official code's JAX
compilation; our numba kernels load); each is timed in a block of its own, ours first, every
seed of a model one after the other. For every seed both are timed (min of
``--repeats`` runs) and the objective sum <W_A, pi(W_B)> of both results is computed in
float64 by permalign.
Printed: time of seed 0 and total over the seeds, the speed-ups (official / permalign) and the
median objective over the seeds.

The official code hands each group's similarity to SciPy's ``linear_sum_assignment``; ours to
its ``auto`` solver (``permalign.lap.assigner``: SciPy below 512 units, the warm-started ``jv``
from 512 when numba is installed). The seconds spent in the solver are reported for both (the
official module's ``linear_sum_assignment`` is wrapped by a timer at import, the file is
unchanged), with the speed-up outside the solver.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from _common import emit, fmnist_mlp_pair, load_note, machine, random_pair, table
from permalign.match import weight_matching
from permalign.match.weight import default_similarity_key, matching_objective

MODELS = {  # name -> (model string, how the pair is made)
    "mlp3x512": ("mlp:depth=3,width=512", "fmnist"),
    "resnet20x1": ("resnet20:width=1,norm=ln", "random"),
    "resnet20x4": ("resnet20:width=4,norm=ln", "random"),
    "resnet20x8": ("resnet20:width=8,norm=ln", "random"),
    "vgg16": ("vgg16:width=1,norm=ln", "random"),
}

CANDIDATES = [os.environ.get("PERMALIGN_OFFICIAL", ""),
              str(Path(__file__).resolve().parents[1] / "../shared/reference/git-re-basin/"
                  "weight_matching.py"),
              str(Path(__file__).resolve().parents[1] / "../../shared/reference/git-re-basin/"
                  "weight_matching.py"),
              "/work/shared/reference/git-re-basin/weight_matching.py"]


def load_official(path: str | None):
    """Import the official module (with our own stand-in for its missing ``utils.rngmix``)."""
    try:
        import jax
    except ImportError:
        return None, "jax is not installed (pip install jax in a separate venv)"
    paths = [path] if path else [p for p in CANDIDATES if p]
    found = next((p for p in paths if Path(p).is_file()), None)
    if found is None:
        return None, f"the official weight_matching.py was not found (looked at {paths})"
    shim = types.ModuleType("utils")

    def rngmix(rng, x):  # a key derived from rng and x (the official repo folds in a hash)
        return jax.random.fold_in(rng, hash(x) & 0x7FFFFFFF)
    shim.rngmix = rngmix
    sys.modules.setdefault("utils", shim)
    spec_ = importlib.util.spec_from_file_location("official_weight_matching", found)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    module.linear_sum_assignment = _timed(module.linear_sum_assignment)
    return module, found


SOLVER_SECONDS = [0.0]  # time the official code spent in linear_sum_assignment


def _timed(fn):
    """``fn`` adding its run time to :data:`SOLVER_SECONDS`."""
    def wrapper(matrix, *args, **kwargs):
        matrix = np.asarray(matrix)  # waits for JAX's asynchronous product: not solver time
        start = time.perf_counter()
        try:
            return fn(matrix, *args, **kwargs)
        finally:
            SOLVER_SECONDS[0] += time.perf_counter() - start
    return wrapper


def to_official(official, spec, state_a, state_b):
    """The official PermutationSpec and params (jnp arrays) for our spec and state dicts."""
    import jax.numpy as jnp
    axes: dict[str, list] = {}
    for name, group in spec.groups.items():
        for m in group.members:
            if not default_similarity_key(m.key):
                continue
            if not m.is_plain:
                raise ValueError(f"{m.key}: structured members have no official form")
            axes.setdefault(m.key, [None] * state_a[m.key].dim())[m.axis] = name
    ps = official.permutation_spec_from_axes_to_perm({k: tuple(v) for k, v in axes.items()})
    params = [{k: jnp.asarray(s[k].float().numpy()) for k in axes} for s in (state_a, state_b)]
    return ps, params[0], params[1]


def run_official(official, ps, pa, pb, seed: int):
    import jax
    perm = official.weight_matching(jax.random.PRNGKey(seed), ps, pa, pb, silent=True)
    return {k: torch.from_numpy(np.array(jax.block_until_ready(v))) for k, v in perm.items()}


def best_of(fn, repeats: int, solver_seconds):
    """(min seconds, solver seconds of that run, its result) over ``repeats`` calls;
    ``solver_seconds(result, before)`` tells the time a run spent in the assignment solver."""
    best, solver, result = float("inf"), 0.0, None
    for _ in range(repeats):
        before = SOLVER_SECONDS[0]
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        if seconds < best:
            best, solver = seconds, solver_seconds(result, before)
    return best, solver, result


def ours_in_solver(result, before) -> float:
    return result.timings["solver"]


def official_in_solver(result, before) -> float:
    return SOLVER_SECONDS[0] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--official", help="path of the official weight_matching.py")
    parser.add_argument("--out")
    args = parser.parse_args()
    official, where = load_official(args.official)
    if official is None:
        print(f"bench/vs_official.py skipped: {where}")
        return
    load_before = load_note()
    rows = []
    for key in args.models.split(","):
        model_string, kind = MODELS[key]
        if kind == "fmnist":
            _, spec, a, b, _ = fmnist_mlp_pair(model_string)
        else:
            _, spec, a, b = random_pair(model_string)
        ps, pa, pb = to_official(official, spec, a, b)
        weight_matching(spec, a, b, seed=0)  # warm-up (numba kernels load)
        ours_t, theirs_t, ours_obj, theirs_obj, sweeps = [], [], [], [], []
        ours_lap, theirs_lap = [], []
        for seed in range(args.seeds):
            t, lap_t, res = best_of(lambda: weight_matching(spec, a, b, seed=seed),
                                    args.repeats, ours_in_solver)
            ours_t.append(t)
            ours_lap.append(lap_t)
            sweeps.append(res.info["sweeps"])
            ours_obj.append(matching_objective(spec, a, b, res.perm))
        run_official(official, ps, pa, pb, 0)  # JAX warm-up (compilation of every op shape)
        for seed in range(args.seeds):
            t, lap_t, perm = best_of(lambda: run_official(official, ps, pa, pb, seed),
                                     args.repeats, official_in_solver)
            theirs_t.append(t)
            theirs_lap.append(lap_t)
            theirs_obj.append(matching_objective(spec, a, b, perm))
        mo, mt = statistics.median(ours_obj), statistics.median(theirs_obj)
        theirs_rest = sum(theirs_t) - sum(theirs_lap)
        ours_rest = sum(ours_t) - sum(ours_lap)
        row = [key, theirs_t[0], ours_t[0], theirs_t[0] / ours_t[0], sum(theirs_t),
               sum(ours_t), sum(theirs_t) / sum(ours_t), sum(theirs_lap), sum(ours_lap),
               theirs_rest / ours_rest, f"{mt:.6g}", f"{mo:.6g}", "yes" if mo >= mt else "no",
               statistics.median(sweeps)]
        print(row, flush=True)
        rows.append(row)
    header = ["model", "official s (seed 0)", "permalign s (seed 0)", "speed-up (seed 0)",
              f"official s ({args.seeds} seeds)", f"permalign s ({args.seeds} seeds)",
              f"speed-up ({args.seeds} seeds)", "official s in solver", "permalign s in solver",
              "speed-up outside the solver", "official objective (median)",
              "permalign objective (median)", "objective >= official",
              "permalign sweeps (median)"]
    pairs = ", ".join(f"{k}: {MODELS[k][0]} ({'trained on Fashion-MNIST, 5 epochs' if MODELS[k][1] == 'fmnist' else 'random init, seeds 0/1, input 3x32x32'})"
                      for k in args.models.split(","))
    import jax
    from permalign.warm_assignment import has_numba
    solver_note = ("SciPy below 512 units, the warm-started jv from 512 (numba installed)"
                   if has_numba() else "SciPy: numba is not installed")
    emit(f"## Weight matching: permalign vs the official implementation (CPU)\n\n"
         f"Machine: {machine()}; jax {jax.__version__} (CPU)\n\n"
         f"Load: before {load_before}; after {load_note()}\n\n"
         f"Command: `python bench/vs_official.py --models {args.models} --seeds {args.seeds} "
         f"--repeats {args.repeats}`\n\nOfficial code: `{Path(where).name}` (unchanged) from "
         f"{where}\n\nPairs: {pairs}\n\nEvery seed: best of {args.repeats} runs of each; the "
         f"{args.seeds}-seed columns add up the seeds' bests (the sweep count differs by seed and "
         "implementation, so the total is the fairer ratio). Solver columns: seconds in the "
         f"assignment solver over the {args.seeds} seeds: SciPy's linear_sum_assignment for the "
         f"official code, permalign's `auto` solver for ours ({solver_note}). Objectives: "
         "sum <W_A, pi(W_B)> over parameters (float64), median over the seeds."
         "\n\n" + table(header, rows), args.out)


if __name__ == "__main__":
    main()
