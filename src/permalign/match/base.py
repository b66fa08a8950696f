"""What every matching method returns, and the registry the CLI looks methods up in."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import PermalignError
from ..spec import Permutation, perm_to_json


@dataclass
class MatchResult:
    """A permutation of model B's units onto model A's, and how it was found."""

    perm: Permutation
    method: str
    history: list[float] = field(default_factory=list)  # objective after each sweep / step
    converged: bool = True
    timings: dict[str, float] = field(default_factory=dict)  # seconds, by phase
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "perm": perm_to_json(self.perm), "history": self.history,
                "converged": self.converged, "timings": self.timings, "info": self.info}


# A method: (spec, state_a, state_b, *, model, data, seed, device, **options) -> MatchResult
MatchMethod = Callable[..., MatchResult]
METHODS: dict[str, MatchMethod] = {}


def register(name: str) -> Callable[[MatchMethod], MatchMethod]:
    """Decorator adding a matching method to the registry under ``name``."""
    def wrap(fn: MatchMethod) -> MatchMethod:
        METHODS[name] = fn
        return fn
    return wrap


def get_method(name: str) -> MatchMethod:
    if name not in METHODS:
        raise PermalignError(f"unknown matching method {name!r}; use one of "
                             f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


def float_state(state: dict[str, torch.Tensor], device: torch.device | str | None,
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Floating-point tensors of a state dict, moved to ``device`` in ``dtype``."""
    return {k: v.detach().to(device=device, dtype=dtype) for k, v in state.items()
            if v.is_floating_point()}
