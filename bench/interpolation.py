"""A 25-point interpolation curve against 25 plain evaluation passes of one model.

    python bench/interpolation.py [--dataset fashion-mnist] [--model mlp:depth=3,width=512]

Both evaluate train and test splits; the goal is curve time <= 25 plain evaluations.
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import emit, machine, table
from permalign.data import load_dataset
from permalign.evaluate import evaluate
from permalign.interpolation import interpolation_curve
from permalign.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="mlp:depth=3,width=512")
    parser.add_argument("--points", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out")
    args = parser.parse_args()
    data = load_dataset(args.dataset).to(args.device)
    models = [build_model(args.model, data.input_shape, data.num_classes, seed=s).to(args.device)
              for s in (0, 1)]
    a, b = (m.state_dict() for m in models)
    model = models[0]
    evaluate(model, data.test_x, data.test_y)  # warm-up

    start = time.perf_counter()
    for _ in range(args.points):
        evaluate(model, data.train_x, data.train_y)
        evaluate(model, data.test_x, data.test_y)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    plain = time.perf_counter() - start

    start = time.perf_counter()
    interpolation_curve(model, a, b, data, points=args.points, device=args.device)
    curve = time.perf_counter() - start
    rows = [[args.model, args.dataset, len(data.train_x) + len(data.test_x), args.points, plain,
             curve, curve / plain]]
    emit(f"## Interpolation curve vs plain evaluation ({args.device})\n\nMachine: {machine()}\n\n"
         f"Command: `python bench/interpolation.py --dataset {args.dataset} --model {args.model}`"
         "\n\n" + table(["model", "dataset", "examples", "points", f"{args.points} evals s",
                         "curve s", "curve / evals"], rows), args.out)


if __name__ == "__main__":
    main()
