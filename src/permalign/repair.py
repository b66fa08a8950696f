"""REPAIR (Jordan et al., arXiv 2211.08403): fix the variance collapse of interpolated models.

At every REPAIR site (norm layers, or Linear/Conv layers when the model has no norms) the
interpolated model's per-channel output mean and std are set to the interpolation of the
endpoints' (A's and B's) statistics. The correction ``y -> s * y + t`` is folded into the site's
weight and bias, so the result is a plain state dict of the same architecture.

Each site's correction depends on the corrections before it (they change its input). Sites are
fixed in forward order within **one** forward pass over the REPAIR examples, taken as one batch:
a hook at each site measures its output statistics over all examples, folds the correction into
the site and passes the corrected output on, so later sites are measured with earlier
corrections in place. Per λ this costs one data pass (plus the BatchNorm reset), instead of one
pass per site; :class:`SequentialRepairer` keeps the one-pass-per-site form as the reference
(same result to float rounding, tested). Peak memory is that of a forward pass over
``num_examples`` inputs at once; lower ``num_examples`` (default 2000) for large models.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from . import distributed
from .data import batches
from .permutation import keep_metadata
from .statedict import has_batchnorm, lerp_state, reset_bn_stats
from .sites import feature_dim, repair_sites
from .spec import PermutationSpec
from .stats import ChannelMoments


def channel_rows(out: torch.Tensor, dim: int) -> torch.Tensor:
    """A module output as (samples, channels): every other position is a sample."""
    return out.movedim(dim, -1).reshape(-1, out.shape[dim])


@torch.inference_mode()
def site_moments(model: nn.Module, names: list[str], x: torch.Tensor, *,
                 batch_size: int = 500) -> dict[str, ChannelMoments]:
    """Per-channel output mean/std of the named modules over inputs ``x`` (model in eval mode;
    with a process group each rank reads its shard and the sums are combined)."""
    (x,) = distributed.shard(x)
    moments = {n: ChannelMoments() for n in names}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        dim = feature_dim(module)

        def hook(_m, _args, out, _name=name, _dim=dim):
            moments[_name].update(channel_rows(out, _dim))
        handles.append(module.register_forward_hook(hook))
    model.eval()
    try:
        for xb, _ in batches(x, x, batch_size):
            model(xb)
    finally:
        for h in handles:
            h.remove()
    distributed.reduce_moments(moments)
    return moments


def correction(current: ChannelMoments, goal_mean: torch.Tensor, goal_std: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` that give outputs with ``current``'s statistics the goal's.

    ``current`` holds sums and counts; where statistics are gathered across processes they are
    summed here, before this call.
    """
    scale = goal_std / current.std.clamp_min(1e-8)
    return scale, goal_mean - scale * current.mean


class Repairer:
    """REPAIR for one pair of endpoints; the endpoints' statistics are measured once.

    BatchNorm sites get no BN reset first: in eval mode a BN layer is a per-channel affine map
    of its input, and REPAIR follows it with the one per-channel affine map (positive scale)
    that gives the site's outputs the goal mean and std, so the composition, and with it the
    repaired function, is the same whatever running statistics the layer held. Only how the
    map is split between running statistics and weight/bias differs from
    :class:`SequentialRepairer` (which resets them first, as the REPAIR paper does); their
    outputs agree to float rounding (tested).
    """

    def __init__(self, model: nn.Module, spec: PermutationSpec,
                 state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                 x: torch.Tensor, *, num_examples: int = 2000, bn_batches: int = 20) -> None:
        self.model = copy.deepcopy(model)
        self.sites = [name for name, _ in repair_sites(self.model, spec)]
        self.x = x[:num_examples]
        (self.x_local,) = distributed.shard(self.x)  # this rank's share for corrections
        self.bn_batches = bn_batches
        self.state_a, self.state_b = state_a, state_b
        self.endpoints = []
        for state in (state_a, state_b):
            self.model.load_state_dict(state)
            self.endpoints.append(site_moments(self.model, self.sites, self.x))
        self.passes = 0  # data passes spent on corrections (for benchmarks)

    def goal(self, name: str, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The interpolated endpoint mean and std of site ``name``."""
        end_a, end_b = self.endpoints
        return ((1 - lam) * end_a[name].mean + lam * end_b[name].mean,
                (1 - lam) * end_a[name].std + lam * end_b[name].std)

    reset_bn = False  # see the class docstring

    def __call__(self, lam: float) -> dict[str, torch.Tensor]:
        """The repaired state dict of (1 - lam) A + lam B."""
        self.model.load_state_dict(lerp_state(self.state_a, self.state_b, lam))
        if self.reset_bn and has_batchnorm(self.model):
            reset_bn_stats(self.model, self.x, num_batches=self.bn_batches)
        self.correct(lam)
        state = self.model.state_dict()
        return keep_metadata({k: v.detach().clone() for k, v in state.items()}, state)

    @torch.inference_mode()
    def correct(self, lam: float) -> None:
        """Fix every site in one forward pass; each hook corrects its site and its output."""
        handles = []
        for name in self.sites:
            module = self.model.get_submodule(name)

            def hook(mod, _args, out, _name=name, _dim=feature_dim(module)):
                current = ChannelMoments()
                current.update_channels(out, _dim)
                distributed.reduce_moments({_name: current})
                scale, shift = correction(current, *self.goal(_name, lam))
                _fold_affine(mod, scale, shift)
                shape = [1] * out.dim()
                shape[_dim] = -1
                # as if the folded site ran: out * scale + shift, in place
                return torch.addcmul(shift.to(out.dtype).view(shape), out,
                                     scale.to(out.dtype).view(shape), out=out)
            handles.append(module.register_forward_hook(hook))
        self.model.eval()
        try:
            self.model(self.x_local)
        finally:
            for h in handles:
                h.remove()
        self.passes += 1


class SequentialRepairer(Repairer):
    """Reference form: BN reset, then one forward pass per site in forward order (slow)."""

    reset_bn = True

    def correct(self, lam: float) -> None:
        for name in self.sites:
            current = site_moments(self.model, [name], self.x)[name]
            _fold_affine(self.model.get_submodule(name), *correction(current,
                                                                     *self.goal(name, lam)))
            self.passes += 1


@torch.no_grad()
def _fold_affine(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``module``'s output ``scale * y + shift`` per channel by changing weight and bias."""
    weight = module.weight
    shape = (-1,) + (1,) * (weight.dim() - 1)  # broadcast over the out-axis
    weight.mul_(scale.to(weight.dtype).view(shape))
    if module.bias is None:
        raise ValueError(f"REPAIR needs a bias on {type(module).__name__}")
    module.bias.mul_(scale.to(weight.dtype)).add_(shift.to(weight.dtype))
