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
from ..errors import DataError, PermalignError
from ..io import atomic_write_text, load_state_dict, save_state_dict
from ..provenance import provenance
from ..recipes import DEFAULT_RECIPE, get_recipe, recipe_config
from ..train import TrainConfig, train_model
from ..models import build_model


SCALES = ("quick", "full", "paper")


@dataclass
class ExperimentConfig:
    """Options common to every experiment (``permalign experiment NAME ...``).

    ``scale``: ``quick`` (CI smoke test on 2 CPU cores), ``full`` (what RESULTS.md reports,
    sized for a CPU) or ``paper`` (the paper's sizes, for a GPU).
    """

    out: Path
    scale: str = "full"
    dataset: str | None = None
    data_dir: str | None = None
    seeds: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    force: bool = False  # overwrite an earlier run's results.json
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise PermalignError(f"unknown scale {self.scale!r}; use one of {', '.join(SCALES)}")

    @property
    def quick(self) -> bool:
        return self.scale == "quick"

    def log(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)


@dataclass
class ExperimentResult:
    """What every experiment returns; ``permalign report`` renders the common fields.

    ``table`` is the headline table, ``setup`` the sizes actually used, ``seeds`` every seed
    that went in, ``plots`` file names in the output folder, ``results`` the experiment's own
    numbers (curves, summaries), and ``verdict`` the comparison with the paper's claim.
    """

    table: dict[str, Any]
    setup: dict[str, Any]
    seeds: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    verdict: dict[str, str] | None = None  # {"status": reproduced|partly|not, "why": ...}


@dataclass
class Experiment:
    """A registered experiment: the paper's claim, its sizes per scale, and how to run it."""

    name: str
    claim: str  # what the paper says, shown beside our numbers
    run: Callable[[ExperimentConfig, Any], ExperimentResult]
    sizes: dict[str, Any]  # scale -> that experiment's sizes (a frozen dataclass)

    def sizes_for(self, scale: str) -> Any:
        if scale not in self.sizes:
            raise PermalignError(f"experiment {self.name} has no {scale!r} scale; use one of "
                                 f"{', '.join(self.sizes)}")
        return self.sizes[scale]


REGISTRY: dict[str, Experiment] = {}


def experiment(name: str, claim: str, sizes: dict[str, Any]):
    """Decorator registering ``run(cfg, sizes) -> ExperimentResult`` as an experiment.

    ``sizes`` maps each scale the experiment supports (at least quick and full) to its sizes.
    """
    missing = {"quick", "full"} - set(sizes)
    if missing:
        raise TypeError(f"experiment {name!r} declares no {', '.join(sorted(missing))} sizes")

    def wrap(fn):
        REGISTRY[name] = Experiment(name, claim, fn, dict(sizes))
        return fn
    return wrap


# ------------------------------------------------------------------ data and models
QUICK_TRAIN, QUICK_TEST = 4000, 2000


def experiment_data(cfg: ExperimentConfig, default: str = "fashion-mnist") -> Dataset:
    """The experiment's data set (a seeded subset in quick mode).

    A quick run with no ``--dataset`` falls back to the bundled digits, saying so, when the
    default data set is not installed; other scales keep the error that says how to get it.
    """
    try:
        data = load_dataset(cfg.dataset or default, cfg.data_dir)
    except DataError as exc:
        if not cfg.quick or cfg.dataset:
            raise
        print(f"note: {exc}; this quick run uses the bundled digits instead", flush=True)
        data = load_dataset("digits")
    if cfg.quick:
        data = data.subset(train=QUICK_TRAIN, test=QUICK_TEST)
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text)


def _checkpoint_stem(model_string: str, data: Dataset, *, seed: int, recipe: str,
                     epochs: int, tag: str = "") -> str:
    """File name (without suffix) of a cached checkpoint; one place so snapshots match.

    Image sizes are part of the name, so a downsampled data set never reuses a checkpoint
    trained at full resolution.
    """
    shape = "x".join(str(s) for s in data.input_shape)
    return _slug(f"{model_string}-{data.name}-{shape}-n{len(data.train_x)}{tag}-s{seed}-"
                 f"{recipe}-e{epochs}")


def train_config(recipe: str, data: Dataset, *, seed: int, epochs: int | None = None,
                 lr: float | None = None) -> TrainConfig:
    """The named recipe's :class:`TrainConfig` for ``data`` (``epochs`` overrides the
    recipe's count: CPU runs shorten long recipes and say so in their setup; ``lr`` its
    learning rate, where a measured failure needs it)."""
    return recipe_config(recipe, dataset=data.name, seed=seed, epochs=epochs, lr=lr)


def recipe_setup(recipe: str, data: Dataset, epochs: int | None, why: str,
                 lr: float | None = None, lr_why: str = "") -> dict[str, Any]:
    """What a result's ``setup`` says about training: the recipe, its settings, the epochs
    used (and the recipe's own count where a CPU run shortened it), and why this recipe."""
    r = get_recipe(recipe)
    used = train_config(recipe, data, seed=0, epochs=epochs).epochs
    own = r.epochs_for(data.name)
    entry = {"recipe": r.summary(), "recipe_source": r.source, "why_this_recipe": why,
             "epochs": used}
    if used != own:
        entry["epochs"] = f"{used} (the recipe's {own} shortened to fit a CPU)"
    if lr is not None and lr != r.lr:
        entry["learning_rate"] = f"{lr:g} instead of the recipe's {r.lr:g}: {lr_why}"
    return entry


