"""The small, seeded trainer used by the demo and the experiments.

A :class:`TrainConfig` is usually made from a named recipe (:mod:`permalign.recipes`) plus
overrides. Everything random (initialisation, shuffling, augmentation) comes from the seed, so
the same config gives the same weights on the CPU.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import augment_batch, augmentation_for
from .data import Dataset, batches
from .errors import PermalignError, TrainingError
from .tasks import get_task

# Epochs of the quick-adam recipe per data set (recipes may name their own)
DEFAULT_EPOCHS = {"digits": 30, "fashion-mnist": 5, "mnist": 5, "cifar10": 30, "cifar100": 30}

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
# the augmentation generator is seeded apart from the shuffling one, so switching augmentation
# on or off leaves the order of the batches unchanged
AUGMENT_SEED_OFFSET = 1_000_003


@dataclass
class TrainConfig:
    """Every setting of one training run (defaults: the quick-adam recipe)."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9
    nesterov: bool = True  # SGD only
    weight_decay: float = 0.0  # L2 added to the gradient (torch's coupled weight decay)
    schedule: str = "cosine"  # cosine: linear warm-up then cosine to zero; constant: fixed lr
    warmup_fraction: float = 0.05  # share of all steps spent warming up (cosine only)
    augment: bool = False  # random crop + flip where the data allow (see permalign.augment)
    seed: int = 0
    recipe: str = "quick-adam"  # name of the recipe this came from (provenance only)

    def validate(self) -> None:
        """Raise a one-line :class:`PermalignError` naming the first bad setting."""
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise PermalignError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PermalignError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise PermalignError(f"learning rate must be finite and > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise PermalignError(f"weight decay must be finite and >= 0, got "
                                 f"{self.weight_decay!r}")
        if not 0 <= self.momentum < 1:
            raise PermalignError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise PermalignError(f"warm-up fraction must be in [0, 1), got "
                                 f"{self.warmup_fraction!r}")
        if self.optimizer not in OPTIMIZERS:
            raise PermalignError(f"unknown optimizer {self.optimizer!r}; use "
                                 f"{' or '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise PermalignError(f"unknown schedule {self.schedule!r}; use "
                                 f"{' or '.join(SCHEDULES)}")


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
                               weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    raise PermalignError(f"unknown optimizer {cfg.optimizer!r}; use adam or sgd")


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int
                  ) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule: warm-up + cosine, or constant."""
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    warmup = max(1, int(cfg.warmup_fraction * total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))


def train_model(model: nn.Module, data: Dataset, cfg: TrainConfig, *,
                device: torch.device | str = "cpu", progress: bool = True,
                on_epoch: Callable[[int, nn.Module], None] | None = None) -> list[float]:
    """Train ``model`` in place on ``data``'s training split; returns the mean loss per epoch.

    Shuffling and augmentation are seeded by ``cfg.seed`` so the same seed gives the same model
    on the CPU. ``on_epoch(epoch, model)`` is called after each epoch (for checkpoints along
    training).
    """
    cfg.validate()
    model.to(device).train()
    x, y = data.train_x.to(device), data.train_y.to(device)
    task = get_task(data.task)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    schedule = make_schedule(optimizer, cfg, total)
    aug = augmentation_for(data.name, data.input_shape, enabled=cfg.augment)
    generator = torch.Generator().manual_seed(cfg.seed)
    aug_generator = torch.Generator().manual_seed(cfg.seed + AUGMENT_SEED_OFFSET)
    losses: list[float] = []
    bar = tqdm(total=total, disable=None if progress else True, desc="train", unit="step",
               leave=False)
    for epoch in range(cfg.epochs):
        running = torch.zeros((), device=device)
        for xb, yb in batches(x, y, cfg.batch_size, shuffle=True, generator=generator):
            xb = augment_batch(xb, aug, aug_generator)
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


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a model's state dict."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class TrainRun:
    """A trained model's state, the seed's initial state it started from, and how it went."""

    state: dict[str, torch.Tensor]
    initial: dict[str, torch.Tensor]
    config: TrainConfig
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_run(model: nn.Module, data: Dataset, cfg: TrainConfig, *,
              device: torch.device | str = "cpu", progress: bool = True,
              on_epoch: Callable[[int, nn.Module], None] | None = None) -> TrainRun:
    """Train ``model`` (freshly initialised) and keep a copy of its initial state as well."""
    initial = cpu_state(model)
    start = time.perf_counter()
    losses = train_model(model, data, cfg, device=device, progress=progress, on_epoch=on_epoch)
    return TrainRun(state=cpu_state(model), initial=initial, config=cfg, losses=losses,
                    seconds=time.perf_counter() - start)
