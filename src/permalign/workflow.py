"""The steps the CLI and the experiments share: build, train, align, compare curves."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .data import Dataset
from .interpolation import Curve, interpolation_curve
from .match import MatchResult, get_method
from .models import build_model
from .spec import PermutationSpec, apply_permutation
from .train import TrainConfig, TrainRun, train_run


def train_seed(model_string: str, data: Dataset, cfg: TrainConfig, *,
               device: torch.device | str = "cpu", progress: bool = True) -> TrainRun:
    """Build a model from ``cfg.seed`` and train it: final and initial state dicts (CPU)."""
    model = build_model(model_string, data.input_shape, data.num_classes, seed=cfg.seed)
    return train_run(model, data, cfg, device=device, progress=progress)


def train_from_seed(model_string: str, data: Dataset, cfg: TrainConfig, *,
                    device: torch.device | str = "cpu", progress: bool = True
                    ) -> dict[str, torch.Tensor]:
    """Build a model from ``cfg.seed``, train it, and return its state dict on the CPU."""
    return train_seed(model_string, data, cfg, device=device, progress=progress).state


def align(method: str, spec: PermutationSpec, model: nn.Module,
          state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], *,
          data: Dataset | None = None, seed: int = 0, device: torch.device | str = "cpu",
          **options: Any) -> tuple[dict[str, torch.Tensor], MatchResult]:
    """Run a registered matching method and return (B permuted onto A, the match result)."""
    result = get_method(method)(spec, state_a, state_b, model=model, data=data, seed=seed,
                                device=device, **options)
    return apply_permutation(spec, result.perm, state_b), result


def compare_alignments(model: nn.Module, spec: PermutationSpec,
                       state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                       data: Dataset, methods: list[str], *, seed: int = 0, points: int = 25,
                       device: torch.device | str = "cpu", method_options:
                       dict[str, dict[str, Any]] | None = None, progress: bool = False,
                       ) -> tuple[dict[str, Curve], dict[str, MatchResult]]:
    """Interpolation curves for the naive line and for B aligned by each method."""
    curves = {"naive": interpolation_curve(model, state_a, state_b, data, points=points,
                                           device=device, progress=progress)}
    matches: dict[str, MatchResult] = {}
    for method in methods:
        aligned, result = align(method, spec, model, state_a, state_b, data=data, seed=seed,
                                device=device, **(method_options or {}).get(method, {}))
        matches[method] = result
        curves[method] = interpolation_curve(model, state_a, aligned, data, points=points,
                                             device=device, progress=progress)
    return curves, matches
