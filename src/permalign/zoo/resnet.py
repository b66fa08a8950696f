"""ResNet-20 for CIFAR-sized inputs, with a width multiplier (the paper's model)."""
from __future__ import annotations

import torch
from torch import nn

from ..spec import PermutationSpec
from .norms import kaiming_init, make_norm
from .specbuilder import SpecBuilder


def _conv3x3(cin: int, cout: int, stride: int, norm: str) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm != "bn")


class BasicBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus shortcut, then ReLU.

    The downsampling shortcut is a 3x3 stride-2 conv + norm (the paper's choice).
    """

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, norm)
        self.norm1 = make_norm(norm, cout, spatial=True)
        self.conv2 = _conv3x3(cout, cout, 1, norm)
        self.norm2 = make_norm(norm, cout, spatial=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv3x3(cin, cout, stride, norm),
                                          make_norm(norm, cout, spatial=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(out + skip)


class ResNet20(nn.Module):
    """Stem, three stages of three blocks (16w, 32w, 64w channels), global pool, linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, width: int = 1,
                 norm: str = "ln", blocks_per_stage: int = 3) -> None:
        super().__init__()
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = _conv3x3(input_shape[0], widths[0], 1, norm)
        self.stem_norm = make_norm(norm, widths[0], spatial=True)
        stages = []
        cin = widths[0]
        for s, cout in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, cout, 2 if (s > 0 and b == 0) else 1, norm))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(widths[-1], num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_norm(self.stem(x)))  # (N, 16w, H, W)
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean(dim=(2, 3)))  # (N, 64w) -> (N, classes)


def build_resnet20(input_shape: tuple[int, ...], num_classes: int, *, width: int = 1,
                   norm: str = "ln", blocks_per_stage: int = 3
                   ) -> tuple[ResNet20, PermutationSpec]:
    """The model and its spec: one residual-stream group per stage, one inner group per block."""
    model = ResNet20(input_shape, num_classes, width=width, norm=norm,
                     blocks_per_stage=blocks_per_stage)
    bias = norm != "bn"
    b = SpecBuilder()
    stream = b.group("stage0.stream", model.stem.out_channels)
    b.layer("stem", None, stream, bias=bias)
    b.norm(norm, "stem_norm", stream)
    for s, stage in enumerate(model.stages):
        for i, block in enumerate(stage):
            p = f"stages.{s}.{i}"
            if block.shortcut is not None:
                new_stream = b.group(f"stage{s}.stream" if s else "stage0.stream'",
                                     block.conv2.out_channels)
                b.layer(f"{p}.shortcut.0", stream, new_stream, bias=bias)
                b.norm(norm, f"{p}.shortcut.1", new_stream)
            else:
                new_stream = stream
            inner = b.group(f"{p}.inner", block.conv1.out_channels)
            b.layer(f"{p}.conv1", stream, inner, bias=bias)
            b.norm(norm, f"{p}.norm1", inner)
            b.layer(f"{p}.conv2", inner, new_stream, bias=bias)
            b.norm(norm, f"{p}.norm2", new_stream)
            stream = new_stream
    b.layer("head", stream, None)
    return model, b.spec
