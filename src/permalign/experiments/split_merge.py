"""Merging two models trained on biased halves of the labels (paper §5.4), over several seeds."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..evaluate import evaluate, evaluate_ensemble
from ..models import resolve_model
from ..plot import plot_panels
from ..workflow import align_and_compare
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data, mean_std,
                     recipe_setup, table, trained_state, verdict_from_checks)
from .diagnosis import comparison_diagnostics, summary_line

MODEL = "mlp:depth=3,width=512"
WHY = ("the paper's MLP recipe (long constant-rate Adam); the paper's own split experiment is a "
       "CIFAR-100 ResNet-20 x32 on the conv recipe, far beyond a CPU")


@dataclass(frozen=True)
class Sizes:
    seeds: int  # independent splits, each with its own pair of models
    train: int | None  # training examples split into the two halves (None: all)
    epochs: int | None  # None: the recipe's count
    points: int
    recipe: str = "official-mlp"


SIZES = {"quick": Sizes(seeds=2, train=1000, epochs=1, points=5),
         "full": Sizes(seeds=3, train=10000, epochs=20, points=21),
         "paper": Sizes(seeds=5, train=None, epochs=None, points=25)}

LINES = ("model A", "model B", "naive midpoint", "aligned midpoint (λ=0.5)",
         "aligned best λ", "output ensemble", "model trained on all data")


def split_verdict(runs: list[dict[str, Any]], cause: str = "") -> dict[str, str]:
    """Checks from per-seed ``{line: {"test_loss": ...}}`` records: the aligned midpoint (and
    the best λ on the aligned line) below both inputs' test loss in every seed."""
    def beats(line: str) -> int:
        return sum(r[line]["test_loss"] < min(r["model A"]["test_loss"],
                                              r["model B"]["test_loss"]) for r in runs)
    n = len(runs)
    mid, best = beats("aligned midpoint (λ=0.5)"), beats("aligned best λ")
    lambdas = ", ".join(f"{r['best_lambda']:.2f}" for r in runs)
    return verdict_from_checks(
        [(f"aligned midpoint (λ=0.5) test loss below both inputs in {mid} of {n} seeds",
          mid == n),
         (f"best λ on the aligned line ({lambdas}) below both inputs in {best} of {n} seeds",
          best == n)], cause)


def one_split(cfg: ExperimentConfig, data, sizes: Sizes, split: int) -> tuple[dict, Any]:
    """Train A and B on split ``split``'s biased halves (and one model on all of it), align,
    and measure every line of the table; returns (record, comparison)."""
    half_a, half_b = data.biased_halves(0.2, seed=split)
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    seeds = {"A": 3 * split, "B": 3 * split + 1}
    train = {"recipe": sizes.recipe, "epochs": sizes.epochs}
    a = trained_state(cfg, MODEL, half_a, seed=seeds["A"], tag=f"-split{split}A", **train)
    b = trained_state(cfg, MODEL, half_b, seed=seeds["B"], tag=f"-split{split}B", **train)
    full = trained_state(cfg, MODEL, data, seed=3 * split + 2, **train)
    comparison = align_and_compare(model, spec, a, b, data, ["weight"], points=sizes.points,
                                   device=cfg.device)
    naive, merged = comparison.curves["naive"], comparison.curves["weight"]
    test_x, test_y = data.test_x.to(cfg.device), data.test_y.to(cfg.device)
    model_a, model_b = copy.deepcopy(model).to(cfg.device), copy.deepcopy(model).to(cfg.device)
    model_a.load_state_dict(a)
    model_b.load_state_dict(b)
    ensemble = evaluate_ensemble([model_a, model_b], test_x, test_y)
    model_a.load_state_dict(full)
    all_data = evaluate(model_a, test_x, test_y)
    best = min(range(sizes.points), key=lambda i: merged.test_loss[i])
    mid = sizes.points // 2

    def point(curve, i):
        return {"test_loss": curve.test_loss[i], "test_acc": curve.test_acc[i]}

    record = {"model A": point(merged, 0), "model B": point(merged, -1),
              "naive midpoint": point(naive, mid), "aligned midpoint (λ=0.5)": point(merged, mid),
              "aligned best λ": point(merged, best), "best_lambda": merged.lambdas[best],
              "output ensemble": {"test_loss": ensemble[0], "test_acc": ensemble[1]},
              "model trained on all data": {"test_loss": all_data[0], "test_acc": all_data[1]},
              "diagnostics": comparison_diagnostics(spec, model, a, b, comparison.matches,
                                                    data=data, model_string=MODEL, seeds=seeds,
                                                    device=cfg.device)}
    return record, comparison


@experiment("split-merge", "Models trained on biased label splits (20%/80%) merge, after "
            "weight matching, into a model with lower test loss over all classes than either "
            "input (not higher accuracy) (§5.4).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg).subset(train=sizes.train)
    count = max(sizes.seeds, cfg.seeds or sizes.seeds)
    runs, first = [], None
    for split in range(count):
        cfg.log(f"split seed {split + 1}/{count}")
        record, comparison = one_split(cfg, data, sizes, split)
        runs.append(record)
        first = first or comparison
    summary = {line: {metric: mean_std([r[line][metric] for r in runs])
                      for metric in ("test_loss", "test_acc")} for line in LINES}
    summary["best_lambda"] = mean_std([r["best_lambda"] for r in runs])
    naive, merged = first.curves["naive"], first.curves["weight"]
    panels = [(label, "λ", label, {"naive": (naive.lambdas, getattr(naive, metric), None),
                                   "weight-matched": (merged.lambdas, getattr(merged, metric),
                                                      None)})
              for metric, label in (("test_loss", "test loss"), ("test_acc", "test accuracy"))]
    plot_panels(panels, cfg.out / "split_merge.png",
                title=f"Biased-split merge (split seed 0), {MODEL} on {data.name}")
    rows = [[line, f"{s['test_loss']['mean']:.4f} ± {s['test_loss']['std']:.4f}",
             f"{s['test_acc']['mean']:.4f} ± {s['test_acc']['std']:.4f}"]
            for line, s in ((line, summary[line]) for line in LINES)]
    b = summary["best_lambda"]
    rows[4][0] = f"aligned best λ ({b['mean']:.2f} ± {b['std']:.2f})"
    cause = "; ".join(f"seed {i}: {summary_line(r['diagnostics'])}" for i, r in enumerate(runs))
    return ExperimentResult(
        results={"runs": runs, "summary": summary,
                 "curves": {"naive": naive.to_json()["curve"],
                            "weight": merged.to_json()["curve"]}},
        table=table([f"model (mean ± std over {count} split seeds)", "test loss (all classes)",
                     "test accuracy"], rows),
        plots=["split_merge.png"],
        setup={"model": MODEL, "dataset": data.name, "train_examples": len(data.train_x),
               "split_seeds": count, "points": sizes.points,
               **recipe_setup(sizes.recipe, data, sizes.epochs, WHY)},
        verdict=split_verdict(runs, cause),
        seeds={"splits": list(range(count)), "models": list(range(3 * count)), "matching": 0})
