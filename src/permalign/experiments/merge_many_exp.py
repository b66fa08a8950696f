"""MergeMany of several independently trained MLPs (paper Algorithm 3, Table 3), in the paper's
regime (random halves, long constant-rate Adam: over-confident inputs) and in our quick one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data import Dataset
from ..diagnostics import model_calibration
from ..interpolation import evaluate_state
from ..merge import merge_many
from ..models import resolve_model
from ..statedict import mean_state
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data,
                     prefixed, recipe_setup, table, trained_state,
                     verdict_from_checks)
from .diagnosis import init_distances, weight_cosine

MODEL = "mlp:depth=3,width=512"  # 784-512-512-512-10, the official script's MLP


@dataclass(frozen=True)
class Regime:
    """How the inputs are trained."""

    name: str
    recipe: str
    epochs: int | None  # None: the recipe's count
    halves: bool  # each model on its own random half of the training data
    why: str


PAPER = Regime("paper", "official-mlp", None, True,
               "the official MergeMany script's regime: 32 MLPs, each on a random 50% of MNIST, "
               "constant-rate Adam 1e-3, batch 500, 100 epochs")
CURRENT = Regime("quick", "quick-adam", None, False,
                 "permalign's quick recipe: every model on all the data, annealed Adam")


@dataclass(frozen=True)
class Sizes:
    models: int
    train: int | None  # training examples (None: all)
    paper_epochs: int | None  # epochs of the paper regime (None: the recipe's 100)
    quick_epochs: int | None  # epochs of the current regime (None: the recipe's count)
    max_rounds: int = 100  # MergeMany rounds at most (barely trained quick inputs never settle)


SIZES = {"quick": Sizes(models=3, train=2000, paper_epochs=2, quick_epochs=1, max_rounds=3),
         "full": Sizes(models=5, train=10000, paper_epochs=40, quick_epochs=5),
         "paper": Sizes(models=32, train=None, paper_epochs=None, quick_epochs=None)}


def regime_data(data: Dataset, regime: Regime, index: int) -> Dataset:
    """Model ``index``'s training data: a seeded random half, or all of it."""
    return data.subset(train=len(data.train_x) // 2, seed=1000 + index) if regime.halves \
        else data


def run_regime(cfg: ExperimentConfig, data: Dataset, regime: Regime, models: int,
               epochs: int | None, max_rounds: int = 100) -> dict[str, Any]:
    """Train ``models`` inputs, merge them, and evaluate inputs, naive average and merge
    (loss, accuracy, calibration on the test split)."""
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    parts = [regime_data(data, regime, i) for i in range(models)]
    states = [trained_state(cfg, MODEL, part, seed=i, recipe=regime.recipe, epochs=epochs,
                            tag="-half" if regime.halves else "")
              for i, part in enumerate(parts)]
    cfg.log(f"MergeMany of {models} models ({regime.name} regime)")
    merged = merge_many(spec, states, seed=0, device=cfg.device, model=model, init="identity",
                        bn_data=data.train_x, max_rounds=max_rounds)
    device_data = data.to(cfg.device)
    model = model.to(cfg.device)

    def measure(state) -> dict[str, float]:
        metrics = evaluate_state(model, state, device_data, bn_reset=False)
        calib = model_calibration(model, device_data.test_x, device_data.test_y)
        return {**metrics, "test_ece": calib["ece"],
                "test_confidence": calib["mean_confidence"]}

    inputs = [measure(s) for s in states]
    naive = measure(mean_state(states))
    result = measure(merged.merged)
    diagnostics = {
        "distance_to_init": init_distances(MODEL, data, {f"input {i}": s
                                                         for i, s in enumerate(states)},
                                           {f"input {i}": i for i in range(models)}),
        "weight_cosine_to_merge": {f"input {i}": {"as is": weight_cosine(spec, merged.merged, s),
                                                  "aligned": weight_cosine(spec, merged.merged, a)}
                                   for i, (s, a) in enumerate(zip(states, merged.aligned))}}
    return {"regime": regime.name, "inputs": inputs, "naive_average": naive, "merged": result,
            "rounds": merged.rounds, "converged": merged.converged,
            "merged_below_every_input": result["test_loss"] < min(m["test_loss"] for m in inputs),
            "diagnostics": diagnostics,
            "setup": {"train_examples_per_model": len(parts[0].train_x),
                      **recipe_setup(regime.recipe, data, epochs, regime.why)}}


def merge_verdict(paper: dict[str, Any], current: dict[str, Any]) -> dict[str, str]:
    """Checks from :func:`run_regime` outputs: in the paper's regime the merge's test loss is
    below every input's; the calibration and the current regime explain the outcome."""
    losses = [m["test_loss"] for m in paper["inputs"]]
    eces = [m["test_ece"] for m in paper["inputs"]]
    m = paper["merged"]
    checks = [(f"paper regime: merged test loss {m['test_loss']:.3f} vs inputs "
               f"{min(losses):.3f}-{max(losses):.3f}", m["test_loss"] < min(losses))]
    cause = (f"merged ECE {m['test_ece']:.3f} vs inputs {min(eces):.3f}-{max(eces):.3f}; "
             f"merged test accuracy {m['test_acc']:.3f}")
    verdict = verdict_from_checks(checks, cause)
    c_losses = [x["test_loss"] for x in current["inputs"]]
    verdict["why"] += (f" Calibration (paper regime): merged ECE {m['test_ece']:.3f}, inputs "
                       f"{min(eces):.3f}-{max(eces):.3f}. Current quick regime: merged "
                       f"{current['merged']['test_loss']:.3f} vs inputs {min(c_losses):.3f}-"
                       f"{max(c_losses):.3f} (well-calibrated inputs: ECE "
                       f"{min(x['test_ece'] for x in current['inputs']):.3f}-"
                       f"{max(x['test_ece'] for x in current['inputs']):.3f}).")
    return verdict


@experiment("merge-many", "MergeMany of 5 MLPs gives a merged model whose test loss is lower "
            "than every input's (MNIST: 0.073 vs 0.111-0.153) (Table 3).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg).subset(train=sizes.train)
    count = max(sizes.models, cfg.seeds or sizes.models)
    paper = run_regime(cfg, data, PAPER, count, sizes.paper_epochs, sizes.max_rounds)
    current = run_regime(cfg, data, CURRENT, count, sizes.quick_epochs, sizes.max_rounds)
    rows = []
    for r in (paper, current):
        named = [(f"input {i}", m) for i, m in enumerate(r["inputs"])] + [
            ("naive average (no alignment)", r["naive_average"]), ("MergeMany", r["merged"])]
        rows += [[r["regime"], name, round(m["test_loss"], 4), round(m["test_acc"], 4),
                  round(m["test_ece"], 4), round(m["test_confidence"], 4)]
                 for name, m in named]
    return ExperimentResult(
        results={"paper_regime": paper, "current_regime": current},
        table=table(["regime", "model", "test loss", "test accuracy", "test ECE",
                     "mean confidence"], rows),
        setup={"model": MODEL, "dataset": data.name, "train_examples": len(data.train_x),
               "models": count, **prefixed("paper regime", paper["setup"]),
               **prefixed("current regime", current["setup"])},
        verdict=merge_verdict(paper, current),
        seeds={"models": list(range(count)), "halves": [1000 + i for i in range(count)],
               "merge": 0})
