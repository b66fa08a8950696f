"""What every experiment shares: configuration, data, cached training, results with provenance."""
from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset, load_dataset
from ..errors import PermalignError
from ..io import atomic_write_text, load_state_dict, save_state_dict
from ..provenance import provenance
from ..train import TrainConfig, train_model
from ..models import build_model


@dataclass
class ExperimentConfig:
    """Options common to every experiment (``permalign experiment NAME ...``)."""

    out: Path
    quick: bool = False
    dataset: str | None = None
    data_dir: str | None = None
    seeds: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    started: float = field(default_factory=time.time)

    def log(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)


@dataclass
class Experiment:
    name: str
    claim: str  # what the paper says, shown beside our numbers
    run: Callable[[ExperimentConfig], dict[str, Any]]
    needs_data: bool = True


REGISTRY: dict[str, Experiment] = {}


def experiment(name: str, claim: str, needs_data: bool = True):
    """Decorator registering ``run(cfg) -> results`` as an experiment."""
    def wrap(fn):
        REGISTRY[name] = Experiment(name, claim, fn, needs_data)
        return fn
    return wrap


# ------------------------------------------------------------------ data and models
QUICK_TRAIN, QUICK_TEST = 4000, 2000


def experiment_data(cfg: ExperimentConfig, default: str = "fashion-mnist") -> Dataset:
    """The experiment's data set (a seeded subset in quick mode)."""
    data = load_dataset(cfg.dataset or default, cfg.data_dir)
    if cfg.quick:
        data = data.subset(train=QUICK_TRAIN, test=QUICK_TEST)
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text)


def _checkpoint_stem(model_string: str, data: Dataset, *, seed: int, epochs: int,
                     tag: str = "", lr: float = 1e-3, optimizer: str = "adam") -> str:
    """File name (without suffix) of a cached checkpoint; one place so snapshots match."""
    return _slug(f"{model_string}-{data.name}-n{len(data.train_x)}{tag}-s{seed}-{optimizer}"
                 f"{lr:g}-e{epochs}")


def trained_state(cfg: ExperimentConfig, model_string: str, data: Dataset, *, seed: int,
                  epochs: int, tag: str = "", lr: float = 1e-3, optimizer: str = "adam",
                  snapshots: bool = False) -> dict[str, torch.Tensor]:
    """Train (or load from the cache under ``out/checkpoints``) a model from ``seed``.

    With ``snapshots`` a checkpoint is kept after every epoch (see :func:`snapshot`).
    """
    folder = cfg.out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    stem = _checkpoint_stem(model_string, data, seed=seed, epochs=epochs, tag=tag, lr=lr,
                            optimizer=optimizer)
    path = folder / f"{stem}.pt"
    if path.exists():
        return load_state_dict(path)
    model = build_model(model_string, data.input_shape, data.num_classes, seed=seed)

    def keep(epoch: int, m: torch.nn.Module) -> None:
        if snapshots and epoch < epochs:
            save_state_dict(m.state_dict(), folder / f"{stem}-at{epoch}.pt", force=True)

    cfg.log(f"  training {model_string} on {data.name} ({len(data.train_x)} examples, "
            f"{epochs} epochs, seed {seed})")
    train_model(model, data, TrainConfig(epochs=epochs, seed=seed, lr=lr, optimizer=optimizer),
                device=cfg.device, progress=cfg.progress, on_epoch=keep)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_state_dict(state, path, force=True)
    return state


def snapshot(cfg: ExperimentConfig, model_string: str, data: Dataset, *, seed: int,
             epochs: int, at: int, **kwargs: Any) -> dict[str, torch.Tensor]:
    """The weights after ``at`` of ``epochs`` epochs (trains with snapshots if needed)."""
    final = trained_state(cfg, model_string, data, seed=seed, epochs=epochs, snapshots=True,
                          **kwargs)
    if at >= epochs:
        return final
    stem = _checkpoint_stem(model_string, data, seed=seed, epochs=epochs, **kwargs)
    path = cfg.out / "checkpoints" / f"{stem}-at{at}.pt"
    if not path.exists():
        raise PermalignError(f"snapshot {path} is missing; delete {cfg.out / 'checkpoints'} "
                             "and run again")
    return load_state_dict(path)


# ------------------------------------------------------------------ results
def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def write_results(cfg: ExperimentConfig, name: str, results: dict[str, Any],
                  seeds: Any) -> Path:
    """Write ``out/results.json`` with the experiment's claim and provenance."""
    record = {"experiment": name, "claim": REGISTRY[name].claim, "quick": cfg.quick, **results,
              "provenance": provenance(seeds=seeds, device=cfg.device, started=cfg.started)}
    path = cfg.out / "results.json"
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False), force=True)
    return path


def table(columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A results table: rendered by ``permalign report``."""
    return {"columns": columns, "rows": rows}
