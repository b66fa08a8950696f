"""Streaming first and second moments in float64, without holding all samples."""
from __future__ import annotations

import math

import torch


class ChannelMoments:
    """Per-channel mean and standard deviation over samples fed in chunks of (samples, n)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()  # (samples, n)
        self._add(x.sum(0, dtype=torch.float64), (x * x).sum(0, dtype=torch.float64),
                  x.shape[0])

    def update_channels(self, x: torch.Tensor, dim: int) -> None:
        """Add a tensor whose axis ``dim`` holds the channels; every other position is a
        sample. Sums run over the positions after the channel axis in x's dtype (short,
        contiguous runs: a spatial map), then over the rest in float64; no reshaped copy."""
        x = x.detach()
        dim = dim % x.dim()
        x3 = x.reshape(math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1:]))
        total = x3.sum(2).double().sum(0)  # (pre, C, post) -> (C,)
        total_sq = torch.linalg.vector_norm(x3, dim=2).double().square().sum(0)
        self._add(total, total_sq, x3.shape[0] * x3.shape[2])

    def _add(self, total: torch.Tensor, total_sq: torch.Tensor, count: int) -> None:
        if self.total is None:
            self.total = torch.zeros_like(total)
            self.total_sq = torch.zeros_like(total)
        self.total += total
        self.total_sq += total_sq
        self.count += count

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def std(self) -> torch.Tensor:
        var = self.total_sq / self.count - self.mean ** 2
        return var.clamp_min(0).sqrt()


class CrossMoments:
    """Means, variances and the cross-moment of paired samples a (samples, n), b (samples, n)."""

    def __init__(self) -> None:
        self.a = ChannelMoments()
        self.b = ChannelMoments()
        self.cross: torch.Tensor | None = None

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.detach().double(), b.detach().double()  # (samples, n) each
        if self.cross is None:
            self.cross = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64,
                                     device=a.device)
        self.cross += a.T @ b  # (n, n)
        self.a.update(a)
        self.b.update(b)

    @property
    def count(self) -> int:
        return self.a.count

    def cross_moment(self) -> torch.Tensor:
        """E[a_i b_j], (n, n)."""
        return self.cross / self.count

    def correlation(self, eps: float = 1e-12) -> torch.Tensor:
        """Pearson correlation of a_i and b_j, (n, n)."""
        cov = self.cross_moment() - torch.outer(self.a.mean, self.b.mean)
        return cov / (torch.outer(self.a.std, self.b.std) + eps)
