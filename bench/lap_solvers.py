"""Linear-assignment solvers on similarity matrices from real weight matching, n = 512 ... 16384.

    python bench/lap_solvers.py [--sizes 512,1024,2048,4096,8192,16384] [--runs 2048,4096]
                                [--out FILE]

For each width n of ``--sizes`` two one-hidden-layer MLPs (784-n-10, seeds 0 and 1) are trained
for one epoch on 10,000 Fashion-MNIST examples (cached under bench/.cache), and the matrix is
weight matching's first similarity of the hidden group (``W1_A W1_B^T + b_A b_B^T + W2_A^T
W2_B``): the matrix the solver meets, not an i.i.d. random one (those are harder for some
solvers and easier for others).

Solvers: SciPy (``linear_sum_assignment``), ``lap`` (``lapjv``), ``lapx`` (``lapjv``,
``lapjvc``, ``lapjvx``) and permalign's ``jv`` (:mod:`permalign.warm_assignment`, here from
nothing: a first solve). ``lap`` and ``lapx`` install the same module name, so each is
installed into its own folder (``pip install --target bench/.cache/solvers/NAME NAME``) and
timed in a child process. Every solver's assignment value is checked against SciPy's optimum.
A solver whose previous size took longer than ``--budget`` seconds is not run on larger sizes.

``--runs``: whole weight-matching runs (identity start, seed 0) of two trained 784-n-n-10 MLPs
(the same training), where each group's similarity changes a little from solve to solve, with
``solver`` = scipy, lap (when installed under bench/.cache/solvers) and jv (warm-started from
the group's previous solve: ``auto``'s choice): total time, time in the solver, sweeps, and
whether the permutations are the same.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import CACHE, emit, load_note, machine, table
from permalign.warm_assignment import has_numba

SOLVER_DIRS = {"lap": CACHE / "solvers" / "lap", "lapx": CACHE / "solvers" / "lapx"}
FAMILIES = {"scipy": ["scipy"], "lap": ["lapjv"], "lapx": ["lapjv", "lapjvc", "lapjvx"],
            "permalign": ["jv"]}

CHILD = r"""
import json, sys, time
import numpy as np
family, names, path = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
if family == "permalign":
    from permalign.warm_assignment import WarmAssignment
elif family != "scipy":
    sys.path.insert(0, sys.argv[4])
    import lap
from scipy.optimize import linear_sum_assignment
sim = np.load(path)
cost = np.ascontiguousarray(-sim)
def run(name):
    if name == "scipy":
        return linear_sum_assignment(cost)[1]
    if name == "jv":
        return WarmAssignment()(sim)
    if name == "lapjv":
        return np.asarray(lap.lapjv(cost, extend_cost=False)[1])
    rows, cols = getattr(lap, name)(cost, return_cost=False)
    out = np.empty(len(rows), dtype=np.int64)
    out[np.asarray(rows)] = np.asarray(cols)
    return out
full, cost = cost, np.ascontiguousarray(cost[:8, :8])
for name in names:
    run(name)  # warm-up: lazy imports
cost = full
repeats = 3 if len(cost) <= 2048 else 1
result = {}
for name in names:
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        perm = run(name)
        seconds = min(seconds, time.perf_counter() - start)
    result[name] = {"seconds": seconds,
                    "value": float(sim[np.arange(len(perm)), perm].sum())}
print(json.dumps(result))
"""


def similarity(width: int) -> np.ndarray:
    """Weight matching's first similarity of the hidden group of two trained 784-n-10 MLPs."""
    path = CACHE / "lap" / f"sim-{width}.npy"
    if path.exists():
        return np.load(path)
    from permalign.data import load_dataset
    from permalign.match.weight import _Matcher, default_similarity_key
    from permalign.models import resolve_model
    from permalign.permutation import identity_permutation
    from permalign.train import TrainConfig
    from permalign.workflow import train_from_seed
    data = load_dataset("fashion-mnist").subset(train=10000)
    model_string = f"mlp:depth=1,width={width}"
    states = [train_from_seed(model_string, data, TrainConfig(epochs=1, seed=s),
                              progress=False) for s in (0, 1)]
    _, spec = resolve_model(model_string, data.input_shape, data.num_classes)
    matcher = _Matcher(spec, states[0], states[1], identity_permutation(spec),
                       default_similarity_key, None, "scipy", torch.get_num_threads())
    sim = matcher.similarity(next(iter(spec.groups)))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, sim)
    return sim


