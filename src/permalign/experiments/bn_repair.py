"""BatchNorm models: the aligned midpoint without BN reset, with BN reset, and with REPAIR."""
from __future__ import annotations

from ..interpolation import interpolation_curve
from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align
from .common import (ExperimentConfig, experiment, experiment_data, table, trained_state)

MODEL = "resnet20:width=1,norm=bn"


@experiment("bn-repair", "Interpolated BatchNorm models collapse (variance collapse) unless "
            "their statistics are re-estimated; REPAIR (Jordan et al.) recovers more than a BN "
            "reset (paper §4 and REPAIR paper).")
def run(cfg: ExperimentConfig) -> dict:
    data = experiment_data(cfg)
    train = data.subset(train=1000 if cfg.quick else 10000)
    eval_data = train.subset(train=min(len(train.train_x), 5000))
    epochs = 1 if cfg.quick else 5
    points = 5 if cfg.quick else 11
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    a = trained_state(cfg, MODEL, train, seed=0, epochs=epochs)
    b = trained_state(cfg, MODEL, train, seed=1, epochs=epochs)
    aligned_b, _ = align("weight", spec, model, a, b, device=cfg.device)
    variants = {
        "naive + BN reset": dict(state_b=b, bn_reset=True),
        "aligned, no BN reset": dict(state_b=aligned_b, bn_reset=False),
        "aligned + BN reset": dict(state_b=aligned_b, bn_reset=True),
        "aligned + REPAIR": dict(state_b=aligned_b, bn_reset=True, repair=True),
    }
    curves = {}
    for name, options in variants.items():
        cfg.log(name)
        state_b = options.pop("state_b")
        curves[name] = interpolation_curve(model, a, state_b, eval_data, points=points,
                                           device=cfg.device, spec=spec, **options)
    mid = points // 2
    rows = [[name, round(c.test_acc[0], 4), round(c.test_acc[mid], 4),
             round(c.test_loss[mid], 4), round(c.barriers()["test_loss"], 4)]
            for name, c in curves.items()]
    plot_panels([(label, "λ", label, {n: (c.lambdas, getattr(c, metric), None)
                                      for n, c in curves.items()})
                 for metric, label in (("test_loss", "test loss"), ("test_acc", "test accuracy"))],
                cfg.out / "bn_repair.png", title=f"{MODEL} on {data.name}")
    return {"curves": {n: c.to_json()["curve"] for n, c in curves.items()},
            "table": table(["variant", "endpoint A test acc", "midpoint test acc",
                            "midpoint test loss", "test loss barrier"], rows),
            "plots": ["bn_repair.png"],
            "setup": {"model": MODEL, "dataset": data.name, "train_examples": len(train.train_x),
                      "epochs": epochs, "eval_train_examples": len(eval_data.train_x)},
            "_seeds": {"models": [0, 1], "matching": 0}}
