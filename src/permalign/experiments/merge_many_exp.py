"""MergeMany of several independently trained MLPs (paper Algorithm 3, Table 3)."""
from __future__ import annotations

from ..interpolation import evaluate_state, mean_state
from ..merge import merge_many
from ..models import resolve_model
from .common import (ExperimentConfig, experiment, experiment_data, table, trained_state)

MODEL = "mlp:depth=3,width=512"


@experiment("merge-many", "MergeMany of 5 MLPs gives a merged model whose test loss is lower "
            "than every input's (MNIST: 0.073 vs 0.111-0.153) (Table 3).")
def run(cfg: ExperimentConfig) -> dict:
    data = experiment_data(cfg)
    count = max(5, cfg.seeds or 5)
    epochs = 1 if cfg.quick else 5
    model, spec = resolve_model(MODEL, data.input_shape, data.num_classes)
    states = [trained_state(cfg, MODEL, data, seed=s, epochs=epochs) for s in range(count)]
    cfg.log(f"MergeMany of {count} models")
    result = merge_many(spec, states, seed=0, device=cfg.device)
    rows = []
    for i, state in enumerate(states):
        metrics = evaluate_state(model.to(cfg.device), state, data.to(cfg.device),
                                 bn_reset=False)
        rows.append([f"input {i}", metrics["test_loss"], metrics["test_acc"]])
    naive = evaluate_state(model, mean_state(states), data.to(cfg.device), bn_reset=False)
    merged = evaluate_state(model, result.merged, data.to(cfg.device), bn_reset=False)
    rows += [["naive average (no alignment)", naive["test_loss"], naive["test_acc"]],
             ["MergeMany", merged["test_loss"], merged["test_acc"]]]
    input_losses = [r[1] for r in rows[:count]]
    return {"summary": {"merged": merged, "naive_average": naive,
                        "input_test_loss": {"min": min(input_losses), "max": max(input_losses)},
                        "merged_below_every_input": merged["test_loss"] < min(input_losses),
                        "rounds": result.rounds, "converged": result.converged},
            "table": table(["model", "test loss", "test accuracy"],
                           [[r[0], round(r[1], 4), round(r[2], 4)] for r in rows]),
            "plots": [],
            "setup": {"model": MODEL, "dataset": data.name, "models": count, "epochs": epochs},
            "_seeds": {"models": list(range(count)), "merge": 0}}
