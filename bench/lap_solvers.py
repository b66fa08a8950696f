"""Linear-assignment solvers on the matrix sizes weight matching meets (64 ... 4096).

    python bench/lap_solvers.py [--sizes 64,256,1024,4096] [--out FILE]

Similarity matrices are products of random Gaussian "weights" (like weight matching's), so the
optimum is not trivially the diagonal. Checks every solver reaches SciPy's optimum value.
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from _common import emit, machine, table
from permalign import lap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="64,256,512,1024,2048,4096")
    parser.add_argument("--out")
    args = parser.parse_args()
    solvers = ["scipy"] + (["lap"] if importlib.util.find_spec("lap") else [])
    rng = np.random.default_rng(0)
    rows = []
    for n in map(int, args.sizes.split(",")):
        w_a, w_b = rng.standard_normal((n, 256)), rng.standard_normal((n, 256))
        sim = w_a @ w_b.T
        values, times = {}, {}
        for solver in solvers:
            repeats = 3 if n <= 1024 else 1
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                perm = lap.solve(sim, solver)
                best = min(best, time.perf_counter() - start)
            values[solver] = sim[np.arange(n), perm].sum()
            times[solver] = best
        row = [n] + [times[s] for s in solvers]
        row += [abs(values[s] - values["scipy"]) < 1e-6 * abs(values["scipy"]) for s in solvers[1:]]
        row += [times["scipy"] / times[s] for s in solvers[1:]]
        rows.append(row)
    header = (["n"] + [f"{s} s" for s in solvers] + [f"{s} same optimum" for s in solvers[1:]]
              + [f"{s} speed-up vs scipy" for s in solvers[1:]])
    note = "" if "lap" in solvers else "\n\n(`lap` is not installed: `pip install lap`)"
    emit(f"## Assignment solvers\n\nMachine: {machine()}\n\nCommand: `python bench/lap_solvers.py "
         f"--sizes {args.sizes}`\n\n" + table(header, rows) + note, args.out)


if __name__ == "__main__":
    main()
