"""Merging models by MergeMany (paper Algorithm 3), BatchNorm statistics re-estimated.

Two models merge the same way (align B to A, average); the midpoint of an interpolation curve
is that merge too.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import copy

import torch
from torch import nn

from .errors import PermalignError
from .statedict import has_batchnorm, mean_state, reset_bn_stats
from .match.weight import weight_matching
from .permutation import apply_permutation, identity_permutation
from .spec import Permutation, PermutationSpec

StateDict = Mapping[str, torch.Tensor]


@dataclass
class MergeResult:
    """The merged state dict, every input aligned into the common basin, and how."""

    merged: dict[str, torch.Tensor]
    aligned: list[dict[str, torch.Tensor]]
    perms: list[Permutation]
    rounds: int
    converged: bool
    history: list[float] = field(default_factory=list)  # change of the average per round
    bn_reset: bool = False  # BatchNorm statistics of ``merged`` re-estimated on data


def _same(p: Permutation, q: Permutation) -> bool:
    return all(torch.equal(p[k].cpu(), q[k].cpu()) for k in p)


def merge_many(spec: PermutationSpec, states: list[StateDict], *, seed: int = 0,
               max_rounds: int = 100, device: torch.device | str = "cpu",
               model: nn.Module | None = None, bn_data: torch.Tensor | None = None,
               bn_reset: bool = True) -> MergeResult:
    """MergeMany: align each model to the mean of the others until nothing changes.

    Each round visits the models in a fresh random order (seeded); model i is weight-matched
    to the average of the other models' current aligned weights, warm-started from its previous
    permutation. Stops after a round where no permutation changed. The merged model is the
    mean of the aligned models (model 0's units keep their order only up to this process).

    A merged BatchNorm model needs its running statistics re-estimated (variance collapse):
    with ``model`` (the architecture) containing BatchNorm and ``bn_reset``, they are measured
    on the inputs ``bn_data``, which are then required.
    """
    if len(states) < 2:
        raise PermalignError("merging needs at least two models")
    needs_bn_reset = bn_reset and model is not None and has_batchnorm(model)
    if needs_bn_reset and bn_data is None:
        raise PermalignError("the merged model has BatchNorm layers whose statistics must be "
                             "re-estimated on training data; pass --dataset (or skip with "
                             "--no-bn-reset)")
    states = [{k: v.to(device) for k, v in s.items()} for s in states]
    perms = [identity_permutation(spec) for _ in states]
    aligned = [dict(s) for s in states]
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    converged = False
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        changed = False
        before = mean_state(aligned)
        for i in torch.randperm(len(states), generator=generator).tolist():
            others = mean_state([aligned[j] for j in range(len(states)) if j != i])
            result = weight_matching(spec, others, states[i], init=perms[i],
                                     seed=seed + rounds * len(states) + i, device=device)
            if not _same(result.perm, perms[i]):
                changed = True
                perms[i] = result.perm
                aligned[i] = apply_permutation(spec, perms[i], states[i])
        after = mean_state(aligned)
        history.append(float(sum((after[k] - before[k]).double().pow(2).sum()
                                 for k in after if after[k].is_floating_point()) ** 0.5))
        if not changed:
            converged = True
            break
    merged = mean_state(aligned)
    if needs_bn_reset:
        work = copy.deepcopy(model).to(device)
        work.load_state_dict(merged)
        reset_bn_stats(work, bn_data.to(device))
        merged = {k: v.detach() for k, v in work.state_dict().items()}
    return MergeResult(merged=merged, aligned=aligned, perms=perms, rounds=rounds,
                       converged=converged, history=history, bn_reset=needs_bn_reset)
