"""MLP barriers for naive, weight, activation and STE matching (paper Figure 2)."""
from __future__ import annotations

from dataclasses import dataclass

from ..models import resolve_model
from ..plot import curve_panels, plot_panels
from ..workflow import align_and_compare
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data, mean_std,
                     recipe_setup, table, trained_state, verdict_from_checks)
from .diagnosis import comparison_diagnostics, summary_line

MODEL = "mlp:depth=3,width=512"
METHODS = ["weight", "activation", "ste"]
WHY = ("annealed Adam trains these MLPs well in 5 epochs on a CPU; MLP weights move far from "
       "their initialisation with it (the distance to init is in the diagnostics)")


@dataclass(frozen=True)
class Sizes:
    pairs: int  # pairs of independently trained models
    epochs: int
    ste_epochs: int
    recipe: str = "quick-adam"


SIZES = {"quick": Sizes(pairs=1, epochs=1, ste_epochs=1),
         "full": Sizes(pairs=3, epochs=5, ste_epochs=3)}


def barrier_verdict(barriers: dict[str, float], cause: str = "") -> dict[str, str]:
    """Checks from mean test loss barriers ``{"naive": b, "weight": b, ...}``: every method
    below a tenth of the naive barrier, STE the lowest."""
    checks = [(f"{m} barrier {barriers[m]:.4f} vs naive {barriers['naive']:.4f}",
               barriers[m] < 0.1 * barriers["naive"]) for m in METHODS]
    lowest = min(METHODS, key=barriers.__getitem__)
    checks.append((f"lowest aligned barrier is {lowest}", lowest == "ste"))
    return verdict_from_checks(checks, cause)


@experiment("mlp-barrier", "Naive interpolation of two MLPs has a large loss barrier; after "
            "weight, activation or STE matching it is near zero, STE lowest (Fig. 2).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg)
    pairs = cfg.seeds or sizes.pairs
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    options = {"ste": {"epochs": sizes.ste_epochs, "progress": cfg.progress}}
    barriers: dict[str, list[dict]] = {}
    first_curves = None
    diagnostics: list[dict] = []
    for pair in range(pairs):
        cfg.log(f"pair {pair + 1}/{pairs}")
        seeds = {"A": 2 * pair, "B": 2 * pair + 1}
        a, b = (trained_state(cfg, MODEL, data, seed=s, recipe=sizes.recipe, epochs=sizes.epochs)
                for s in seeds.values())
        comparison = align_and_compare(model, spec, a, b, data, METHODS, seed=pair,
                                       device=cfg.device, method_options=options,
                                       progress=cfg.progress)
        diagnostics.append(comparison_diagnostics(spec, model, a, b, comparison.matches,
                                                  data=data, model_string=MODEL, seeds=seeds,
                                                  device=cfg.device))
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
        results={"summary": summary, "diagnostics": diagnostics,
                 "curves": {name: c.to_json()["curve"] for name, c in first_curves.items()}},
        table=table(["method", "train loss barrier", "test loss barrier",
                     "train error barrier", "test error barrier"], rows),
        plots=["curves.png"],
        setup={"model": MODEL, "dataset": data.name, "train_examples": len(data.train_x),
               "pairs": pairs, **recipe_setup(sizes.recipe, data, sizes.epochs, WHY)},
        verdict=barrier_verdict({n: s["test_loss"]["mean"] for n, s in summary.items()},
                                summary_line(diagnostics[0])),
        seeds={"models": list(range(2 * pairs)), "matching": list(range(pairs))})
