"""Merging models: two by alignment and averaging, many by MergeMany (paper Algorithm 3)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .errors import PermalignError
from .interpolation import mean_state
from .match.weight import weight_matching
from .spec import Permutation, PermutationSpec, apply_permutation, identity_permutation

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


def _same(p: Permutation, q: Permutation) -> bool:
    return all(torch.equal(p[k].cpu(), q[k].cpu()) for k in p)


def merge_many(spec: PermutationSpec, states: list[StateDict], *, seed: int = 0,
               max_rounds: int = 100, device: torch.device | str = "cpu") -> MergeResult:
    """MergeMany: align each model to the mean of the others until nothing changes.

    Each round visits the models in a fresh random order (seeded); model i is weight-matched
    to the average of the other models' current aligned weights, warm-started from its previous
    permutation. Stops after a round where no permutation changed. The merged model is the
    mean of the aligned models (model 0's units keep their order only up to this process).
    """
    if len(states) < 2:
        raise PermalignError("merging needs at least two models")
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
    return MergeResult(merged=mean_state(aligned), aligned=aligned, perms=perms, rounds=rounds,
                       converged=converged, history=history)


def merge_two(spec: PermutationSpec, state_a: StateDict, state_b: StateDict, *, seed: int = 0,
              device: torch.device | str = "cpu", weight: float = 0.5) -> dict[str, torch.Tensor]:
    """Weight-match B to A and return (1 - weight) A + weight pi(B)."""
    from .interpolation import lerp_state
    result = weight_matching(spec, state_a, state_b, seed=seed, device=device)
    return lerp_state(state_a, apply_permutation(spec, result.perm, state_b), weight)
