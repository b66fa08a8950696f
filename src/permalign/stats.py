"""Streaming first and second moments in float64, without holding all samples."""
from __future__ import annotations

import torch


class ChannelMoments:
    """Per-channel mean and standard deviation over samples fed in chunks of (samples, n)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()  # (samples, n)
        if self.total is None:
            self.total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.total_sq = torch.zeros_like(self.total)
        self.total += x.sum(0, dtype=torch.float64)
        self.total_sq += (x * x).sum(0, dtype=torch.float64)
        self.count += x.shape[0]

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
