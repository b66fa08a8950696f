"""State-dict basics shared by interpolation, merging and REPAIR: linear combinations of
weights, and BatchNorm statistics (which an interpolated or merged model must re-estimate)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from . import distributed
from .data import batches
from .lazy import LazyView, view_like
from .permutation import keep_metadata, permute_tensor
from .spec import PermutationSpec


def lerp_state(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
               lam: float) -> dict[str, torch.Tensor]:
    """``(1 - lam) * A + lam * B`` for floating tensors; integer buffers and ``_metadata``
    are taken from A."""
    return keep_metadata(dict(lerp_view(state_a, state_b, lam)), state_a)


def mean_state(states: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several state dicts (integer buffers and ``_metadata`` from the
    first)."""
    return keep_metadata(dict(mean_view(states)), states[0])


def permuted_view(spec: PermutationSpec, perm: Mapping[str, torch.Tensor],
                  state: Mapping[str, torch.Tensor]) -> LazyView:
    """:func:`~permalign.permutation.apply_permutation` one tensor at a time: ``view[key]``
    is ``state[key]`` (loaded then, if ``state`` is lazy) with every group's permutation
    applied, the same bits as the eager result; nothing is kept."""
    spec.validate_permutation(perm)
    by_key = spec.members_by_key()

    def make(key: str) -> torch.Tensor:
        value = state[key]
        return permute_tensor(value, by_key[key], perm) if key in by_key else value
    return view_like(state, make)


def lerp_view(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
              lam: float) -> LazyView:
    """:func:`lerp_state` one tensor at a time; nothing is kept."""
    def make(key: str) -> torch.Tensor:
        a = state_a[key]
        return torch.lerp(a, state_b[key].to(a.device), lam) if a.is_floating_point() \
            else a.clone()
    return view_like(state_a, make)


def mean_view(states: list[Mapping[str, torch.Tensor]]) -> LazyView:
    """:func:`mean_state` one tensor at a time; nothing is kept."""
    first = states[0]

    def make(key: str) -> torch.Tensor:
        value = first[key]
        if not value.is_floating_point():
            return value.clone()
        return torch.stack([value] + [s[key].to(value.device) for s in states[1:]]).mean(0)
    return view_like(first, make)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reset_bn_stats(model: nn.Module, x: torch.Tensor, *, num_batches: int = 20,
                   batch_size: int = 256, seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``num_batches`` batches of x.

    Uses an exact cumulative average (momentum None) over the batches, then puts the model in
    eval mode. Needed for interpolated or merged BatchNorm models (variance collapse).
    With a process group each rank runs every ``world_size``-th batch (whole batches, so each
    batch's statistics are those of one process) and the averages are combined.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for i, (xb, _) in enumerate(batches(x, x.new_zeros(len(x)), batch_size, shuffle=True,
                                        generator=generator)):
        if i >= num_batches:
            break
        if distributed.owns(i):
            model(xb)
    _combine_running_stats(norms)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


def _combine_running_stats(norms: list[nn.Module]) -> None:
    """Each rank's cumulative averages over its batches -> the average over all batches."""
    if not distributed.active():
        return
    norms = [m for m in norms if m.running_mean is not None]
    counts = [m.num_batches_tracked.double() for m in norms]
    sums = distributed.all_reduce_sums(*counts, *[m.running_mean * c for m, c in
                                                  zip(norms, counts)],
                                       *[m.running_var * c for m, c in zip(norms, counts)])
    total, means, variances = sums[:len(norms)], sums[len(norms):2 * len(norms)], \
        sums[2 * len(norms):]
    for m, n, mean, var in zip(norms, total, means, variances):
        if n > 0:
            m.running_mean.copy_(mean / n)
            m.running_var.copy_(var / n)
        m.num_batches_tracked.fill_(int(n))


def float_state(state: dict[str, torch.Tensor], device: torch.device | str | None,
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Floating-point tensors of a state dict, moved to ``device`` in ``dtype``."""
    return {k: v.detach().to(device=device, dtype=dtype) for k, v in state.items()
            if v.is_floating_point()}
