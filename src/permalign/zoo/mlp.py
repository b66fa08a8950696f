"""Multi-layer perceptron: the paper's MNIST/Fashion-MNIST model (3 hidden layers of 512)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..spec import PermutationSpec
from .norms import make_norm
from .specbuilder import SpecBuilder


class MLP(nn.Module):
    """Flatten -> depth x (Linear -> norm -> ReLU) -> Linear head."""

    def __init__(self, in_features: int, num_classes: int, *, depth: int = 3,
                 width: int = 512, norm: str = "none") -> None:
        super().__init__()
        sizes = [in_features] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.norms = nn.ModuleList(make_norm(norm, width, spatial=False) for _ in range(depth))
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (N, *input_shape) -> (N, in_features)
        for layer, norm in zip(self.layers, self.norms):
            x = torch.relu(norm(layer(x)))
        return self.head(x)


def mlp_spec(depth: int, width: int, norm: str) -> PermutationSpec:
    """One group per hidden layer: its out-axis, bias, norm and the next layer's in-axis."""
    b = SpecBuilder()
    previous = None
    for i in range(depth):
        group = b.group(f"hidden{i}", width)
        b.layer(f"layers.{i}", previous, group)
        b.norm(norm, f"norms.{i}", group)
        previous = group
    b.layer("head", previous, None)
    return b.spec


def build_mlp(input_shape: tuple[int, ...], num_classes: int, *, depth: int = 3,
              width: int = 512, norm: str = "none") -> tuple[MLP, PermutationSpec]:
    model = MLP(math.prod(input_shape), num_classes, depth=depth, width=width, norm=norm)
    return model, mlp_spec(depth, width, norm)