def initial_state(model_string: str, data: Dataset, *, seed: int) -> dict[str, torch.Tensor]:
    """The initial weights training from ``seed`` starts from (they depend only on the seed)."""
    model = build_model(model_string, data.input_shape, data.num_classes, seed=seed)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def trained_state(cfg: ExperimentConfig, model_string: str, data: Dataset, *, seed: int,
                  recipe: str = DEFAULT_RECIPE, epochs: int | None = None, tag: str = "",
                  snapshots: bool = False, lr: float | None = None
                  ) -> dict[str, torch.Tensor]:
    """Train with a named recipe (or load from the cache under ``out/checkpoints``) a model
    from ``seed``; ``epochs`` overrides the recipe's count.

    With ``snapshots`` a checkpoint is kept after every epoch (see :func:`snapshot`).
    """
    train_cfg = train_config(recipe, data, seed=seed, epochs=epochs, lr=lr)
    if lr is not None:
        tag += f"-lr{lr:g}"
    folder = cfg.out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    stem = _checkpoint_stem(model_string, data, seed=seed, recipe=recipe,
                            epochs=train_cfg.epochs, tag=tag)
    path = folder / f"{stem}.pt"
    if path.exists():
        return load_state_dict(path)
    model = build_model(model_string, data.input_shape, data.num_classes, seed=seed)

    def keep(epoch: int, m: torch.nn.Module) -> None:
        if snapshots and epoch < train_cfg.epochs:
            save_state_dict(m.state_dict(), folder / f"{stem}-at{epoch}.pt", force=True,
                            now=True)  # a cache: kept at once, outside the run's outputs

    cfg.log(f"  training {model_string} on {data.name} ({len(data.train_x)} examples, "
            f"{recipe}, {train_cfg.epochs} epochs, seed {seed})")
    train_model(model, data, train_cfg, device=cfg.device, progress=cfg.progress, on_epoch=keep)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_state_dict(state, path, force=True, now=True)
    return state


def snapshot(cfg: ExperimentConfig, model_string: str, data: Dataset, *, seed: int,
             epochs: int, at: int, recipe: str = DEFAULT_RECIPE, tag: str = ""
             ) -> dict[str, torch.Tensor]:
    """The weights after ``at`` of ``epochs`` epochs (trains with snapshots if needed)."""
    final = trained_state(cfg, model_string, data, seed=seed, epochs=epochs, snapshots=True,
                          recipe=recipe, tag=tag)
    if at >= epochs:
        return final
    stem = _checkpoint_stem(model_string, data, seed=seed, recipe=recipe, epochs=epochs,
                            tag=tag)
    path = cfg.out / "checkpoints" / f"{stem}-at{at}.pt"
    if not path.exists():
        raise PermalignError(f"snapshot {path} is missing; delete {cfg.out / 'checkpoints'} "
                             "and run again")
    return load_state_dict(path)


# ------------------------------------------------------------------ results
def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def write_results(cfg: ExperimentConfig, name: str, result: ExperimentResult) -> Path:
    """Write ``out/results.json``: the claim, the result's fields, and provenance."""
    record = {"experiment": name, "claim": REGISTRY[name].claim, "scale": cfg.scale,
              "quick": cfg.quick, "table": result.table, "setup": result.setup,
              "plots": result.plots, "verdict": result.verdict, "results": result.results,
              "provenance": provenance(seeds=result.seeds, device=cfg.device,
                                       started=cfg.started)}
    path = cfg.out / "results.json"
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False), force=cfg.force)
    return path


def table(columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A results table: rendered by ``permalign report``."""
    return {"columns": columns, "rows": rows}


# ------------------------------------------------------------------ verdicts
VERDICTS = ("reproduced", "partly", "not")


def verdict_from_checks(checks: list[tuple[str, bool]], cause: str = "") -> dict[str, str]:
    """A claim's verdict from measured checks: ``[(what was measured, whether it holds the
    claim)]``. All hold: reproduced; none: not; otherwise partly. ``cause`` (the measured
    reason) is added when some check fails."""
    if not checks:
        raise ValueError("a verdict needs at least one check")
    held = sum(ok for _, ok in checks)
    status = ("reproduced" if held == len(checks) else "not" if held == 0 else "partly")
    why = "; ".join(f"{'holds' if ok else 'fails'}: {text}" for text, ok in checks) + "."
    if cause and status != "reproduced":
        why += f" Measured cause: {cause}"
    return {"status": status, "why": why}


def prefixed(prefix: str, entries: dict[str, Any]) -> dict[str, Any]:
    """``{"prefix key": value}``: flat setup entries for one part of an experiment (the report
    renders setup as one line of ``key = value``)."""
    return {f"{prefix} {k}": v for k, v in entries.items()}
