"""Barrier against model width, naive and aligned (paper Figure 4): MLPs and BN ResNet-20."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align_and_compare
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data,
                     prefixed, recipe_setup, table, trained_state,
                     verdict_from_checks)
from .convnets import ConvSizes, bn_width_sweep, conv_data, conv_setup
from .diagnosis import measured_cause

CONV_METHODS = ["weight", "activation"]
MLP_RECIPE = "quick-adam"
MLP_WHY = ("the MLP trend already holds with quick annealed Adam (and is cheap); the "
           "official MLP recipe's 100 epochs do not fit 7 widths on a CPU")
RESET = {"+ BN reset": {"bn_reset": True}}  # BN lines are compared after a BN reset


@dataclass(frozen=True)
class Sizes:
    mlp_widths: tuple[int, ...]
    mlp_train: int | None  # training examples for the MLPs (None: all)
    mlp_eval_train: int | None  # training examples the MLP curves are evaluated on
    mlp_epochs: int | None  # None: the recipe's count
    points: int
    conv: ConvSizes
    mlp_recipe: str = MLP_RECIPE


SIZES = {
    "quick": Sizes(mlp_widths=(16, 64, 256), mlp_train=None, mlp_eval_train=None, mlp_epochs=1,
                   points=9, conv=ConvSizes(widths=(1,), train=300, downsample=2, epochs=1,
                                            eval_train=200, eval_test=200, points=3)),
    "full": Sizes(mlp_widths=(16, 32, 64, 128, 256, 512, 1024), mlp_train=20000,
                  mlp_eval_train=10000, mlp_epochs=5, points=25,
                  conv=ConvSizes(widths=(1, 2, 4), train=4000, downsample=2, epochs=10,
                                 eval_train=1000, eval_test=2000, points=5)),
    "paper": Sizes(mlp_widths=(16, 32, 64, 128, 256, 512, 1024, 2048), mlp_train=None,
                   mlp_eval_train=10000, mlp_epochs=5, points=25,
                   conv=ConvSizes(widths=(1, 2, 4, 8, 16), train=None, downsample=1,
                                  epochs=None, eval_train=10000, eval_test=None, points=11)),
}


def width_verdict(mlp: list[dict[str, Any]], conv: list[dict[str, Any]], cause: str = ""
                  ) -> dict[str, str]:
    """Checks of the claim from rows ``{"width", "naive", "aligned"}`` (test loss barriers)."""
    checks = []
    for family, rows in (("MLP", mlp), ("BN ResNet-20 (+ BN reset)", conv)):
        if len(rows) < 2:
            continue
        first, last = rows[0], rows[-1]
        checks.append((f"{family} aligned barrier {first['aligned']:.3f} at width "
                       f"{first['width']} -> {last['aligned']:.3f} at {last['width']}",
                       last["aligned"] < first["aligned"]))
        below = [r["width"] for r in rows if r["aligned"] < r["naive"]]
        checks.append((f"{family} aligned < naive at {len(below)} of {len(rows)} widths",
                       len(below) == len(rows)))
        checks.append((f"{family} widest naive barrier {last['naive']:.3f} stays well above "
                       f"aligned {last['aligned']:.3f}", last["naive"] > 2 * last["aligned"]))
    return verdict_from_checks(checks, cause)


def _mlp_barriers(cfg, model_string, data, eval_data, sizes):
    model, spec = resolve_model(model_string, data.input_shape, data.num_classes)
    a, b = (trained_state(cfg, model_string, data, seed=s, recipe=sizes.mlp_recipe,
                          epochs=sizes.mlp_epochs) for s in (0, 1))
    comparison = align_and_compare(model, spec, a, b, data, ["weight"], eval_data=eval_data,
                                   points=sizes.points, device=cfg.device)
    return comparison.barriers()


@experiment("width", "The aligned barrier shrinks as width grows; thin models keep a real "
            "barrier even after alignment, wide ones reach ~0. Without permutation (naive) "
            "wide models still have a barrier (Fig. 4).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    everything = experiment_data(cfg)
    data = everything.subset(train=sizes.mlp_train)
    eval_data = data.subset(train=sizes.mlp_eval_train)
    results: dict[str, list[dict[str, Any]]] = {"mlp": [], "resnet20_bn": []}
    for width in sizes.mlp_widths:
        cfg.log(f"MLP width {width}")
        b = _mlp_barriers(cfg, f"mlp:depth=3,width={width}", data, eval_data, sizes)
        results["mlp"].append({"width": width, "naive": b["naive"], "weight": b["weight"]})
    conv_train, conv_eval = conv_data(cfg, sizes.conv, everything)
    sweep = bn_width_sweep(cfg, sizes.conv, conv_train, conv_eval, CONV_METHODS, RESET,
                           naive_variants=list(RESET))
    for width, pair in sweep.items():
        b = pair.comparison.barriers()
        results["resnet20_bn"].append({"width": width, "naive": b["naive + BN reset"],
                                       **{m: b[f"{m} + BN reset"] for m in CONV_METHODS}})
    mlp_rows = [{"width": r["width"], "naive": r["naive"]["test_loss"],
                 "aligned": r["weight"]["test_loss"]} for r in results["mlp"]]
    conv_rows = [{"width": r["width"], "naive": r["naive"]["test_loss"],
                  "aligned": min(r[m]["test_loss"] for m in CONV_METHODS)}
                 for r in results["resnet20_bn"]]
    panels = [("MLP: test loss barrier", "width", "barrier",
               {k: ([r["width"] for r in results["mlp"]],
                    [r[k]["test_loss"] for r in results["mlp"]], None)
                for k in ("naive", "weight")}),
              ("BN ResNet-20 (+ BN reset): test loss barrier", "width multiplier", "barrier",
               {k: ([r["width"] for r in results["resnet20_bn"]],
                    [r[k]["test_loss"] for r in results["resnet20_bn"]], None)
                for k in ("naive", *CONV_METHODS)})]
    plot_panels(panels, cfg.out / "width.png", logx=True,
                title=f"Barrier vs width on {data.name}")
    rows = ([["mlp", r["width"], "weight", round(r["naive"]["test_loss"], 4),
              round(r["weight"]["test_loss"], 4), round(r["naive"]["test_acc"], 4),
              round(r["weight"]["test_acc"], 4)] for r in results["mlp"]]
            + [["resnet20 bn (+ BN reset)", f"x{r['width']}", m,
                round(r["naive"]["test_loss"], 4), round(r[m]["test_loss"], 4),
                round(r["naive"]["test_acc"], 4), round(r[m]["test_acc"], 4)]
               for r in results["resnet20_bn"] for m in CONV_METHODS])
    results["diagnostics"] = {f"x{w}": p.diagnostics for w, p in sweep.items()}
    return ExperimentResult(
        results=results, plots=["width.png"],
        table=table(["model", "width", "matching", "naive test loss barrier",
                     "aligned test loss barrier", "naive test error barrier",
                     "aligned test error barrier"], rows),
        setup={**prefixed("MLP", {"dataset": data.name, "train_examples": len(data.train_x),
                                  "eval_train_examples": len(eval_data.train_x),
                                  **recipe_setup(sizes.mlp_recipe, data, sizes.mlp_epochs,
                                                 MLP_WHY)}),
               **prefixed("BN ResNet-20", conv_setup(conv_train, conv_eval, sizes.conv))},
        verdict=width_verdict(mlp_rows, conv_rows, measured_cause(sweep)),
        seeds={"models": [0, 1], "matching": 0})
