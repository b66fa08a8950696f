"""How often weight matching recovers a planted permutation, and how restarts help."""
from __future__ import annotations

import torch

from ..match import activation_matching, weight_matching
from ..match.weight import matching_objective
from ..models import resolve_model
from ..permutation import apply_permutation, invert, random_permutation
from dataclasses import dataclass

from .common import (ExperimentConfig, ExperimentResult, experiment, experiment_data, mean_std,
                     table, trained_state, verdict_from_checks)


def _recovered(found, truth) -> bool:
    return all(torch.equal(found[k], truth[k]) for k in truth)


def _strategies(spec, model, a, b, data, trial, device):
    """Each strategy returns its permutation and objective."""
    single = weight_matching(spec, a, b, seed=trial, device=device)
    restarts = max((weight_matching(spec, a, b, seed=100 * trial + r, device=device)
                    for r in range(5)), key=lambda r: r.history[-1])
    act = activation_matching(spec, a, b, model=model, data=data, num_examples=500,
                              device=device)
    warm = weight_matching(spec, a, b, seed=trial, init=act.perm, device=device)
    return {"weight matching": single, "best of 5 seeds": restarts,
            "activation matching": act, "activation init + weight matching": warm}


def planted_verdict(results: dict[str, dict[str, dict]]) -> dict[str, str]:
    """Checks from ``{model: {strategy: {"recovered", "trials"}}}``: per model, the best
    strategy recovers more often than the published 10 % and at least as often as a single
    weight-matching run."""
    checks = []
    for model, by_strategy in results.items():
        single = by_strategy["weight matching"]
        name, best = max(by_strategy.items(), key=lambda kv: kv[1]["recovered"])
        checks.append((f"{model}: {name} recovers {best['recovered']}/{best['trials']}, single "
                       f"weight matching {single['recovered']}/{single['trials']}",
                       best["recovered"] / best["trials"] > 0.1
                       and best["recovered"] >= single["recovered"]))
    return verdict_from_checks(checks)


@dataclass(frozen=True)
class Sizes:
    trials: int
    train: int  # training examples of the model that is permuted
    epochs: int


SIZES = {"quick": Sizes(trials=5, train=1000, epochs=1),
         "full": Sizes(trials=20, train=4000, epochs=3)}


@experiment("planted", "Weight matching of a model against a permuted copy of itself should "
            "recover the permutation; a published test on a small residual net succeeded in "
            "10 of 100 runs; restarts and better starting points should do far better.", SIZES)
def run(cfg: ExperimentConfig, sizes: Sizes) -> ExperimentResult:
    data = experiment_data(cfg)
    trials = cfg.seeds or sizes.trials
    models = ["mlp:depth=3,width=256", "vgg11:width=0.25,norm=bn", "resnet20:width=1,norm=ln",
              "resnet20:width=2,norm=bn"]
    small = data.subset(train=sizes.train)
    rows, results = [], {}
    for model_string in models:
        cfg.log(f"planted permutations: {model_string}")
        model, spec = resolve_model(model_string, data.input_shape, data.num_classes)
        a = trained_state(cfg, model_string, small, seed=0, epochs=sizes.epochs)
        outcome: dict[str, list] = {}
        for trial in range(trials):
            perm = random_permutation(spec, torch.Generator().manual_seed(1000 + trial))
            b = apply_permutation(spec, perm, a)
            truth = invert(perm, spec)
            best = matching_objective(spec, a, b, truth)
            for name, res in _strategies(spec, model, a, b, small, trial, cfg.device).items():
                found = res.perm
                objective = matching_objective(spec, a, b, found)
                outcome.setdefault(name, []).append(
                    (_recovered(found, truth), (best - objective) / abs(best)))
        results[model_string] = {}
        for name, runs in outcome.items():
            rate = sum(ok for ok, _ in runs) / len(runs)
            gaps = [gap for ok, gap in runs if not ok]
            results[model_string][name] = {"recovered": sum(ok for ok, _ in runs),
                                           "trials": len(runs),
                                           "gap_when_missed": mean_std(gaps) if gaps else None}
            rows.append([model_string, name, f"{sum(ok for ok, _ in runs)}/{len(runs)}",
                         f"{rate:.2f}",
                         f"{mean_std(gaps)['mean']:.2e}" if gaps else "-"])
    return ExperimentResult(
        results=results,
        table=table(["model", "strategy", "recovered", "rate",
                     "relative objective gap when missed"], rows),
        setup={"dataset": data.name, "train_examples": len(small.train_x), "trials": trials},
        verdict=planted_verdict(results),
        seeds={"model": 0, "planted": [1000 + t for t in range(trials)]})
