"""Weight matching on a busy machine: time alone vs beside one CPU-bound process.

    python bench/contention.py [--model resnet20:width=4,norm=ln] [--repeats 5] [--out FILE]

The competing process is a plain Python busy loop (one core). Goal: at most 2x slower than
without it, with torch's default thread count (the user sets nothing). Times are the best of
``--repeats`` runs of the same matching (random-init pair, seed 0), taken in the same run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from _common import emit, load_note, machine, random_pair, table
from permalign.match import weight_matching

BUSY = "while True: pass"


def best_time(spec, a, b, repeats: int) -> tuple[float, dict[str, float]]:
    best, timings = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = weight_matching(spec, a, b, seed=0)
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, timings = elapsed, result.timings
    return best, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet20:width=4,norm=ln")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    _, spec, a, b = random_pair(args.model)
    load_before = load_note()
    weight_matching(spec, a, b, seed=0)  # warm-up
    idle, idle_t = best_time(spec, a, b, args.repeats)
    busy_proc = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(1.0)  # let it reach full speed
        busy, busy_t = best_time(spec, a, b, args.repeats)
    finally:
        busy_proc.kill()
        busy_proc.wait()
    rows = [["alone", idle, idle_t["similarity"], idle_t["solver"], 1.0],
            ["beside 1 busy process", busy, busy_t["similarity"], busy_t["solver"],
             busy / idle]]
    emit(f"## Weight matching under contention\n\nMachine: {machine()} (default thread "
         f"count {torch.get_num_threads()})\n\nLoad: before {load_before}; after "
         f"{load_note()}\n\nCommand: `python bench/contention.py --model {args.model} "
         f"--repeats {args.repeats}` (best of {args.repeats}; competing process: "
         f"`python -c '{BUSY}'`)\n\n"
         + table(["run", "total s", "similarity s", "solver s", "ratio to alone"], rows),
         args.out)


if __name__ == "__main__":
    main()
