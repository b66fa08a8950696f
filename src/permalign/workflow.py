"""The steps the CLI and the experiments share: build, train, align, compare curves."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .data import Dataset
from .interpolation import Curve, interpolation_curve
from .lazy import is_lazy
from .match import MatchResult, get_method
from .models import build_model
from .permutation import apply_permutation
from .spec import PermutationSpec
from .statedict import permuted_view
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
    """Run a registered matching method and return (B permuted onto A, the match result).

    For a lazy ``state_b`` (:mod:`permalign.lazy`) the permuted B is a lazy view too."""
    result = get_method(method).run(spec, state_a, state_b, model=model, data=data, seed=seed,
                                    device=device, **options)
    if is_lazy(state_b):  # permuted one tensor at a time, when it is read or written
        return permuted_view(spec, result.perm, state_b), result
    return apply_permutation(spec, result.perm, state_b), result


@dataclass
class Comparison:
    """Interpolation curves of the naive line and of B aligned by each method."""

    curves: dict[str, Curve]  # "naive", "<method>", or "<line> <variant>"
    matches: dict[str, MatchResult] = field(default_factory=dict)
    aligned: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def barriers(self) -> dict[str, dict[str, float]]:
        return {name: curve.barriers() for name, curve in self.curves.items()}


def align_and_compare(model: nn.Module, spec: PermutationSpec,
                      state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                      data: Dataset, methods: list[str], *, eval_data: Dataset | None = None,
                      seed: int = 0, points: int = 25, device: torch.device | str = "cpu",
                      method_options: dict[str, dict[str, Any]] | None = None,
                      variants: dict[str, dict[str, Any]] | None = None,
                      naive_variants: list[str] | None = None, progress: bool = False
                      ) -> Comparison:
    """Align B to A with each method (on ``data``) and measure the interpolation curves (on
    ``eval_data``, default ``data``) of the naive line and of every aligned line.

    ``variants`` measures each line several ways: ``{label: interpolation_curve options}``
    (e.g. ``{"+ BN reset": {"bn_reset": True}, "+ REPAIR": {"repair": True}}``); curves are then
    named ``"<line> <label>"`` (an empty label keeps the line's own name). ``naive_variants``
    picks which variants the naive line gets (default: all).
    """
    variants = variants or {"": {}}
    eval_data = eval_data or data

    def measure(line: str, state: Mapping[str, torch.Tensor], labels: list[str]) -> None:
        for label in labels:
            name = f"{line} {label}" if label else line
            comparison.curves[name] = interpolation_curve(
                model, state_a, state, eval_data, points=points, device=device, spec=spec,
                progress=progress, **variants[label])

    comparison = Comparison(curves={})
    measure("naive", state_b, list(variants) if naive_variants is None else naive_variants)
    for method in methods:
        aligned, result = align(method, spec, model, state_a, state_b, data=data, seed=seed,
                                device=device, **(method_options or {}).get(method, {}))
        comparison.matches[method] = result
        comparison.aligned[method] = aligned
        measure(method, aligned, list(variants))
    return comparison
