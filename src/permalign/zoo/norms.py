"""Normalisation layers used by the reference models, and their spec members."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PermalignError

NORM_ALIASES = {"none": "none", "ln": "ln", "layernorm": "ln", "bn": "bn", "batchnorm": "bn"}


def parse_norm(name: str) -> str:
    """Normalise a norm option to ``none`` | ``ln`` | ``bn``."""
    try:
        return NORM_ALIASES[str(name).lower()]
    except KeyError:
        raise PermalignError(f"unknown norm {name!r}; use one of none, ln (layernorm), "
                             "bn (batchnorm)") from None


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis at each spatial position of an (N, C, H, W) tensor."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, H, W, C) -> normalise C -> back
        y = F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


def make_norm(norm: str, channels: int, *, spatial: bool) -> nn.Module:
    """The norm layer for ``channels`` features (``spatial``: acts on (N, C, H, W))."""
    if norm == "bn":
        return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
    if norm == "ln":
        return ChannelLayerNorm(channels) if spatial else nn.LayerNorm(channels)
    return nn.Identity()


def norm_keys(norm: str, prefix: str) -> list[str]:
    """State-dict keys of a norm layer that carry its channel axis."""
    if norm == "bn":
        return [f"{prefix}.weight", f"{prefix}.bias", f"{prefix}.running_mean",
                f"{prefix}.running_var"]
    if norm == "ln":
        return [f"{prefix}.weight", f"{prefix}.bias"]
    return []


def kaiming_init(model: nn.Module) -> None:
    """He-normal weights for every conv and linear layer (biases keep PyTorch's default).

    Deep models without normalisation (VGG, norm=none) lose their signal under PyTorch's
    default initialisation; this keeps activations at unit scale.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
