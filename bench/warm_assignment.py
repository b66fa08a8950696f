"""The warm-started assignment solver against SciPy on the successive similarities of real runs.

    python bench/warm_assignment.py [--seeds 3] [--out FILE]

Weight matching is run (SciPy solver, identity start) on the pairs of ``bench/vs_official.py``
(MLP 3x512 trained on Fashion-MNIST, ResNet-20 x8 and VGG-16 from random initialisations) and
every similarity it hands to the solver is kept, in order, per group. Each sequence is then
solved twice: by SciPy's ``linear_sum_assignment`` one matrix at a time, and by one
:class:`permalign.warm_assignment.WarmAssignment` per group (each solve warm-started from the
group's previous one). Printed per size: solves, milliseconds per solve of each, the ratio, the
share of rows the warm solver had to assign along augmenting paths, and how many solves ended
off SciPy's optimum (relative 1e-9). Also the one-off costs of a process: importing numba and
loading the cached kernels, and compiling them into an empty cache.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
from scipy.optimize import linear_sum_assignment

from _common import emit, fmnist_mlp_pair, load_note, machine, random_pair, table
from permalign.match import weight as weight_module
from permalign.match import weight_matching
from permalign.warm_assignment import WarmAssignment

PAIRS = {"mlp3x512": ("mlp:depth=3,width=512", "fmnist"),
         "resnet20x8": ("resnet20:width=8,norm=ln", "random"),
         "vgg16": ("vgg16:width=1,norm=ln", "random")}

FIRST_USE = r"""
import time
import numpy as np
from permalign.warm_assignment import WarmAssignment  # (permalign itself: not counted)
start = time.perf_counter()
WarmAssignment()(np.eye(3))
print(time.perf_counter() - start)
"""


def sequences(seeds: int) -> dict[str, list[np.ndarray]]:
    """``run/group -> [similarity, ...]`` in the order weight matching solved them."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    original = weight_module._Matcher.assign
    for key, (model_string, kind) in PAIRS.items():
        if kind == "fmnist":
            _, spec, a, b, _ = fmnist_mlp_pair(model_string)
        else:
            _, spec, a, b = random_pair(model_string)
        for seed in range(seeds):
            def keep(self, sim, group=None, run=f"{key}/{seed}"):
                out[f"{run}/{group}"].append(np.array(sim))
                return original(self, sim, group)
            weight_module._Matcher.assign = keep
            try:
                weight_matching(spec, a, b, seed=seed, init=None, solver="scipy")
            finally:
                weight_module._Matcher.assign = original
    return out


def first_use_seconds(empty_cache: bool) -> float:
    """Seconds a fresh process takes to import numba and run the kernels once."""
    with tempfile.TemporaryDirectory() as folder:
        env = {"NUMBA_CACHE_DIR": folder} if empty_cache else {}
        import os
        out = subprocess.run([sys.executable, "-c", FIRST_USE], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    load_before = load_note()
    WarmAssignment()(np.eye(3))  # compile or load the kernels before timing
    scipy_s, warm_s = defaultdict(float), defaultdict(float)
    solves, augmented, off = defaultdict(int), defaultdict(list), defaultdict(int)
    for name, sims in sequences(args.seeds).items():
        solver = WarmAssignment()
        for sim in sims:
            n = len(sim)
            start = time.perf_counter()
            rows, cols = linear_sum_assignment(sim, maximize=True)
            scipy_s[n] += time.perf_counter() - start
            start = time.perf_counter()
            perm = solver(sim)
            warm_s[n] += time.perf_counter() - start
            solves[n] += 1
            augmented[n].append(solver.freed / n)
            best = sim[rows, cols].sum()
            if abs(sim[np.arange(n), perm].sum() - best) > 1e-9 * max(1.0, abs(best)):
                off[n] += 1
    rows = [[n, solves[n], 1e3 * scipy_s[n] / solves[n], 1e3 * warm_s[n] / solves[n],
             scipy_s[n] / warm_s[n], f"{100 * np.median(augmented[n]):.0f} %", off[n]]
            for n in sorted(solves)]
    for row in rows:
        print(row, flush=True)
    cached, fresh = first_use_seconds(False), first_use_seconds(True)
    header = ["n", "solves", "SciPy ms / solve", "warm ms / solve", "speed-up",
              "rows augmented (median)", "off SciPy's optimum"]
    pairs = ", ".join(f"{k}: {m}" for k, (m, _) in PAIRS.items())
    emit(f"## Warm-started assignments on successive weight-matching similarities\n\n"
         f"Machine: {machine()}\n\nLoad: before {load_before}; after {load_note()}\n\n"
         f"Command: `python bench/warm_assignment.py --seeds {args.seeds}`\n\n"
         f"Runs: weight matching (identity start, SciPy) of {pairs}, seeds 0-{args.seeds - 1};"
         " every similarity solved, per group in order, by SciPy and by one warm solver per "
         "group (the first solve of a group starts from nothing).\n\n" + table(header, rows)
         + f"\n\nOne-off cost in a fresh process with permalign imported (import numba, run the kernels once): "
         f"{cached:.2f} s with the compiled kernels cached on disk, {fresh:.2f} s compiling "
         "them into an empty cache (once per installation).", args.out)


if __name__ == "__main__":
    main()
