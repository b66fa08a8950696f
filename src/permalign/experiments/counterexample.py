"""A hand-set ReLU network where no permutation gives linear mode connectivity (paper A.6).

Input x in [-1, 1]^2, label 1 iff both coordinates are >= 0, prediction 1 iff output >= 0.
Networks 2 -> 2 -> 2 -> 1 (ReLU). A and B both classify perfectly, yet for each of the four
permutations of B's hidden units the straight line from A to B misclassifies points: linear
mode connectivity is a property of SGD solutions, not of the architecture.
"""
from __future__ import annotations

import torch

from ..interpolation import barrier, lambda_grid
from ..statedict import lerp_state
from ..match import weight_matching
from ..plot import plot_panels
from ..permutation import apply_permutation
from ..zoo.mlp import build_mlp
from dataclasses import dataclass

from .common import ExperimentConfig, ExperimentResult, experiment, table, verdict_from_checks

# PyTorch Linear weights are (out, in)
MODEL_A = {"layers.0.weight": [[1.0, 0.0], [0.0, -1.0]], "layers.0.bias": [1.0, 0.0],
           "layers.1.weight": [[-1.0, 0.0], [0.0, 1.0]], "layers.1.bias": [1.0, 0.0],
           "head.weight": [[-1.0, -1.0]], "head.bias": [0.0]}
MODEL_B = {"layers.0.weight": [[-1.0, 0.0], [0.0, 1.0]], "layers.0.bias": [0.0, 1.0],
           "layers.1.weight": [[1.0, 0.0], [0.0, -1.0]], "layers.1.bias": [0.0, 1.0],
           "head.weight": [[-1.0, -1.0]], "head.bias": [0.0]}
SWAP, KEEP = torch.tensor([1, 0]), torch.tensor([0, 1])


def error(model: torch.nn.Module, state: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    model.load_state_dict(state)
    with torch.no_grad():
        return float(((model(x)[:, 0] >= 0) != y).float().mean())


@dataclass(frozen=True)
class Sizes:
    points: int  # λ values on each line


SIZES = {"quick": Sizes(points=51), "full": Sizes(points=129)}


@experiment("counterexample", "A hand-built pair of perfect ReLU networks has no permutation "
            "that makes the linear path between them loss-free (appendix A.6).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    model, spec = build_mlp((2,), 1, depth=2, width=2)
    a = {k: torch.tensor(v) for k, v in MODEL_A.items()}
    b = {k: torch.tensor(v) for k, v in MODEL_B.items()}
    x = torch.rand(4096, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = (x[:, 0] >= 0) & (x[:, 1] >= 0)
    grid = lambda_grid(sizes.points)
    curves, rows = {}, []
    for first in (KEEP, SWAP):
        for second in (KEEP, SWAP):
            perm = {"hidden0": first, "hidden1": second}
            permuted = apply_permutation(spec, perm, b)
            label = f"layer 1 {'swapped' if first[0] else 'kept'}, layer 2 " \
                    f"{'swapped' if second[0] else 'kept'}"
            errors = [error(model, lerp_state(a, permuted, lam), x, y) for lam in grid]
            curves[label] = errors
            rows.append([label, errors[0], errors[-1], round(max(errors), 4),
                         round(barrier(errors), 4)])
    matched = weight_matching(spec, a, b)
    chosen = {n: p.tolist() for n, p in matched.perm.items()}
    plot_panels([("0-1 error along the line", "λ", "error",
                  {label: (grid, errors, None) for label, errors in curves.items()})],
                cfg.out / "counterexample.png", title="No permutation gives LMC")
    return ExperimentResult(
        results={"curves": {"lambdas": grid, **curves},
                 "summary": {"every_permutation_has_a_barrier": all(r[4] > 0 for r in rows),
                             "weight_matching_choice": chosen}},
        table=table(["permutation of B", "error at A", "error at B", "max error",
                     "error barrier"], rows),
        plots=["counterexample.png"],
        setup={"points": len(x), "inputs": "uniform on [-1, 1]^2, seed 0"},
        verdict=verdict_from_checks(
            [(f"{r[0]}: error barrier {r[4]:.3f}", r[4] > 0) for r in rows]),
        seeds={"data": 0})
