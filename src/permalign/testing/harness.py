"""Check spec inference and matching on one architecture, as a new user would.

:func:`run_case` builds the model, infers its spec from the case's example inputs, checks the
spec the way a user loads weights (``load_state_dict`` of ``apply_permutation``'s result, then
forward, then compare), and matches the model against a randomly permuted copy of itself from
each named start: was the planted permutation recovered (B aligned equals A), and what fraction
of the true objective did the match reach.
"""
from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import SpecError
from ..infer import infer_spec
from ..match.weight import matching_objective, weight_matching
from ..permutation import (_flat_outputs, apply_permutation, cast_floats, invert,
                           random_permutation)
from ..spec import PermutationSpec, StateDict
from .catalogue import Case

STAGES = ("build", "infer", "load", "preserve", "match", "fixed")  # "fixed": checked last


@dataclass
class MatchOutcome:
    """Weight matching from one start against a planted permutation."""

    recovered: bool  # B aligned equals A on every permuted tensor
    objective_ratio: float  # reached objective / objective of the planted permutation
    seconds: float
    init: str  # the start that won (differs from the requested one for "auto")


@dataclass
class CaseReport:
    """Everything :func:`run_case` found out about one architecture."""

    name: str
    kind: str
    params: int = 0
    failed: str | None = None  # first stage that failed (see STAGES), None if none
    error: str = ""
    groups: int = 0
    units: int = 0
    fixed: int = 0  # state-dict axes (longer than 1) left unpermuted
    fixed_reasons: dict[str, int] = field(default_factory=dict)
    max_diff: float = float("nan")  # largest output change under a random permutation
    infer_seconds: float = 0.0
    matching: dict[str, MatchOutcome] = field(default_factory=dict)
    seconds: float = 0.0

    def recovered(self, start: str) -> bool:
        """The planted permutation was recovered from ``start`` (on a spec that preserved the
        outputs; it may still be missing symmetries, ``failed == "fixed"``)."""
        return start in self.matching and self.matching[start].recovered

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["matching"] = {k: dict(v.__dict__) for k, v in self.matching.items()}
        return out


def outputs(model: nn.Module, inputs: tuple, kwargs: dict) -> list[torch.Tensor]:
    with torch.no_grad():
        return _flat_outputs(model(*inputs, **kwargs))


def permuted_outputs_differ(model: nn.Module, spec: PermutationSpec, inputs: tuple,
                            kwargs: dict, generator: torch.Generator,
                            dtype: torch.dtype = torch.float64) -> float:
    """Largest change of any output after loading the spec-permuted weights, relative to the
    output's scale. Loading goes through ``load_state_dict`` exactly as a user would.

    Runs in float64 where the model allows: float32 round-off (1e-6 relative) hides small
    but real changes (a permuted position-index buffer changes Swin's outputs by 3e-5, MaxViT's
    by 4e-6); in float64 a right spec changes them by < 1e-6 (HF models that compute norms
    and rotary embeddings in float32 inside stay near 1e-7). Models whose forward does not
    run in float64 (grouped matrix products of mixture-of-experts layers) run in float32.
    """
    try:
        return _relative_change(model, spec, inputs, kwargs, generator, dtype)
    except _NoForward:
        return _relative_change(model, spec, inputs, kwargs, generator, torch.float32)


class _NoForward(Exception):
    """The model does not run in the requested dtype."""


def _relative_change(model: nn.Module, spec: PermutationSpec, inputs: tuple, kwargs: dict,
                     generator: torch.Generator, dtype: torch.dtype) -> float:
    # both copies are made before any forward: some models cache tensors derived from their
    # weights in eval mode (timm LeViT's attention-bias cache), and a copy made after a
    # forward would run the permuted weights with the stale cache
    reference_model = copy.deepcopy(model).eval().to(dtype)
    work = copy.deepcopy(reference_model)
    state = reference_model.state_dict()
    work.load_state_dict(apply_permutation(spec, random_permutation(spec, generator), state))
    inputs, kwargs = cast_floats(inputs, dtype), cast_floats(kwargs, dtype)
    try:
        reference = outputs(reference_model, inputs, kwargs)
    except RuntimeError as exc:
        if dtype == torch.float32:
            raise
        raise _NoForward(str(exc)) from exc
    worst = 0.0
    for ref, got in zip(reference, outputs(work, inputs, kwargs), strict=True):
        if ref.numel():
            scale = max(float(ref.abs().max()), 1e-6)
            worst = max(worst, float((ref - got).abs().max()) / scale)
    return worst


