"""The paper's experiments, one command each (``permalign experiment NAME``).

Each module registers one experiment (imported here automatically); all of them are thin
scripts over the library.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from ..errors import PermalignError
from ..io import check_writable
from .common import REGISTRY, SCALES, ExperimentConfig, ExperimentResult, write_results

for _module in pkgutil.iter_modules(__path__):  # each module registers one experiment
    importlib.import_module(f"{__name__}.{_module.name}")


def run_experiment(name: str, cfg: ExperimentConfig) -> Path:
    """Run one experiment into ``cfg.out`` and return the path of its results.json."""
    if name not in REGISTRY:
        raise PermalignError(f"unknown experiment {name!r}; use one of "
                             f"{', '.join(REGISTRY)} or all")
    entry = REGISTRY[name]
    sizes = entry.sizes_for(cfg.scale)
    if cfg.out.is_dir():  # refuse before hours of work, not after
        check_writable(cfg.out / "results.json", force=cfg.force)
    cfg.out.mkdir(parents=True, exist_ok=True)
    return write_results(cfg, name, entry.run(cfg, sizes))


__all__ = ["REGISTRY", "SCALES", "ExperimentConfig", "ExperimentResult", "run_experiment"]
