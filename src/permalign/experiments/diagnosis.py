"""Why a barrier remains, for experiment results: cheap diagnostics of one alignment.

Per model: cosine and relative distance to its initialisation (the initial weights depend only
on the seed, so they are rebuilt, never stored). Per matching method: the weight-matching
objective before and after, as a cosine between A and permuted B, and the mean correlation of
matched units' activations on a few hundred training inputs, before and after.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..data import Dataset
from ..diagnostics import (distance_to_init, matched_activation_correlation, mean_correlation,
                           objective_change)
from ..match import MatchResult
from ..permutation import identity_permutation
from ..spec import PermutationSpec
from .common import initial_state

CORRELATION_EXAMPLES = 512  # inputs the activation correlations are measured on (cheap)


def _round(values: Mapping[str, float], digits: int = 4) -> dict[str, float]:
    return {k: round(float(v), digits) for k, v in values.items()}


def init_distances(model_string: str, data: Dataset, states: Mapping[str, Mapping[str, Any]],
                   seeds: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """``{name: {cosine, relative_distance}}`` of each trained state to its seed's initial
    weights (linear and conv weights only)."""
    out = {}
    for name, state in states.items():
        d = distance_to_init(state, initial_state(model_string, data, seed=seeds[name]))
        out[name] = _round({"cosine": d.cosine, "relative_distance": d.relative_distance})
    return out


def match_diagnostics(spec: PermutationSpec, model: nn.Module, state_a: Mapping[str, Any],
                      state_b: Mapping[str, Any], result: MatchResult,
                      data: Dataset | None = None, *, device: torch.device | str = "cpu"
                      ) -> dict[str, Any]:
    """Objective before/after and (with ``data``) matched activation correlation of one
    match; ``per_group`` has each group's correlations."""
    objective = objective_change(spec, state_a, state_b, result.perm)
    out: dict[str, Any] = {"objective": _round(objective.to_json(), 6)}
    if "init" in result.info:
        out["weight_matching_start"] = result.info["init"]
    if data is not None:
        x = data.train_x[:CORRELATION_EXAMPLES]
        groups = matched_activation_correlation(spec, model, state_a, state_b, result.perm, x,
                                                device=device)
        out["activation_correlation"] = _round(mean_correlation(groups))
        out["activation_correlation"]["per_group"] = {
            g: _round(c.to_json()) for g, c in groups.items()}
    return out


def comparison_diagnostics(spec: PermutationSpec, model: nn.Module, state_a: Mapping[str, Any],
                           state_b: Mapping[str, Any], matches: Mapping[str, MatchResult], *,
                           data: Dataset | None = None, model_string: str | None = None,
                           seeds: Mapping[str, int] | None = None,
                           device: torch.device | str = "cpu") -> dict[str, Any]:
    """Every diagnostic of an A/B comparison: distance to init (when ``model_string`` and
    ``seeds`` say how the models started) and, per method, :func:`match_diagnostics`."""
    out: dict[str, Any] = {}
    if model_string is not None and seeds is not None and data is not None:
        out["distance_to_init"] = init_distances(model_string, data,
                                                 {"A": state_a, "B": state_b}, seeds)
    out["methods"] = {name: match_diagnostics(spec, model, state_a, state_b, result, data,
                                              device=device)
                      for name, result in matches.items()}
    return out


def summary_line(diag: Mapping[str, Any]) -> str:
    """One human line from :func:`comparison_diagnostics` output, for setup text."""
    parts = []
    if "distance_to_init" in diag:
        cos = [v["cosine"] for v in diag["distance_to_init"].values()]
        parts.append("cosine to init " + "/".join(f"{c:.3f}" for c in cos))
    for name, m in diag.get("methods", {}).items():
        o = m["objective"]
        text = f"{name}: weight cosine {o['cosine_before']:.3f}->{o['cosine_after']:.3f}"
        if "activation_correlation" in m:
            a = m["activation_correlation"]
            text += f", matched activation corr {a['before']:.3f}->{a['after']:.3f}"
        parts.append(text)
    return "; ".join(parts)


def measured_cause(pairs: Mapping[Any, Any]) -> str:
    """The diagnostics of each compared pair (objects with ``.diagnostics``), keyed by width or
    name: what a verdict quotes as the measured cause when a claim does not hold."""
    return "; ".join(f"x{k}: {summary_line(p.diagnostics)}" if isinstance(k, int)
                     else f"{k}: {summary_line(p.diagnostics)}" for k, p in pairs.items())


def weight_cosine(spec: PermutationSpec, state_a: Mapping[str, Any],
                  state_b: Mapping[str, Any]) -> float:
    """Cosine between two models' matched weights, as they are (no permutation)."""
    return round(objective_change(spec, state_a, state_b,
                                  identity_permutation(spec)).cosine_before, 6)
