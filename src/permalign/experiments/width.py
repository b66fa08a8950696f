"""Barrier against model width, naive and aligned (paper Figure 4)."""
from __future__ import annotations

from ..interpolation import interpolation_curve
from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align
from .common import (ExperimentConfig, experiment, experiment_data, table, trained_state)


def _barriers(cfg, model_string, data, eval_data, epochs, seed_a, seed_b, points):
    model, spec = resolve_model(model_string, data.input_shape, data.num_classes)
    a = trained_state(cfg, model_string, data, seed=seed_a, epochs=epochs)
    b = trained_state(cfg, model_string, data, seed=seed_b, epochs=epochs)
    naive = interpolation_curve(model, a, b, eval_data, points=points, device=cfg.device)
    aligned_b, _ = align("weight", spec, model, a, b, device=cfg.device)
    aligned = interpolation_curve(model, a, aligned_b, eval_data, points=points,
                                  device=cfg.device)
    return naive.barriers(), aligned.barriers()


@experiment("width", "The aligned barrier shrinks as width grows; thin models keep a real "
            "barrier even after alignment, wide ones reach ~0. Without permutation (naive) "
            "wide models still have a barrier (Fig. 4).")
def run(cfg: ExperimentConfig) -> dict:
    gpu = cfg.device.type == "cuda"
    data = experiment_data(cfg)
    if not cfg.quick and not gpu:
        data = data.subset(train=20000)  # CPU: keeps the sweep to minutes, not hours
    eval_data = data if cfg.quick else data.subset(train=10000)
    mlp_widths = [16, 64, 256] if cfg.quick else (
        [16, 32, 64, 128, 256, 512, 1024, 2048] if gpu else [16, 32, 64, 128, 256, 512, 1024])
    conv_widths = [1] if cfg.quick else ([1, 2, 4, 8, 16] if gpu else [1])
    conv_data = data.subset(train=1000 if cfg.quick else (None if gpu else 5000))
    epochs, conv_epochs = (1, 1) if cfg.quick else (5, 20 if gpu else 3)
    points = 9 if cfg.quick else 25
    results = {"mlp": [], "resnet20": []}
    for width in mlp_widths:
        cfg.log(f"MLP width {width}")
        naive, aligned = _barriers(cfg, f"mlp:depth=3,width={width}", data, eval_data, epochs,
                                   0, 1, points)
        results["mlp"].append({"width": width, "naive": naive, "weight": aligned})
    for width in conv_widths:
        cfg.log(f"ResNet-20 width x{width}")
        conv_eval = conv_data if gpu else conv_data.subset(train=2000, test=2000)
        naive, aligned = _barriers(cfg, f"resnet20:width={width},norm=ln", conv_data,
                                   conv_eval, conv_epochs, 0, 1, points if gpu else 11)
        results["resnet20"].append({"width": width, "naive": naive, "weight": aligned})
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
    return {"results": results, "plots": ["width.png"],
            "table": table(["model", "width", "naive test loss barrier",
                            "aligned test loss barrier", "naive test error barrier",
                            "aligned test error barrier"], rows),
            "setup": {"dataset": data.name, "mlp_train_examples": len(data.train_x),
                      "mlp_epochs": epochs, "conv_epochs": conv_epochs,
                      "conv_train_examples": len(conv_data.train_x),
                      "conv_eval": "all" if gpu else "2000 train + 2000 test examples",
                      "eval_train_examples": len(eval_data.train_x)},
            "_seeds": {"models": [0, 1], "matching": 0}}
