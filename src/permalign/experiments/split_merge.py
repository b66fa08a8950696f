"""Merging two models trained on biased halves of the labels (paper §5.4)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from ..evaluate import evaluate, evaluate_ensemble
from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align_and_compare
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data, table,
                     trained_state)

MODEL = "mlp:depth=3,width=512"


@dataclass(frozen=True)
class Sizes:
    epochs: int
    points: int


SIZES = {"quick": Sizes(epochs=1, points=11), "full": Sizes(epochs=5, points=25)}


@experiment("split-merge", "Models trained on biased label splits (20%/80%) merge, after "
            "weight matching, into a model with lower test loss over all classes than either "
            "input (not higher accuracy) (§5.4).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg)
    half_a, half_b = data.biased_halves(0.2, seed=0)
    points = sizes.points
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    a = trained_state(cfg, MODEL, half_a, seed=0, epochs=sizes.epochs, tag="-splitA")
    b = trained_state(cfg, MODEL, half_b, seed=1, epochs=sizes.epochs, tag="-splitB")
    full = trained_state(cfg, MODEL, data, seed=2, epochs=sizes.epochs)
    comparison = align_and_compare(model, spec, a, b, data, ["weight"], points=points,
                                   device=cfg.device)
    naive, merged = comparison.curves["naive"], comparison.curves["weight"]
    test_x, test_y = data.test_x.to(cfg.device), data.test_y.to(cfg.device)
    model_a, model_b = copy.deepcopy(model).to(cfg.device), copy.deepcopy(model).to(cfg.device)
    model_a.load_state_dict(a)
    model_b.load_state_dict(b)
    ensemble = evaluate_ensemble([model_a, model_b], test_x, test_y)
    model_a.load_state_dict(full)
    all_data = evaluate(model_a, test_x, test_y)
    best = min(range(points), key=lambda i: merged.test_loss[i])
    mid = points // 2
    rows = [["model A (20% of 0-4, 80% of 5-9)", merged.test_loss[0], merged.test_acc[0]],
            ["model B (mirror split)", merged.test_loss[-1], merged.test_acc[-1]],
            ["naive midpoint", naive.test_loss[mid], naive.test_acc[mid]],
            ["weight-matched midpoint (λ=0.5)", merged.test_loss[mid], merged.test_acc[mid]],
            [f"weight-matched best λ={merged.lambdas[best]:.2f}", merged.test_loss[best],
             merged.test_acc[best]],
            ["output ensemble of A and B", ensemble[0], ensemble[1]],
            ["model trained on all data", all_data[0], all_data[1]]]
    panels = [(label, "λ", label, {"naive": (naive.lambdas, getattr(naive, metric), None),
                                   "weight-matched": (merged.lambdas, getattr(merged, metric),
                                                      None)})
              for metric, label in (("test_loss", "test loss"), ("test_acc", "test accuracy"))]
    plot_panels(panels, cfg.out / "split_merge.png",
                title=f"Biased-split merge, {MODEL} on {data.name}")
    beats = merged.test_loss[mid] < min(merged.test_loss[0], merged.test_loss[-1])
    return ExperimentResult(
        results={"curves": {"naive": naive.to_json()["curve"],
                            "weight": merged.to_json()["curve"]},
                 "summary": {"midpoint_beats_both_inputs_on_test_loss": beats,
                             "ensemble": {"test_loss": ensemble[0], "test_acc": ensemble[1]},
                             "all_data": {"test_loss": all_data[0], "test_acc": all_data[1]}}},
        table=table(["model", "test loss (all classes)", "test accuracy"],
                    [[r[0], round(r[1], 4), round(r[2], 4)] for r in rows]),
        plots=["split_merge.png"],
        setup={"model": MODEL, "dataset": data.name, "epochs": sizes.epochs,
               "train_examples": [len(half_a.train_x), len(half_b.train_x)]},
        seeds={"model_a": 0, "model_b": 1, "all_data": 2, "split": 0})
