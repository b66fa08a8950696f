"""A 25-point interpolation curve: one data pass per point vs every point in one pass.

    python bench/interpolation.py [--dataset fashion-mnist] [--model mlp:depth=3,width=512]

Two models trained on the data set (cached under bench/.cache); both curves evaluate the full
train and test splits. The one-pass curve stacks the interpolated weights and runs the model
once per data chunk for all points (``vectorize=True``, ``torch.func.vmap``); the per-point
curve is the reference (``vectorize=False``). Prints both times, the ratio and the largest
difference in loss and accuracy.
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import emit, fmnist_mlp_pair, load_note, machine, table
from permalign.interpolation import interpolation_curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mlp:depth=3,width=512")
    parser.add_argument("--points", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-train", type=int, help="evaluate on this many training "
                        "examples (default: all 60,000)")
    parser.add_argument("--out")
    args = parser.parse_args()
    model, _, a, b, data = fmnist_mlp_pair(args.model)
    if args.eval_train:
        data = data.subset(train=args.eval_train)
    load_before = load_note()
    times, curves = {}, {}
    for vectorize in (False, True, False, True):  # interleaved, best of 2
        start = time.perf_counter()
        curve = interpolation_curve(model, a, b, data, points=args.points, device=args.device,
                                    vectorize=vectorize)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        times[vectorize] = min(times.get(vectorize, float("inf")), seconds)
        curves[vectorize] = curve
    loss_diff = max(abs(x - y) for m in ("train_loss", "test_loss")
                    for x, y in zip(getattr(curves[True], m), getattr(curves[False], m)))
    acc_diff = max(abs(x - y) for m in ("train_acc", "test_acc")
                   for x, y in zip(getattr(curves[True], m), getattr(curves[False], m)))
    rows = [[args.model, "fashion-mnist", len(data.train_x) + len(data.test_x), args.points,
             times[False], times[True], times[False] / times[True], f"{loss_diff:.2g}",
             f"{acc_diff:.2g}"]]
    emit(f"## Interpolation curve: one pass per point vs all points in one pass "
         f"({args.device})\n\nMachine: {machine()}\n\nLoad: before {load_before}; after "
         f"{load_note()}\n\nCommand: `python bench/interpolation.py --model {args.model} "
         f"--points {args.points} --device {args.device}"
         + (f" --eval-train {args.eval_train}" if args.eval_train else "")
         + "` (best of 2, interleaved)\n\n"
         + table(["model", "dataset", "examples", "points", "per-point s", "one-pass s",
                  "speed-up", "max |loss diff|", "max |acc diff|"], rows), args.out)


if __name__ == "__main__":
    main()
