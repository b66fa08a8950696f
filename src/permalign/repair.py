"""REPAIR (Jordan et al., arXiv 2211.08403): fix the variance collapse of interpolated models.

At every REPAIR site (norm layers, or Linear/Conv layers when the model has no norms) the
interpolated model's per-channel output mean and std are set to the interpolation of the
endpoints' (A's and B's) statistics. The correction ``y -> s * y + t`` is folded into the site's
weight and bias, so the result is a plain state dict of the same architecture. Sites are fixed
one at a time in forward order, each measured with the earlier corrections in place.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .data import batches
from .statedict import has_batchnorm, lerp_state, reset_bn_stats
from .sites import feature_dim, repair_sites
from .spec import PermutationSpec
from .stats import ChannelMoments


@torch.inference_mode()
def site_moments(model: nn.Module, names: list[str], x: torch.Tensor, *,
                 batch_size: int = 500) -> dict[str, ChannelMoments]:
    """Per-channel output mean/std of the named modules over inputs ``x`` (model in eval mode)."""
    moments = {n: ChannelMoments() for n in names}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        dim = feature_dim(module)

        def hook(_m, _args, out, _name=name, _dim=dim):
            moments[_name].update(out.movedim(_dim, -1).reshape(-1, out.shape[_dim]))
        handles.append(module.register_forward_hook(hook))
    model.eval()
    try:
        for xb, _ in batches(x, x, batch_size):
            model(xb)
    finally:
        for h in handles:
            h.remove()
    return moments


class Repairer:
    """REPAIR for one pair of endpoints; the endpoints' statistics are measured once."""

    def __init__(self, model: nn.Module, spec: PermutationSpec,
                 state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                 x: torch.Tensor, *, num_examples: int = 2000, bn_batches: int = 20) -> None:
        self.model = copy.deepcopy(model)
        self.sites = [name for name, _ in repair_sites(self.model, spec)]
        self.x = x[:num_examples]
        self.bn_batches = bn_batches
        self.state_a, self.state_b = state_a, state_b
        self.endpoints = []
        for state in (state_a, state_b):
            self.model.load_state_dict(state)
            self.endpoints.append(site_moments(self.model, self.sites, self.x))

    def __call__(self, lam: float) -> dict[str, torch.Tensor]:
        """The repaired state dict of (1 - lam) A + lam B."""
        self.model.load_state_dict(lerp_state(self.state_a, self.state_b, lam))
        if has_batchnorm(self.model):
            reset_bn_stats(self.model, self.x, num_batches=self.bn_batches)
        end_a, end_b = self.endpoints
        for name in self.sites:
            current = site_moments(self.model, [name], self.x)[name]
            goal_mean = (1 - lam) * end_a[name].mean + lam * end_b[name].mean
            goal_std = (1 - lam) * end_a[name].std + lam * end_b[name].std
            scale = goal_std / current.std.clamp_min(1e-8)
            shift = goal_mean - scale * current.mean
            _fold_affine(self.model.get_submodule(name), scale, shift)
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


@torch.no_grad()
def _fold_affine(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``module``'s output ``scale * y + shift`` per channel by changing weight and bias."""
    weight = module.weight
    shape = (-1,) + (1,) * (weight.dim() - 1)  # broadcast over the out-axis
    weight.mul_(scale.to(weight.dtype).view(shape))
    if module.bias is None:
        raise ValueError(f"REPAIR needs a bias on {type(module).__name__}")
    module.bias.mul_(scale.to(weight.dtype)).add_(shift.to(weight.dtype))
