"""Barrier against model width, naive and aligned (paper Figure 4)."""
from __future__ import annotations

from dataclasses import dataclass

from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align_and_compare
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data, table,
                     trained_state)


@dataclass(frozen=True)
class Sizes:
    mlp_widths: tuple[int, ...]
    mlp_train: int | None  # training examples for the MLPs (None: all)
    mlp_eval_train: int | None  # training examples the MLP curves are evaluated on
    mlp_epochs: int
    conv_widths: tuple[int, ...]
    conv_train: int | None
    conv_eval: int | None  # train and test examples the ResNet curves are evaluated on
    conv_epochs: int
    points: int
    conv_points: int


SIZES = {
    "quick": Sizes(mlp_widths=(16, 64, 256), mlp_train=None, mlp_eval_train=None, mlp_epochs=1,
                   conv_widths=(1,), conv_train=1000, conv_eval=2000, conv_epochs=1, points=9,
                   conv_points=11),
    "full": Sizes(mlp_widths=(16, 32, 64, 128, 256, 512, 1024), mlp_train=20000,
                  mlp_eval_train=10000, mlp_epochs=5, conv_widths=(1,), conv_train=5000,
                  conv_eval=2000, conv_epochs=3, points=25, conv_points=11),
    "paper": Sizes(mlp_widths=(16, 32, 64, 128, 256, 512, 1024, 2048), mlp_train=None,
                   mlp_eval_train=10000, mlp_epochs=5, conv_widths=(1, 2, 4, 8, 16),
                   conv_train=None, conv_eval=None, conv_epochs=20, points=25, conv_points=25),
}


def _barriers(cfg, model_string, data, eval_data, epochs, points):
    model, spec = resolve_model(model_string, data.input_shape, data.num_classes)
    a = trained_state(cfg, model_string, data, seed=0, epochs=epochs)
    b = trained_state(cfg, model_string, data, seed=1, epochs=epochs)
    comparison = align_and_compare(model, spec, a, b, data, ["weight"], eval_data=eval_data,
                                   points=points, device=cfg.device)
    return comparison.barriers()


@experiment("width", "The aligned barrier shrinks as width grows; thin models keep a real "
            "barrier even after alignment, wide ones reach ~0. Without permutation (naive) "
            "wide models still have a barrier (Fig. 4).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg).subset(train=sizes.mlp_train)
    eval_data = data.subset(train=sizes.mlp_eval_train)
    conv_data = data.subset(train=sizes.conv_train)
    conv_eval = conv_data.subset(train=sizes.conv_eval, test=sizes.conv_eval)
    results = {"mlp": [], "resnet20": []}
    for width in sizes.mlp_widths:
        cfg.log(f"MLP width {width}")
        b = _barriers(cfg, f"mlp:depth=3,width={width}", data, eval_data, sizes.mlp_epochs,
                      sizes.points)
        results["mlp"].append({"width": width, "naive": b["naive"], "weight": b["weight"]})
    for width in sizes.conv_widths:
        cfg.log(f"ResNet-20 width x{width}")
        b = _barriers(cfg, f"resnet20:width={width},norm=ln", conv_data, conv_eval,
                      sizes.conv_epochs, sizes.conv_points)
        results["resnet20"].append({"width": width, "naive": b["naive"], "weight": b["weight"]})
    panels = []
    for family, rows in results.items():
        widths = [r["width"] for r in rows]
        panels.append((f"{family}: test loss barrier", "width", "barrier",
                       {kind: (widths, [r[kind]["test_loss"] for r in rows], None)
                        for kind in ("naive", "weight")}))
    plot_panels(panels, cfg.out / "width.png", logx=True,
                title=f"Barrier vs width on {data.name}")
    rows = [[family, r["width"], round(r["naive"]["test_loss"], 4),
             round(r["weight"]["test_loss"], 4), round(r["naive"]["test_acc"], 4),
             round(r["weight"]["test_acc"], 4)]
            for family, rs in results.items() for r in rs]
    return ExperimentResult(
        results=results, plots=["width.png"],
        table=table(["model", "width", "naive test loss barrier", "aligned test loss barrier",
                     "naive test error barrier", "aligned test error barrier"], rows),
        setup={"dataset": data.name, "mlp_train_examples": len(data.train_x),
               "mlp_epochs": sizes.mlp_epochs, "conv_epochs": sizes.conv_epochs,
               "conv_train_examples": len(conv_data.train_x),
               "conv_eval_examples": [len(conv_eval.train_x), len(conv_eval.test_x)],
               "eval_train_examples": len(eval_data.train_x)},
        seeds={"models": [0, 1], "matching": 0})
