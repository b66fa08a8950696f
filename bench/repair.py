"""REPAIR: one data pass per lambda vs one pass per site (the reference), bn-repair setup.

    python bench/repair.py [--model resnet20:width=1,norm=bn] [--train 2000] [--out FILE]

Two models trained for one epoch on a Fashion-MNIST subset (cached under bench/.cache), B
weight-matched onto A, then both REPAIR forms on 2000 training examples (the default) at
lambda = 0.5 (the midpoint). Times exclude the endpoints' statistics (measured once per pair by
both). Prints both times, the speed-up, the data passes, the largest difference of the two
repaired models' outputs (logits) on 2000 test images, and the midpoint's test accuracy under
both; the one-pass form is timed before and after the reference, best of the two. (The
reference resets BN statistics first; the one-pass form need not, so their BN
buffers and weights differ while the function is the same: compare outputs.)
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import emit, fmnist_mlp_pair, load_note, machine, table
from permalign.evaluate import evaluate
from permalign.repair import Repairer, SequentialRepairer
from permalign.workflow import align

LAMBDAS = (0.5,)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet20:width=1,norm=bn")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--out")
    args = parser.parse_args()
    model, spec, a, b, data = fmnist_mlp_pair(args.model, epochs=1, train=args.train)
    aligned_b, _ = align("weight", spec, model, a, b)
    test = data.subset(test=2000)
    load_before = load_note()
    results = {}
    # the fast form runs before and after the reference (its best time is kept), so a load
    # that changes during the run does not favour either form
    for kind in (Repairer, SequentialRepairer, Repairer):
        repairer = kind(model, spec, a, aligned_b, data.train_x)
        start = time.perf_counter()
        states = [repairer(lam) for lam in LAMBDAS]
        seconds = time.perf_counter() - start
        if kind in results:
            seconds = min(seconds, results[kind][0])
        model.load_state_dict(states[LAMBDAS.index(0.5)])
        _, acc = evaluate(model, test.test_x, test.test_y)
        with torch.inference_mode():
            logits = model.eval()(test.test_x)
        results[kind] = (seconds, repairer.passes, logits, acc, len(repairer.sites))
    slow, fast = results[SequentialRepairer], results[Repairer]
    diff = float((slow[2] - fast[2]).abs().max())
    scale = float(slow[2].abs().max())
    rows = [[args.model, fast[4], len(LAMBDAS), slow[0], fast[0], slow[0] / fast[0],
             f"{slow[1]} / {fast[1]}", f"{diff:.2g} (of {scale:.3g})",
             f"{slow[3]:.4f} / {fast[3]:.4f}"]]
    emit(f"## REPAIR: one pass per site vs one pass per lambda (cpu)\n\nMachine: {machine()}"
         f"\n\nLoad: before {load_before}; after {load_note()}\n\nCommand: `python "
         f"bench/repair.py --model {args.model} --train {args.train}` (models: 1 epoch on "
         f"{args.train} Fashion-MNIST examples; REPAIR on 2000 training examples; BN reset on "
         "the same examples before each lambda in the reference)\n\n"
         + table(["model", "sites", "lambdas", "per-site s", "one-pass s", "speed-up",
                  "correction passes (per-site / one-pass)", "max |logit diff| (of max |logit|)",
                  "midpoint test acc (per-site / one-pass)"], rows),
         args.out)


if __name__ == "__main__":
    main()
