"""BatchNorm models: the aligned midpoint without BN reset, with BN reset, and with REPAIR."""
from __future__ import annotations

from dataclasses import dataclass

from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align_and_compare
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data, table,
                     trained_state)

MODEL = "resnet20:width=1,norm=bn"
VARIANTS = {"+ BN reset": {"bn_reset": True}, "no BN reset": {"bn_reset": False},
            "+ REPAIR": {"bn_reset": True, "repair": True}}


@dataclass(frozen=True)
class Sizes:
    train: int  # training examples
    eval_train: int  # training examples the curves are evaluated on
    epochs: int
    points: int


SIZES = {"quick": Sizes(train=1000, eval_train=1000, epochs=1, points=5),
         "full": Sizes(train=10000, eval_train=5000, epochs=5, points=11)}


@experiment("bn-repair", "Interpolated BatchNorm models collapse (variance collapse) unless "
            "their statistics are re-estimated; REPAIR (Jordan et al.) recovers more than a BN "
            "reset (paper §4 and REPAIR paper).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg)
    train = data.subset(train=sizes.train)
    eval_data = train.subset(train=sizes.eval_train)
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    a = trained_state(cfg, MODEL, train, seed=0, epochs=sizes.epochs)
    b = trained_state(cfg, MODEL, train, seed=1, epochs=sizes.epochs)
    comparison = align_and_compare(model, spec, a, b, train, ["weight"], eval_data=eval_data,
                                   points=sizes.points, device=cfg.device, variants=VARIANTS,
                                   naive_variants=["+ BN reset"])
    curves = comparison.curves
    mid = sizes.points // 2
    rows = [[name, round(c.test_acc[0], 4), round(c.test_acc[mid], 4),
             round(c.test_loss[mid], 4), round(c.barriers()["test_loss"], 4)]
            for name, c in curves.items()]
    plot_panels([(label, "λ", label, {n: (c.lambdas, getattr(c, metric), None)
                                      for n, c in curves.items()})
                 for metric, label in (("test_loss", "test loss"), ("test_acc", "test accuracy"))],
                cfg.out / "bn_repair.png", title=f"{MODEL} on {data.name}")
    return ExperimentResult(
        results={"curves": {n: c.to_json()["curve"] for n, c in curves.items()}},
        table=table(["variant", "endpoint A test acc", "midpoint test acc",
                     "midpoint test loss", "test loss barrier"], rows),
        plots=["bn_repair.png"],
        setup={"model": MODEL, "dataset": data.name, "train_examples": len(train.train_x),
               "epochs": sizes.epochs, "eval_train_examples": len(eval_data.train_x)},
        seeds={"models": [0, 1], "matching": 0})
