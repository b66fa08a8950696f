"""MLP barriers for naive, weight, activation and STE matching (paper Figure 2)."""
from __future__ import annotations

from ..models import resolve_model
from ..plot import curve_panels, plot_panels
from ..workflow import compare_alignments
from .common import (ExperimentConfig, experiment, experiment_data, mean_std, table,
                     trained_state)

MODEL = "mlp:depth=3,width=512"
METHODS = ["weight", "activation", "ste"]


@experiment("mlp-barrier", "Naive interpolation of two MLPs has a large loss barrier; after "
            "weight, activation or STE matching it is near zero, STE lowest (Fig. 2).")
def run(cfg: ExperimentConfig) -> dict:
    data = experiment_data(cfg)
    pairs = cfg.seeds or (1 if cfg.quick else 3)
    epochs = 1 if cfg.quick else 5
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    options = {"ste": {"epochs": 1 if cfg.quick else 3, "progress": cfg.progress}}
    barriers: dict[str, list[dict]] = {}
    first_curves = None
    for pair in range(pairs):
        cfg.log(f"pair {pair + 1}/{pairs}")
        a = trained_state(cfg, MODEL, data, seed=2 * pair, epochs=epochs)
        b = trained_state(cfg, MODEL, data, seed=2 * pair + 1, epochs=epochs)
        curves, _ = compare_alignments(model, spec, a, b, data, METHODS, seed=pair,
                                       device=cfg.device, method_options=options,
                                       progress=cfg.progress)
        first_curves = first_curves or curves
        for name, curve in curves.items():
            barriers.setdefault(name, []).append(curve.barriers())
    plot_panels(curve_panels(first_curves), cfg.out / "curves.png",
                title=f"{MODEL} on {data.name}: interpolation from A to B")
    summary = {name: {metric: mean_std([b[metric] for b in rows]) for metric in rows[0]}
               for name, rows in barriers.items()}
    rows = [[name] + [f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in
                      ("train_loss", "test_loss", "train_acc", "test_acc")]
            for name, s in summary.items()]
    return {
        "summary": summary,
        "curves": {name: c.to_json()["curve"] for name, c in first_curves.items()},
        "table": table(["method", "train loss barrier", "test loss barrier",
                        "train error barrier", "test error barrier"], rows),
        "plots": ["curves.png"],
        "setup": {"model": MODEL, "dataset": data.name, "train_examples": len(data.train_x),
                  "epochs": epochs, "pairs": pairs},
        "_seeds": {"models": list(range(2 * pairs)), "matching": list(range(pairs))},
    }
