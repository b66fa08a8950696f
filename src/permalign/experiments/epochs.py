"""Barrier after weight matching against training time (paper Figure 3)."""
from __future__ import annotations

from ..interpolation import interpolation_curve
from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align
from .common import (ExperimentConfig, experiment, experiment_data, snapshot, table)

MODEL = "mlp:depth=3,width=512"


@experiment("epochs", "The aligned barrier falls as training goes on: early in training "
            "weight matching cannot connect the models, later it can (Fig. 3).")
def run(cfg: ExperimentConfig) -> dict:
    data = experiment_data(cfg)
    eval_data = data if cfg.quick else data.subset(train=10000)
    epochs = 3 if cfg.quick else 10
    points = 9 if cfg.quick else 13
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    rows = []
    for epoch in range(1, epochs + 1):
        cfg.log(f"epoch {epoch}")
        a = snapshot(cfg, MODEL, data, seed=0, epochs=epochs, at=epoch)
        b = snapshot(cfg, MODEL, data, seed=1, epochs=epochs, at=epoch)
        naive = interpolation_curve(model, a, b, eval_data, points=points, device=cfg.device)
        aligned_b, _ = align("weight", spec, model, a, b, device=cfg.device)
        aligned = interpolation_curve(model, a, aligned_b, eval_data, points=points,
                                      device=cfg.device)
        rows.append({"epoch": epoch, "naive": naive.barriers(), "weight": aligned.barriers(),
                     "endpoint_test_acc": [naive.test_acc[0], naive.test_acc[-1]]})
    x = [r["epoch"] for r in rows]
    plot_panels([(f"{metric.replace('_', ' ')} barrier", "epoch", "barrier",
                  {kind: (x, [r[kind][metric] for r in rows], None)
                   for kind in ("naive", "weight")})
                 for metric in ("test_loss", "test_acc")],
                cfg.out / "epochs.png", title=f"{MODEL} on {data.name}: barrier vs epoch")
    return {"results": rows, "plots": ["epochs.png"],
            "table": table(["epoch", "naive test loss barrier", "aligned test loss barrier",
                            "aligned test error barrier", "endpoint test acc (A)"],
                           [[r["epoch"], round(r["naive"]["test_loss"], 4),
                             round(r["weight"]["test_loss"], 4),
                             round(r["weight"]["test_acc"], 4),
                             round(r["endpoint_test_acc"][0], 4)] for r in rows]),
            "setup": {"model": MODEL, "dataset": data.name, "epochs": epochs,
                      "eval_train_examples": len(eval_data.train_x)},
            "_seeds": {"models": [0, 1], "matching": 0}}
