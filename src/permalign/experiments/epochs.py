"""Barrier after weight matching against training time (paper Figure 3)."""
from __future__ import annotations

from dataclasses import dataclass

from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align_and_compare
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data, snapshot,
                     table)

MODEL = "mlp:depth=3,width=512"


@dataclass(frozen=True)
class Sizes:
    epochs: int
    points: int
    eval_train: int | None  # training examples the curves are evaluated on (None: all)


SIZES = {"quick": Sizes(epochs=3, points=9, eval_train=None),
         "full": Sizes(epochs=10, points=13, eval_train=10000)}


@experiment("epochs", "The aligned barrier falls as training goes on: early in training "
            "weight matching cannot connect the models, later it can (Fig. 3).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg)
    eval_data = data.subset(train=sizes.eval_train)
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    rows = []
    for epoch in range(1, sizes.epochs + 1):
        cfg.log(f"epoch {epoch}")
        a = snapshot(cfg, MODEL, data, seed=0, epochs=sizes.epochs, at=epoch)
        b = snapshot(cfg, MODEL, data, seed=1, epochs=sizes.epochs, at=epoch)
        comparison = align_and_compare(model, spec, a, b, data, ["weight"], eval_data=eval_data,
                                       points=sizes.points, device=cfg.device)
        naive = comparison.curves["naive"]
        rows.append({"epoch": epoch, "naive": naive.barriers(),
                     "weight": comparison.curves["weight"].barriers(),
                     "endpoint_test_acc": [naive.test_acc[0], naive.test_acc[-1]]})
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
        setup={"model": MODEL, "dataset": data.name, "epochs": sizes.epochs,
               "eval_train_examples": len(eval_data.train_x)},
        seeds={"models": [0, 1], "matching": 0})
