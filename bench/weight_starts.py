"""Weight matching from different starts on trained pairs: objective reached and barrier.

    python bench/weight_starts.py [--models mlp,vgg11,resnet20] [--epochs 5] [--out FILE]

Two models per architecture are trained from seeds 0 and 1 on the bundled digits; B is
weight-matched to A from each start (identity = paper Algorithm 1, sorted weights, activations
on 256 training inputs, and ``auto``, the CLI's default) and the test-loss barrier of the line
from A to the aligned B is measured (25 points, BatchNorm statistics reset where present).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from _common import emit, machine, table, trained_pair
from permalign.data import load_digits
from permalign.interpolation import interpolation_curve
from permalign.match import weight_matching
from permalign.permutation import apply_permutation

MODELS = {
    "mlp": "mlp:depth=3,width=128",
    "vgg11": "vgg11:width=0.25,norm=bn",
    "resnet20": "resnet20:width=2,norm=ln",
}
STARTS = ["identity", "sorted", "activation", "auto"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = load_digits()
    rows = []
    for key in args.models.split(","):
        model, spec, a, b = trained_pair(MODELS[key], epochs=args.epochs)
        inputs = (data.train_x[:256],)
        naive = interpolation_curve(model, a, b, data).barriers()["test_loss"]
        results = {}
        for start in STARTS:
            began = time.perf_counter()
            result = weight_matching(spec, a, b, init=start, seed=0, model=model,
                                     inputs=inputs if start in ("activation", "auto") else None)
            seconds = time.perf_counter() - began
            curve = interpolation_curve(model, a, apply_permutation(spec, result.perm, b), data)
            results[start] = (result.history[-1], curve.barriers()["test_loss"], seconds,
                              result.info["init"])
            print(f"{key} {start}: {results[start]}", flush=True)
        identity = results["identity"][0]
        for start, (objective, barrier, seconds, won) in results.items():
            rows.append([MODELS[key], start, won, f"{objective:.6g}",
                         f"{objective / identity:.4f}", f"{barrier:.4f}", f"{naive:.4f}",
                         f"{seconds:.2f}"])
    load = os.getloadavg()[0]
    emit("## Weight matching starts on trained pairs (digits)\n\n"
         f"Machine: {machine()}; load average {load:.2f} at the end\n\nCommand: `python bench/weight_starts.py "
         f"--models {args.models} --epochs {args.epochs}`\n\n"
         + table(["model", "init", "start kept", "objective", "/ identity",
                  "test-loss barrier", "naive barrier", "s"], rows), args.out)


if __name__ == "__main__":
    main()
