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
from .lazy import is_lazy
from .statedict import has_batchnorm, mean_state, mean_view, permuted_view, reset_bn_stats
from .match.weight import weight_matching
from .permutation import apply_permutation, identity_permutation
from .spec import Permutation, PermutationSpec

StateDict = Mapping[str, torch.Tensor]


@dataclass
class MergeResult:
    """The merged state dict, every input aligned into the common basin, and how."""

    merged: Mapping[str, torch.Tensor]  # a lazy view when the inputs were lazy
    aligned: list[Mapping[str, torch.Tensor]]
    perms: list[Permutation]
    rounds: int
    converged: bool
    history: list[float] = field(default_factory=list)  # change of the average per round
    bn_reset: bool = False  # BatchNorm statistics of ``merged`` re-estimated on data


def _same(p: Permutation, q: Permutation) -> bool:
    return all(torch.equal(p[k].cpu(), q[k].cpu()) for k in p)


def _distance(before: StateDict, after: StateDict) -> float:
    """Euclidean distance of two state dicts' floating tensors, one tensor at a time (in sorted
    key order, so a lazy view, whose keys come in its file's order, sums the same way)."""
    total = 0.0
    for key in sorted(after):
        a = after[key]
        if a.is_floating_point():
            total += float((a - before[key]).double().pow(2).sum())
    return total ** 0.5


def merge_many(spec: PermutationSpec, states: list[StateDict], *, seed: int = 0,
               max_rounds: int = 100, device: torch.device | str = "cpu",
               model: nn.Module | None = None, bn_data: torch.Tensor | None = None,
               bn_reset: bool = True, init: str = "auto") -> MergeResult:
    """MergeMany: align each model to the mean of the others until nothing changes.

    Each round visits the models in a fresh random order (seeded); model i is weight-matched
    to the average of the other models' current aligned weights, warm-started from its previous
    permutation. In the first round there is none: ``init`` names the start
    (:mod:`permalign.match.init`; ``auto``, the best of identity and sorted weights, finds a
    permuted copy where the identity stalls; ``identity`` is the paper's MergeMany). Stops
    after a round where no permutation changed. The merged model is the
    mean of the aligned models (model 0's units keep their order only up to this process).

    A merged BatchNorm model needs its running statistics re-estimated (variance collapse):
    with ``model`` (the architecture) containing BatchNorm and ``bn_reset``, they are measured
    on the inputs ``bn_data``, which are then required.

    Lazy inputs (:mod:`permalign.lazy`, e.g. safetensors folders) stay lazy: the aligned
    models, the means they are matched to and the merged model are views computed one tensor
    at a time (the same bits as the eager path), and weight matching runs in its bounded-memory
    mode, so memory holds a few tensors, not the models.
    """
    if len(states) < 2:
        raise PermalignError("merging needs at least two models")
    needs_bn_reset = bn_reset and model is not None and has_batchnorm(model)
    if needs_bn_reset and bn_data is None:
        raise PermalignError("the merged model has BatchNorm layers whose statistics must be "
                             "re-estimated on training data; pass --dataset (or skip with "
                             "--no-bn-reset)")
    lazy = any(is_lazy(s) for s in states)
    if lazy and torch.device(device).type != "cpu":
        raise PermalignError("merging lazy (low-memory) inputs runs on the CPU; drop --device "
                             "or --low-memory")
    mean = mean_view if lazy else mean_state
    permute = permuted_view if lazy else apply_permutation
    if not lazy:
        states = [{k: v.to(device) for k, v in s.items()} for s in states]
    perms = [identity_permutation(spec) for _ in states]
    aligned = list(states) if lazy else [dict(s) for s in states]
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    converged = False
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        changed = False
        before = mean(list(aligned))
        for i in torch.randperm(len(states), generator=generator).tolist():
            others = mean([aligned[j] for j in range(len(states)) if j != i])
            result = weight_matching(spec, others, states[i],
                                     init=perms[i] if rounds > 1 else init,
                                     seed=seed + rounds * len(states) + i, device=device)
            if not _same(result.perm, perms[i]):
                changed = True
                perms[i] = result.perm
                aligned[i] = permute(spec, perms[i], states[i])
        history.append(_distance(before, mean(list(aligned))))
        if not changed:
            converged = True
            break
    merged = mean(aligned)
    if needs_bn_reset:
        work = copy.deepcopy(model).to(device)
        work.load_state_dict(merged if isinstance(merged, dict) else dict(merged))
        reset_bn_stats(work, bn_data.to(device))
        merged = {k: v.detach() for k, v in work.state_dict().items()}
    return MergeResult(merged=merged, aligned=aligned, perms=perms, rounds=rounds,
                       converged=converged, history=history, bn_reset=needs_bn_reset)
