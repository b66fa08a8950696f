"""The small, seeded trainer used by the demo and the experiments."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset, batches
from .errors import PermalignError, TrainingError
from .tasks import get_task

# Sensible defaults per data set (epochs, learning rate for Adam)
DEFAULT_EPOCHS = {"digits": 30, "fashion-mnist": 5, "mnist": 5, "cifar10": 30, "cifar100": 30}


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    seed: int = 0


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=True)
    raise PermalignError(f"unknown optimizer {cfg.optimizer!r}; use adam or sgd")


def train_model(model: nn.Module, data: Dataset, cfg: TrainConfig, *,
                device: torch.device | str = "cpu", progress: bool = True,
                on_epoch=None) -> list[float]:
    """Train ``model`` in place on ``data``'s training split; returns the mean loss per epoch.

    Shuffling is seeded by ``cfg.seed`` so the same seed gives the same model on the CPU.
    ``on_epoch(epoch, model)`` is called after each epoch (for checkpoints along training).
    """
    if cfg.epochs < 0 or cfg.batch_size < 1 or not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise PermalignError(f"training needs epochs >= 0, batch_size >= 1 and a finite lr > 0 "
                             f"(got {cfg.epochs}, {cfg.batch_size}, {cfg.lr})")
    model.to(device).train()
    x, y = data.train_x.to(device), data.train_y.to(device)
    task = get_task(data.task)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_fraction * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    generator = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    bar = tqdm(total=total, disable=None if progress else True, desc="train", unit="step",
               leave=False)
    for epoch in range(cfg.epochs):
        running = torch.zeros((), device=device)
        for xb, yb in batches(x, y, cfg.batch_size, shuffle=True, generator=generator):
            loss = task.loss(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.detach()
            bar.update(1)
        losses.append(float(running) / steps_per_epoch)
        if not math.isfinite(losses[-1]) or (epoch + 1 == cfg.epochs and not all(
                bool(torch.isfinite(p).all()) for p in model.parameters())):
            bar.close()
            what = "loss" if not math.isfinite(losses[-1]) else "weights"
            raise TrainingError(f"training diverged: the {what} became NaN or infinite in "
                                f"epoch {epoch + 1} (try a learning rate below {cfg.lr:g})")
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    bar.close()
    model.eval()
    return losses
