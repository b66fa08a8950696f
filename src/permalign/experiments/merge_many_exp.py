"""MergeMany of several independently trained MLPs (paper Algorithm 3, Table 3)."""
from __future__ import annotations

from dataclasses import dataclass

from ..interpolation import evaluate_state
from ..merge import merge_many
from ..models import resolve_model
from ..statedict import mean_state
from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data, table,
                     trained_state)

MODEL = "mlp:depth=3,width=512"


@dataclass(frozen=True)
class Sizes:
    models: int
    epochs: int


SIZES = {"quick": Sizes(models=5, epochs=1), "full": Sizes(models=5, epochs=5)}


@experiment("merge-many", "MergeMany of 5 MLPs gives a merged model whose test loss is lower "
            "than every input's (MNIST: 0.073 vs 0.111-0.153) (Table 3).", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg)
    count = max(sizes.models, cfg.seeds or sizes.models)
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    states = [trained_state(cfg, MODEL, data, seed=s, epochs=sizes.epochs)
              for s in range(count)]
    cfg.log(f"MergeMany of {count} models")
    result = merge_many(spec, states, seed=0, device=cfg.device, model=model,
                        bn_data=data.train_x)
    device_data = data.to(cfg.device)
    rows = []
    for i, state in enumerate(states):
        metrics = evaluate_state(model.to(cfg.device), state, device_data, bn_reset=False)
        rows.append([f"input {i}", metrics["test_loss"], metrics["test_acc"]])
    naive = evaluate_state(model, mean_state(states), device_data, bn_reset=False)
    merged = evaluate_state(model, result.merged, device_data, bn_reset=False)
    rows += [["naive average (no alignment)", naive["test_loss"], naive["test_acc"]],
             ["MergeMany", merged["test_loss"], merged["test_acc"]]]
    input_losses = [r[1] for r in rows[:count]]
    return ExperimentResult(
        results={"summary": {"merged": merged, "naive_average": naive,
                             "input_test_loss": {"min": min(input_losses),
                                                 "max": max(input_losses)},
                             "merged_below_every_input": merged["test_loss"] < min(input_losses),
                             "rounds": result.rounds, "converged": result.converged}},
        table=table(["model", "test loss", "test accuracy"],
                    [[r[0], round(r[1], 4), round(r[2], 4)] for r in rows]),
        setup={"model": MODEL, "dataset": data.name, "models": count, "epochs": sizes.epochs},
        seeds={"models": list(range(count)), "merge": 0})
