"""The paper's experiments, one command each (``permalign experiment NAME``).

Each module registers one experiment; all of them are thin scripts over the library.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import PermalignError
from . import (bn_repair, counterexample, epochs, merge_many_exp, mlp_barrier,  # noqa: F401
               planted, split_merge, width)
from .common import REGISTRY, ExperimentConfig, write_results


def run_experiment(name: str, cfg: ExperimentConfig) -> Path:
    """Run one experiment into ``cfg.out`` and return the path of its results.json."""
    if name not in REGISTRY:
        raise PermalignError(f"unknown experiment {name!r}; use one of "
                             f"{', '.join(REGISTRY)} or all")
    cfg.out.mkdir(parents=True, exist_ok=True)
    results = REGISTRY[name].run(cfg)
    seeds = results.pop("_seeds", {})
    return write_results(cfg, name, results, seeds)


__all__ = ["REGISTRY", "ExperimentConfig", "run_experiment"]
