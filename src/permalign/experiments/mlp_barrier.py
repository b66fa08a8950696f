"""MLP barriers for naive, weight, activation and STE matching (paper Figure 2)."""
from __future__ import annotations

from dataclasses import dataclass

from ..models import resolve_model
from ..plot import curve_panels, plot_panels
from ..workflow import align_and_compare
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data, mean_std,
                     table, trained_state)

MODEL = "mlp:depth=3,width=512"
METHODS = ["weight", "activation", "ste"]


@dataclass(frozen=True)
class Sizes:
    pairs: int  # pairs of independently trained models
    epochs: int
    ste_epochs: int


SIZES = {"quick": Sizes(pairs=1, epochs=1, ste_epochs=1),
         "full": Sizes(pairs=3, epochs=5, ste_epochs=3)}


@experiment("mlp-barrier", "Naive interpolation of two MLPs has a large loss barrier; after "
            "weight, activation or STE matching it is near zero, STE lowest (Fig. 2).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg)
    pairs = cfg.seeds or sizes.pairs
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    options = {"ste": {"epochs": sizes.ste_epochs, "progress": cfg.progress}}
    barriers: dict[str, list[dict]] = {}
    first_curves = None
    for pair in range(pairs):
        cfg.log(f"pair {pair + 1}/{pairs}")
        a = trained_state(cfg, MODEL, data, seed=2 * pair, epochs=sizes.epochs)
        b = trained_state(cfg, MODEL, data, seed=2 * pair + 1, epochs=sizes.epochs)
        comparison = align_and_compare(model, spec, a, b, data, METHODS, seed=pair,
                                       device=cfg.device, method_options=options,
                                       progress=cfg.progress)
        first_curves = first_curves or comparison.curves
        for name, curve in comparison.curves.items():
            barriers.setdefault(name, []).append(curve.barriers())
    plot_panels(curve_panels(first_curves), cfg.out / "curves.png",
                title=f"{MODEL} on {data.name}: interpolation from A to B")
    summary = {name: {metric: mean_std([b[metric] for b in rows]) for metric in rows[0]}
               for name, rows in barriers.items()}
    rows = [[name] + [f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in
                      ("train_loss", "test_loss", "train_acc", "test_acc")]
            for name, s in summary.items()]
    return ExperimentResult(
        results={"summary": summary,
                 "curves": {name: c.to_json()["curve"] for name, c in first_curves.items()}},
        table=table(["method", "train loss barrier", "test loss barrier",
                     "train error barrier", "test error barrier"], rows),
        plots=["curves.png"],
        setup={"model": MODEL, "dataset": data.name, "train_examples": len(data.train_x),
               "epochs": sizes.epochs, "pairs": pairs},
        seeds={"models": list(range(2 * pairs)), "matching": list(range(pairs))})