def aligned_equals(spec: PermutationSpec, perm, state_a: StateDict, state_b: StateDict) -> bool:
    """Whether ``perm`` maps B back onto A exactly on every tensor the spec permutes."""
    keys = {m.key for g in spec.groups.values() for m in g.members}
    aligned = apply_permutation(spec.restricted(keys), perm, {k: state_b[k] for k in keys})
    return all(torch.equal(aligned[k], state_a[k]) for k in keys)


def planted_match(spec: PermutationSpec, state: StateDict, start: str, *, seed: int = 0,
                  planted_seed: int = 1, **context: Any) -> MatchOutcome:
    """Weight-match ``state`` against a copy permuted at random (``planted_seed``)."""
    planted = random_permutation(spec, torch.Generator().manual_seed(planted_seed))
    state_b = apply_permutation(spec, planted, state)
    best = matching_objective(spec, state, state_b, invert(planted, spec))
    began = time.perf_counter()
    result = weight_matching(spec, state, state_b, init=start, seed=seed, **context)
    seconds = time.perf_counter() - began
    reached = matching_objective(spec, state, state_b, result.perm)
    return MatchOutcome(aligned_equals(spec, result.perm, state, state_b),
                        reached / best if best else float("nan"), seconds,
                        str(result.info.get("init", start)))


def run_case(case: Case, starts: tuple[str, ...] = ("identity", "sorted", "activation"), *, seed: int = 0,
             planted_seed: int = 1, tolerance: float = 1e-6) -> CaseReport:
    """Build, infer, check and match one architecture; failures are recorded, not raised."""
    report = CaseReport(case.name, case.kind)
    began = time.perf_counter()
    lost: list[str] = []
    stage = "build"
    try:
        model = case.model(seed)
        inputs, kwargs = case.inputs()
        report.params = sum(p.numel() for p in model.parameters())
        stage = "infer"
        t0 = time.perf_counter()
        spec = infer_spec(model, inputs, example_kwargs=kwargs, check=False)
        report.infer_seconds = time.perf_counter() - t0
        report.groups = len(spec.groups)
        report.units = sum(g.size for g in spec.groups.values())
        report.fixed = len(spec.fixed)
        report.fixed_reasons = dict(Counter(spec.fixed.values()).most_common())
        stage = "fixed"
        grouped = {f"{m.key}:{m.axis}" for g in spec.groups.values() for m in g.members}
        lost = [f"{place} ({spec.fixed.get(place, 'not in the spec')})"
                for place in case.free if place not in grouped]
        stage = "load"
        report.max_diff = permuted_outputs_differ(model, spec, inputs, kwargs,
                                                  torch.Generator().manual_seed(seed))
        stage = "preserve"
        if not report.max_diff <= tolerance:
            raise SpecError(f"outputs changed by {report.max_diff:.3g} (relative) under the "
                            "inferred spec's permutation")
        stage = "match"
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        context = {"model": model, "inputs": inputs, "input_kwargs": kwargs}
        for start in starts:  # "auto" as `permalign align` runs it: without data
            report.matching[start] = planted_match(spec, state, start, seed=seed,
                                                   planted_seed=planted_seed,
                                                   **(context if start != "auto" else {}))
    except Exception as exc:  # the report names the stage; the survey goes on
        report.failed = stage
        first = (str(exc).strip().splitlines() or [""])[0]
        report.error = f"{type(exc).__name__}: {first}"[:400]
    if report.failed is None and report.groups and lost:  # matching ran; the spec is too small
        report.failed = "fixed"
        report.error = f"axes with a permutation symmetry were fixed: {', '.join(lost)}"
    report.seconds = time.perf_counter() - began
    return report
