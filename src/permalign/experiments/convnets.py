"""Conv nets on the conv-net recipe, shared by bn-repair, width and conv-barrier.

CPU scales train ResNet-20 on a subset of Fashion-MNIST average-pooled to 14x14 (four times
fewer pixels: what makes x4 widths fit in minutes on one core); the paper scale uses the full
28x28 data and the paper's widths, for a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data import Dataset
from ..models import resolve_model
from ..workflow import Comparison, align_and_compare
from .common import ExperimentConfig, experiment_data, recipe_setup, trained_state
from .diagnosis import comparison_diagnostics

CONV_RECIPE = "official-conv"
CONV_WHY = ("the paper's conv-net recipe (SGD + momentum, weight decay, warm-up + cosine, crop "
            "+ flip): it moves the weights far from their initialisation, which weight matching "
            "needs; brief Adam runs leave conv weights at cosine ~0.99 to init")

# interpolation variants of a BatchNorm line: as is, statistics re-estimated, REPAIR
BN_VARIANTS = {"": {"bn_reset": False}, "+ BN reset": {"bn_reset": True},
               "+ REPAIR": {"bn_reset": True, "repair": True}}


@dataclass(frozen=True)
class ConvSizes:
    """Data and training of the conv nets."""

    widths: tuple[int, ...]
    train: int | None  # training examples (None: all)
    downsample: int  # average-pool factor of the images (1: full resolution)
    epochs: int | None  # None: the recipe's own count
    eval_train: int  # training examples the curves are evaluated on
    eval_test: int | None  # test examples the curves are evaluated on (None: all)
    points: int
    recipe: str = CONV_RECIPE
    lr: float | None = None  # None: the recipe's learning rate
    lr_why: str = ""  # the measured reason for another learning rate


def conv_data(cfg: ExperimentConfig, sizes: ConvSizes, base: Dataset | None = None
              ) -> tuple[Dataset, Dataset]:
    """(training data, evaluation data) from ``base`` (default: the experiment's data set):
    downsampled first, then the seeded subsets."""
    base = base if base is not None else experiment_data(cfg)
    data = base.downsampled(sizes.downsample).subset(train=sizes.train)
    return data, data.subset(train=sizes.eval_train, test=sizes.eval_test)


def conv_setup(data: Dataset, eval_data: Dataset, sizes: ConvSizes) -> dict[str, Any]:
    """The setup text every conv experiment reports."""
    shape = "x".join(str(s) for s in data.input_shape)
    return {"dataset": f"{data.name}, images {shape}"
                       + (f" (average-pooled {sizes.downsample}x to fit a CPU)"
                          if sizes.downsample > 1 else ""),
            "train_examples": len(data.train_x),
            "eval_examples": [len(eval_data.train_x), len(eval_data.test_x)],
            "points": sizes.points, **recipe_setup(sizes.recipe, data, sizes.epochs, CONV_WHY,
                                                   lr=sizes.lr, lr_why=sizes.lr_why)}


@dataclass
class PairComparison:
    """One pair of trained models compared along naive and aligned lines."""

    model: str
    comparison: Comparison
    diagnostics: dict[str, Any]


def compare_pair(cfg: ExperimentConfig, model_string: str, data: Dataset, eval_data: Dataset,
                 sizes: ConvSizes, methods: list[str], *, seeds: tuple[int, int] = (0, 1),
                 variants: dict[str, dict[str, Any]] | None = None,
                 naive_variants: list[str] | None = None,
                 method_options: dict[str, dict[str, Any]] | None = None) -> PairComparison:
    """Train (cached) two models on the recipe, align B to A with each method, measure the
    curves and the diagnostics."""
    model, spec = resolve_model(model_string, data.input_shape, data.num_classes)
    a, b = (trained_state(cfg, model_string, data, seed=s, recipe=sizes.recipe,
                          epochs=sizes.epochs, lr=sizes.lr) for s in seeds)
    comparison = align_and_compare(model, spec, a, b, data, methods, eval_data=eval_data,
                                   points=sizes.points, device=cfg.device, variants=variants,
                                   naive_variants=naive_variants, method_options=method_options,
                                   progress=cfg.progress)
    diag = comparison_diagnostics(spec, model, a, b, comparison.matches, data=data,
                                  model_string=model_string,
                                  seeds={"A": seeds[0], "B": seeds[1]}, device=cfg.device)
    return PairComparison(model_string, comparison, diag)


def bn_resnet(width: int) -> str:
    return f"resnet20:width={width},norm=bn"


def bn_width_sweep(cfg: ExperimentConfig, sizes: ConvSizes, data: Dataset, eval_data: Dataset,
                   methods: list[str], variants: dict[str, dict[str, Any]],
                   naive_variants: list[str]) -> dict[int, PairComparison]:
    """BatchNorm ResNet-20 at each width of ``sizes`` on ``data`` (from :func:`conv_data`):
    one :class:`PairComparison` each."""
    out = {}
    for width in sizes.widths:
        cfg.log(f"ResNet-20 (BatchNorm) width x{width}")
        out[width] = compare_pair(cfg, bn_resnet(width), data, eval_data, sizes, methods,
                                  variants=variants, naive_variants=naive_variants)
    return out
