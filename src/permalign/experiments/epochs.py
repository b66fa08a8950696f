"""Barrier after weight matching against training time (paper Figure 3)."""
from __future__ import annotations

from dataclasses import dataclass

from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align_and_compare
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data,
                     recipe_setup, snapshot, table, verdict_from_checks)
from .diagnosis import match_diagnostics

MODEL = "mlp:depth=3,width=512"


@dataclass(frozen=True)
class Sizes:
    epochs: int
    points: int
    eval_train: int | None  # training examples the curves are evaluated on (None: all)
    recipe: str = "quick-adam"


SIZES = {"quick": Sizes(epochs=3, points=9, eval_train=None),
         "full": Sizes(epochs=10, points=13, eval_train=10000)}


def epochs_verdict(rows: list[dict]) -> dict[str, str]:
    """Checks from per-epoch rows: the aligned test loss barrier is lower at the last epoch
    than at the first, and then far below the naive one."""
    first, last = rows[0], rows[-1]
    aligned = [r["weight"]["test_loss"] for r in rows]
    return verdict_from_checks(
        [(f"aligned barrier {aligned[0]:.4f} after epoch {first['epoch']} -> {aligned[-1]:.4f} "
          f"after epoch {last['epoch']}", aligned[-1] < aligned[0]),
         (f"final aligned barrier below a tenth of naive ({last['naive']['test_loss']:.4f})",
          aligned[-1] < 0.1 * last["naive"]["test_loss"])])


@experiment("epochs", "The aligned barrier falls as training goes on: early in training "
            "weight matching cannot connect the models, later it can (Fig. 3).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg)
    eval_data = data.subset(train=sizes.eval_train)
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    rows = []
    for epoch in range(1, sizes.epochs + 1):
        cfg.log(f"epoch {epoch}")
        a, b = (snapshot(cfg, MODEL, data, seed=s, epochs=sizes.epochs, at=epoch,
                         recipe=sizes.recipe) for s in (0, 1))
        comparison = align_and_compare(model, spec, a, b, data, ["weight"], eval_data=eval_data,
                                       points=sizes.points, device=cfg.device)
        naive = comparison.curves["naive"]
        rows.append({"epoch": epoch, "naive": naive.barriers(),
                     "weight": comparison.curves["weight"].barriers(),
                     "endpoint_test_acc": [naive.test_acc[0], naive.test_acc[-1]],
                     "diagnostics": match_diagnostics(spec, model, a, b,
                                                      comparison.matches["weight"], data,
                                                      device=cfg.device)})
    x = [r["epoch"] for r in rows]
    plot_panels([(f"{metric.replace('_', ' ')} barrier", "epoch", "barrier",
                  {kind: (x, [r[kind][metric] for r in rows], None)
                   for kind in ("naive", "weight")})
                 for metric in ("test_loss", "test_acc")],
                cfg.out / "epochs.png", title=f"{MODEL} on {data.name}: barrier vs epoch")
    return ExperimentResult(
        results={"epochs": rows}, plots=["epochs.png"],
        table=table(["epoch", "naive test loss barrier", "aligned test loss barrier",
                     "aligned test error barrier", "endpoint test acc (A)"],
                    [[r["epoch"], round(r["naive"]["test_loss"], 4),
                      round(r["weight"]["test_loss"], 4), round(r["weight"]["test_acc"], 4),
                      round(r["endpoint_test_acc"][0], 4)] for r in rows]),
        setup={"model": MODEL, "dataset": data.name,
               "eval_train_examples": len(eval_data.train_x),
               **recipe_setup(sizes.recipe, data, sizes.epochs, "the schedule of the other MLP "
                              "experiments, with a snapshot after every epoch")},
        verdict=epochs_verdict(rows),
        seeds={"models": [0, 1], "matching": 0})
