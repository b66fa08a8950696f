"""Seeded training-time data augmentation on in-memory image batches: random crop and flip.

Which augmentations a data set allows is decided here, by name: mirror images of digits are
not digits (a flipped 2, 3, 5 or 7 is no longer that class), while a mirrored garment, shoe,
bag or CIFAR object keeps its label. Random crops (shifts) are label-preserving for every
image data set.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import canonical_name
from .errors import PermalignError

# Data sets whose classes are invariant under a horizontal mirror. Fashion-MNIST is included:
# each of its ten classes (T-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker,
# bag, ankle boot) is still itself when mirrored; the digits of MNIST and sklearn's digits are
# not (a mirrored 2/3/5/7 is not a digit of the same class).
FLIP_INVARIANT = frozenset({"fashion-mnist", "cifar10", "cifar100"})

# The conventional crop padding is 4 pixels on 32x32 images; smaller images get it in
# proportion (28x28 -> 4, 14x14 -> 2, 8x8 -> 1).
REFERENCE_SIZE, REFERENCE_PAD = 32, 4


def flip_allowed(dataset: str) -> bool:
    """Whether a horizontal flip keeps every label of the named data set."""
    try:
        key = canonical_name(dataset)
    except PermalignError:  # an unknown data set: never flip
        return False
    return key in FLIP_INVARIANT


def scaled_pad(height: int, pad: int = REFERENCE_PAD) -> int:
    """Crop padding for ``height``-pixel images, ``pad`` pixels at 32 px scaled (at least 1)."""
    return max(1, round(pad * height / REFERENCE_SIZE))


@dataclass(frozen=True)
class Augmentation:
    """What is done to each training batch: a random crop after padding, and/or a flip."""

    crop_pad: int = 0  # pixels of reflection padding before a random crop back to size; 0: none
    flip: bool = False  # random horizontal flip with probability 1/2

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip

    def describe(self) -> str:
        parts = ([f"random crop (pad {self.crop_pad})"] if self.crop_pad else []) + (
            ["horizontal flip"] if self.flip else [])
        return " + ".join(parts) or "none"


NO_AUGMENTATION = Augmentation()


def augmentation_for(dataset: str, input_shape: tuple[int, ...], *, enabled: bool,
                     pad: int = REFERENCE_PAD) -> Augmentation:
    """The augmentation a recipe asking for crop + flip gets on this data set.

    Only image data (C, H, W) with H, W >= 8 is cropped; only flip-invariant data sets are
    flipped (see :data:`FLIP_INVARIANT`).
    """
    if not enabled or len(input_shape) != 3 or min(input_shape[1:]) < 8:
        return NO_AUGMENTATION
    return Augmentation(crop_pad=scaled_pad(min(input_shape[1:]), pad),
                        flip=flip_allowed(dataset))


def augment_batch(x: torch.Tensor, aug: Augmentation, generator: torch.Generator
                  ) -> torch.Tensor:
    """A new batch: each image of ``x`` (N, C, H, W) randomly cropped and/or flipped.

    Random numbers come from ``generator`` (on the CPU), so a seeded generator gives the same
    augmented batches every run.
    """
    if not aug.active:
        return x
    n, _, h, w = x.shape
    if aug.crop_pad:
        p = aug.crop_pad
        padded = F.pad(x, (p, p, p, p), mode="reflect")  # (N, C, H+2p, W+2p)
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator).to(x.device)
        rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H)
        cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (N, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        # advanced indexing -> (N, H, W, C); back to (N, C, H, W)
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2).contiguous()
    if aug.flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x
