"""VGG-11/16 with a width multiplier and optional LayerNorm/BatchNorm."""
from __future__ import annotations

import torch
from torch import nn

from ..spec import PermutationSpec
from .norms import kaiming_init, make_norm
from .specbuilder import SpecBuilder

CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"],
}


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class VGG(nn.Module):
    """3x3 conv -> norm -> ReLU stacks with max-pooling, global average pool, linear head.

    Pools that would shrink the feature map below 1x1 (small inputs) are skipped.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, depth: int = 16,
                 width: float = 1.0, norm: str = "none") -> None:
        super().__init__()
        channels_in, height = input_shape[0], min(input_shape[1:])
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.pool_after: list[bool] = []
        for item in CONFIGS[depth]:
            if item == "M":
                if height >= 2 and self.pool_after:
                    self.pool_after[-1] = True
                    height //= 2
                continue
            out = scaled(item, width)
            self.convs.append(nn.Conv2d(channels_in, out, 3, padding=1, bias=norm != "bn"))
            self.norms.append(make_norm(norm, out, spatial=True))
            self.pool_after.append(False)
            channels_in = out
        self.head = nn.Linear(channels_in, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm, pool in zip(self.convs, self.norms, self.pool_after):
            x = torch.relu(norm(conv(x)))  # (N, C, H, W)
            if pool:
                x = nn.functional.max_pool2d(x, 2)
        return self.head(x.mean(dim=(2, 3)))  # (N, C) -> (N, classes)


def build_vgg(input_shape: tuple[int, ...], num_classes: int, *, depth: int = 16,
              width: float = 1.0, norm: str = "none") -> tuple[VGG, PermutationSpec]:
    model = VGG(input_shape, num_classes, depth=depth, width=width, norm=norm)
    b = SpecBuilder()
    previous = None
    for i, conv in enumerate(model.convs):
        group = b.group(f"conv{i}", conv.out_channels)
        b.layer(f"convs.{i}", previous, group, bias=conv.bias is not None)
        b.norm(norm, f"norms.{i}", group)
        previous = group
    b.layer("head", previous, None)
    return model, b.spec
