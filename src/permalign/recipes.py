"""Named training recipes: frozen presets that say where they come from.

``get_recipe("official-conv").config(seed=1, epochs=30)`` gives a :class:`TrainConfig`; any
field of the config can be overridden. Epochs left as ``None`` by a recipe fall back to the
per-data-set default of the quick recipe (:data:`permalign.train.DEFAULT_EPOCHS`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .data import canonical_name
from .errors import PermalignError
from .train import DEFAULT_EPOCHS, TrainConfig


@dataclass(frozen=True)
class Recipe:
    """A training preset: optimiser, learning rate and schedule, batch size, augmentation."""

    name: str
    source: str  # where the recipe comes from
    optimizer: str
    lr: float
    batch_size: int
    schedule: str  # cosine (linear warm-up, then cosine to zero) | constant
    epochs: int | None = None  # None: DEFAULT_EPOCHS of the data set
    warmup_fraction: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    augment: bool = False  # random crop + flip where the data allow

    def epochs_for(self, dataset: str) -> int:
        """The recipe's epoch count, or the data set's default when the recipe names none."""
        if self.epochs is not None:
            return self.epochs
        return DEFAULT_EPOCHS[canonical_name(dataset)]

    def config(self, *, dataset: str = "digits", **overrides: Any) -> TrainConfig:
        """A validated :class:`TrainConfig` from this recipe; ``None`` overrides are ignored."""
        valid = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise PermalignError(f"unknown training setting(s) {', '.join(unknown)}; use "
                                 f"{', '.join(sorted(valid))}")
        base = TrainConfig(epochs=self.epochs_for(dataset), batch_size=self.batch_size,
                           lr=self.lr, optimizer=self.optimizer, momentum=self.momentum,
                           nesterov=self.nesterov, weight_decay=self.weight_decay,
                           schedule=self.schedule, warmup_fraction=self.warmup_fraction,
                           augment=self.augment, recipe=self.name)
        cfg = replace(base, **{k: v for k, v in overrides.items() if v is not None})
        cfg.validate()
        return cfg

    def summary(self) -> str:
        """One line: the settings, without the source."""
        sched = ("constant rate" if self.schedule == "constant" else
                 f"warm-up {self.warmup_fraction:.0%} then cosine")
        opt = (f"SGD (momentum {self.momentum}{', Nesterov' if self.nesterov else ''})"
               if self.optimizer == "sgd" else "Adam")
        epochs = self.epochs if self.epochs is not None else "data-set default"
        return (f"{self.name}: {opt}, lr {self.lr:g} {sched}, weight decay "
                f"{self.weight_decay:g}, batch {self.batch_size}, {epochs} epochs, "
                f"augmentation {'crop + flip where allowed' if self.augment else 'none'}")

    def describe(self) -> str:
        """The settings and where they come from."""
        return f"{self.summary()}. Source: {self.source}"


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        name="official-mlp",
        source="Git Re-Basin official MNIST MLP training (samuela/git-re-basin, "
               "src/mnist_mlp_train.py, --optimizer adam --learning-rate 1e-3): optax.adam(1e-3) "
               "at a constant rate, batch 500, num_epochs = 100, no weight decay, no "
               "augmentation. 100 epochs is that script's count and the MergeMany inputs' "
               "(long training that leaves the inputs over-confident).",
        optimizer="adam", lr=1e-3, batch_size=500, schedule="constant", epochs=100),
    Recipe(
        name="official-conv",
        source="Git Re-Basin paper's conv-net recipe (appendix; official "
               "cifar10/cifar100_resnet20_train.py): SGD momentum 0.9 (not Nesterov), lr 0.1 "
               "with linear warm-up (5 of 250 epochs, kept here as 2 % of all steps so a "
               "shortened run keeps the schedule's shape) then cosine to zero, weight decay "
               "5e-4, batch 100, 250 epochs; random crop (pad 4 at 32 px, reflection padding) "
               "+ horizontal flip where the data allow (CIFAR and Fashion-MNIST flip, digits "
               "do not).",
        optimizer="sgd", lr=0.1, batch_size=100, schedule="cosine", epochs=250,
        warmup_fraction=0.02, momentum=0.9, nesterov=False, weight_decay=5e-4, augment=True),
    Recipe(
        name="quick-adam",
        source="permalign v0.1's default: Adam lr 1e-3, 5 % linear warm-up then cosine to "
               "zero, batch 128, no weight decay, no augmentation; epochs per data set "
               "(digits 30, MNIST/Fashion-MNIST 5, CIFAR 30). Fast, well annealed, but conv "
               "weights stay near their initialisation.",
        optimizer="adam", lr=1e-3, batch_size=128, schedule="cosine", epochs=None,
        warmup_fraction=0.05, nesterov=True),
)}

DEFAULT_RECIPE = "quick-adam"


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (one-line error naming the choices otherwise)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise PermalignError(f"unknown recipe {name!r}; use one of {', '.join(RECIPES)}"
                             ) from None


def recipe_defaults(setting: str) -> str:
    """``official-mlp 100, official-conv 250, ...``: one setting's value in every recipe."""
    def value(recipe: Recipe) -> str:
        v = getattr(recipe, setting)
        return "per data set" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
    return ", ".join(f"{r.name} {value(r)}" for r in RECIPES.values())


def recipe_config(name: str, *, dataset: str = "digits", **overrides: Any) -> TrainConfig:
    """Shorthand for ``get_recipe(name).config(dataset=dataset, **overrides)``."""
    return get_recipe(name).config(dataset=dataset, **overrides)