def time_family(family: str, names: list[str], path: Path) -> dict[str, dict[str, float]]:
    args = [sys.executable, "-c", CHILD, family, ",".join(names), str(path)]
    if family in SOLVER_DIRS:
        args.append(str(SOLVER_DIRS[family]))
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{family}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--runs", default="", help="widths of whole weight-matching runs")
    parser.add_argument("--out")
    args = parser.parse_args()
    families = {f: n for f, n in FAMILIES.items()
                if f not in SOLVER_DIRS or (SOLVER_DIRS[f] / "lap").is_dir()}
    if not has_numba():
        families.pop("permalign")
    columns = [f"{f}.{n}" if f != "scipy" else "scipy" for f, names in families.items()
               for n in names]
    load_before = load_note()
    rows, too_slow = [], set()
    for n in [int(x) for x in args.sizes.split(",") if x]:
        similarity(n)  # computes and caches the matrix
        path = CACHE / "lap" / f"sim-{n}.npy"
        times, values = {}, {}
        for family, names in families.items():
            names = [m for m in names if f"{family}.{m}" not in too_slow]
            if not names:
                continue
            for name, r in time_family(family, names, path).items():
                key = "scipy" if family == "scipy" else f"{family}.{name}"
                times[key], values[key] = r["seconds"], r["value"]
                if r["seconds"] > args.budget:
                    too_slow.add(key)
        best = values["scipy"]
        row = [n] + [times.get(c, "skipped") for c in columns]
        row.append(", ".join(c for c in columns if c in values
                             and abs(values[c] - best) > 1e-9 * abs(best)) or "none")
        row.append(min(times, key=times.get))
        print(row, flush=True)
        rows.append(row)
    header = ["n"] + [f"{c} s" for c in columns] + ["off SciPy's optimum", "fastest"]
    missing = [f for f in SOLVER_DIRS if f not in families]
    note = (f"\n\nNot installed here: {', '.join(missing)} (`pip install --target "
            f"bench/.cache/solvers/NAME NAME`)." if missing else "")
    text = (f"## Assignment solvers on weight-matching similarities\n\nMachine: {machine()}\n\n"
            f"Load: before {load_before}; after {load_note()}\n\n"
            f"Command: `python bench/lap_solvers.py --sizes {args.sizes} --runs {args.runs}` "
            f"(finished {time.strftime('%Y-%m-%d %H:%M')})\n\n")
    if rows:
        text += ("### One solve: the first similarity (best of 3 up to n = 2048, one run "
                 "above)\n\n" + table(header, rows) + note + "\n\n")
    if args.runs:
        text += runs_table([int(x) for x in args.runs.split(",")], families)
    emit(text.rstrip(), args.out)


RUN_CHILD = r"""
import json, sys, torch
if len(sys.argv) > 4:
    sys.path.insert(0, sys.argv[4])
from permalign.io import load_state_dict
from permalign.match import weight_matching
from permalign.models import resolve_model
model_string, paths, solver = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
a, b = (load_state_dict(p) for p in paths)
_, spec = resolve_model(model_string, (1, 28, 28), 10)
weight_matching(spec, a, b, seed=0, init=None, solver=solver, max_iter=1)  # imports, kernels
r = weight_matching(spec, a, b, seed=0, init=None, solver=solver)
print(json.dumps({"total": r.timings["total"], "solver": r.timings["solver"],
                  "sweeps": r.info["sweeps"], "solves": r.info["solves"],
                  "objective": r.history[-1],
                  "perm": {k: v.tolist() for k, v in r.perm.items()}}))
"""


def runs_table(widths: list[int], families: dict[str, list[str]]) -> str:
    """Whole weight-matching runs per solver (see the module's docstring), as a section."""
    solvers = ["scipy"] + (["lap"] if "lap" in families else []) + (
        ["jv"] if "permalign" in families else [])
    rows = []
    for width in widths:
        model_string = f"mlp:depth=2,width={width}"
        paths = [str(p) for p in trained_mlp_pair(model_string)]
        result = {}
        for solver in solvers:
            args = [sys.executable, "-c", RUN_CHILD, model_string, ",".join(paths), solver]
            if solver == "lap":
                args.append(str(SOLVER_DIRS["lap"]))
            out = subprocess.run(args, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{solver}: {out.stderr.strip().splitlines()[-1]}")
            result[solver] = json.loads(out.stdout.strip().splitlines()[-1])
            print(width, solver, {k: v for k, v in result[solver].items() if k != "perm"},
                  flush=True)
        same = all(r["perm"] == result["scipy"]["perm"] for r in result.values())
        fastest = min(result, key=lambda k: result[k]["total"])
        rows.append([width, result["scipy"]["sweeps"]]
                    + [result[s]["total"] for s in solvers]
                    + [result[s]["solver"] for s in solvers]
                    + [result["lap"]["total"] / result["jv"]["total"]
                       if {"lap", "jv"} <= set(result) else "-",
                       "yes" if same else "no", fastest])
    header = (["n", "sweeps"] + [f"{s}: total s" for s in solvers]
              + [f"{s}: in solver s" for s in solvers]
              + ["lap / jv (total)", "same permutations", "fastest"])
    return ("### Whole runs: weight matching of two trained 784-n-n-10 MLPs (seed 0, identity "
            "start)\n\n" + table(header, rows))


def trained_mlp_pair(model_string: str) -> list[Path]:
    """Two MLPs trained one epoch on 10,000 Fashion-MNIST examples (seeds 0, 1), cached."""
    from permalign.data import load_dataset
    from permalign.io import save_state_dict
    from permalign.train import TrainConfig
    from permalign.workflow import train_from_seed
    paths = [CACHE / "lap" / f"{model_string.replace(':', '-').replace(',', '-')}-s{s}"
                              f".safetensors" for s in (0, 1)]
    if not all(p.exists() for p in paths):
        data = load_dataset("fashion-mnist").subset(train=10000)
        for seed, path in zip((0, 1), paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_state_dict(train_from_seed(model_string, data, TrainConfig(epochs=1, seed=seed),
                                            progress=False), path)
    return paths


if __name__ == "__main__":
    main()
