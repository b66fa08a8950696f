"""Why is my merge bad? Measurements that point to the known causes, with hints.

:func:`diagnose` looks at a model, its spec and two state dicts and reports

- **spec coverage**: the share of parameters with at least one permuted axis, and every axis
  left fixed with its reason;
- **function preservation**: the largest output change under a random permutation (a wrong
  spec changes the outputs);
- **planted-permutation self-test**: weight matching A against a randomly permuted copy of A
  must find the permutation again;
- the **weight-matching objective** before and after aligning B to A (also as a cosine);
- with data: the **matched activation correlation** per group, and the **barriers** before and
  after alignment (with and without BatchNorm re-estimation for BN models);
- **hints** in plain language where the numbers point to a known cause: a wrong spec, weights
  close to their initialisation (or a note that the initial weights are unknown), a thin
  model, BatchNorm without reset, low coverage, matching that stalls.

The objective, distance-to-initialisation and matched-correlation measurements come from
:mod:`permalign.diagnostics`, which the experiments report as well.
"""
from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .data import Dataset
from .errors import PermalignError, SpecError
from .interpolation import Curve, interpolation_curve
from .diagnostics import distance_to_init, matched_activation_correlation, objective_change
from .match.weight import matching_objective, weight_matching
from .permutation import (_flat_outputs, apply_permutation, check_spec, invert, random_permutation)
from .spec import Permutation, PermutationSpec
from .statedict import has_batchnorm
from .workflow import align

StateDict = Mapping[str, torch.Tensor]

# thresholds behind the hints (documented in the README's diagnose section)
NEAR_INIT_COSINE = 0.9  # cosine to the initial weights above which a model "stayed near init"
THIN_WIDTH = 64  # a hidden group narrower than this makes a "thin" model
LOW_COVERAGE = 0.5  # share of parameters with a permuted axis below which alignment does little
LOW_CORRELATION = 0.5  # mean matched activation correlation below which units lack partners
SAME_BASIN_COSINE = 0.95  # A and B this similar before alignment already share a basin
PLANTED_OK = 0.999  # objective found / objective of the planted truth


# ------------------------------------------------------------------ measurements
def parameter_keys(model: nn.Module) -> list[str]:
    """State-dict names of the model's parameters (buffers excluded, tied names once)."""
    seen: set[int] = set()
    keys = []
    for key, value in model.state_dict(keep_vars=True).items():
        if isinstance(value, nn.Parameter) and id(value) not in seen:
            seen.add(id(value))
            keys.append(key)
    return keys


def spec_coverage(model: nn.Module, spec: PermutationSpec) -> dict[str, Any]:
    """Share of parameters (by count of numbers) with at least one permuted axis; every
    parameter axis longer than 1 that no group permutes, with the spec's reason (or "not in
    the spec, no reason recorded")."""
    state = model.state_dict()
    permuted_axes = {(m.key, m.axis) for g in spec.groups.values() for m in g.members}
    permuted_keys = {key for key, _ in permuted_axes}
    total = covered = 0
    fixed: dict[str, str] = {}
    for key in parameter_keys(model):
        tensor = state[key]
        total += tensor.numel()
        if key in permuted_keys:
            covered += tensor.numel()
        for axis, length in enumerate(tensor.shape):
            if length > 1 and (key, axis) not in permuted_axes:
                fixed[f"{key}:{axis}"] = spec.fixed.get(f"{key}:{axis}",
                                                        "not in the spec (no reason recorded)")
    return {"parameters": total, "permuted_parameters": covered,
            "share": covered / total if total else float("nan"), "fixed_axes": fixed}


def output_change(model: nn.Module, spec: PermutationSpec, state: StateDict, args: tuple,
                  kwargs: dict[str, Any], *, seed: int = 0, outputs: Any = None
                  ) -> dict[str, Any]:
    """The largest change of the outputs ``outputs`` names (default all) when ``state`` is
    permuted at random by ``spec``, against the tolerance spec checks use (1e-4 + 1e-3 x the
    output's scale)."""
    work = copy.deepcopy(model)
    work.load_state_dict(state)
    with torch.no_grad():
        scale = max((float(t.abs().max()) for t in _flat_outputs(
            work.eval()(*args, **kwargs), outputs) if t.numel()), default=0.0)
    diff = check_spec(work, spec, args, example_kwargs=kwargs, atol=math.inf, rtol=0.0,
                      generator=torch.Generator().manual_seed(seed), outputs=outputs)
    tolerance = 1e-4 + 1e-3 * scale
    return {"max_abs_diff": diff, "output_scale": scale, "tolerance": tolerance,
            "preserved": bool(diff <= tolerance)}


def planted_self_test(spec: PermutationSpec, state: StateDict, *, seed: int = 0
                      ) -> dict[str, Any]:
    """Weight-match ``state`` against a randomly permuted copy of itself: the share of units
    put back in place, and the objective found against the planted truth's."""
    planted = random_permutation(spec, torch.Generator().manual_seed(seed))
    shuffled = apply_permutation(spec, planted, state)
    found = weight_matching(spec, state, shuffled, seed=seed)
    truth = invert(planted, spec)
    units = sum(g.size for g in spec.groups.values())
    right = sum(int((found.perm[n] == truth[n]).sum()) for n in spec.groups)
    best = matching_objective(spec, state, shuffled, truth)
    got = matching_objective(spec, state, shuffled, found.perm)
    return {"units_recovered": right / units if units else float("nan"),
            "objective_ratio": got / best if best else float("nan"),
            "sweeps": len(found.history)}


# ------------------------------------------------------------------ the report
@dataclass
class Diagnosis:
    """Everything :func:`diagnose` measured, and the hints drawn from it."""

    model: dict[str, Any]
    coverage: dict[str, Any]
    function: dict[str, Any]
    planted: dict[str, Any]
    objective: dict[str, float]
    method: str
    init: dict[str, float] | None = None
    correlation: dict[str, dict[str, float]] | None = None
    correlation_note: str | None = None
    barriers: dict[str, dict[str, float]] | None = None
    hints: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def table(self) -> str:
        """The report as plain text: one section per measurement, then the hints."""
        m, c, f, p, o = self.model, self.coverage, self.function, self.planted, self.objective
        lines = [f"model: {m['parameters']:,} parameters, {m['groups']} permutation groups "
                 f"(sizes {m['smallest_group']}..{m['largest_group']}, median "
                 f"{m['median_group']:g}){', BatchNorm' if m['batchnorm'] else ''}",
                 "",
                 f"spec coverage       {c['share']:.1%} of parameters have a permuted axis "
                 f"({c['permuted_parameters']:,} of {c['parameters']:,})"]
        if c["fixed_axes"]:
            lines.append(f"fixed axes          {len(c['fixed_axes'])}:")
            lines += [f"  {place}: {why}" for place, why in c["fixed_axes"].items()]
        lines += [
            f"function preserved  {'yes' if f['preserved'] else 'NO'} (max output change "
            f"{f['max_abs_diff']:.3g}, tolerance {f['tolerance']:.3g})",
            f"planted self-test   {p['units_recovered']:.1%} of units recovered, objective "
            f"{p['objective_ratio']:.4f} of the planted truth's ({p['sweeps']} sweeps)",
            f"objective ({self.method})  before {o['before']:.6g} (cosine "
            f"{o['cosine_before']:.4f}), after {o['after']:.6g} (cosine "
            f"{o['cosine_after']:.4f})"]
        if self.init is not None:
            lines.append("cosine to init      " + ", ".join(
                f"{name} {value:.4f}" for name, value in self.init.items()))
        else:
            lines.append("cosine to init      unknown (initial weights not given)")
        if self.correlation:
            lines.append(f"{'activation correlation':<28}{'before':>8}{'after':>8}{'units':>7}")
            for group, r in self.correlation.items():
                lines.append(f"  {group[:26]:<26}{r['before']:>8.3f}{r['after']:>8.3f}"
                             f"{r['units']:>7}")
        elif self.correlation_note:
            lines.append(f"activation correlation  {self.correlation_note}")
        if self.barriers:
            lines.append(f"{'barrier':<28}{'train loss':>11}{'test loss':>11}{'test err':>10}")
            for name, b in self.barriers.items():
                lines.append(f"  {name:<26}{b['train_loss']:>11.4f}{b['test_loss']:>11.4f}"
                             f"{b['test_acc']:>10.4f}")
        lines += ["", "hints:"] + [f"- {h}" for h in self.hints]
        return "\n".join(lines)


def diagnose(model: nn.Module, spec: PermutationSpec, state_a: StateDict, state_b: StateDict,
             example_args: tuple, example_kwargs: dict[str, Any] | None = None, *,
             data: Dataset | None = None, init_a: StateDict | None = None,
             init_b: StateDict | None = None, method: str = "weight",
             method_options: dict[str, Any] | None = None, seed: int = 0, points: int = 11,
             eval_examples: int | None = 2000, device: torch.device | str = "cpu",
             outputs: Any = None) -> Diagnosis:
    """Measure why aligning/merging ``state_b`` with ``state_a`` may go wrong (see the module
    docstring). ``example_args``/``example_kwargs`` call the model for the function check;
    ``data`` enables the activation and barrier measurements (evaluated on at most
    ``eval_examples`` per split, ``points`` along each line); ``init_a``/``init_b`` are the
    initial weights, if known; ``outputs``: the outputs the function check compares (default
    all)."""
    kwargs = dict(example_kwargs or {})
    sizes = [g.size for g in spec.groups.values()]
    if not sizes:
        raise SpecError("the spec has no permutation groups: there is nothing to align")
    state = model.state_dict()
    info = {"parameters": sum(state[k].numel() for k in parameter_keys(model)),
            "groups": len(sizes), "smallest_group": min(sizes), "largest_group": max(sizes),
            "median_group": statistics.median(sizes), "batchnorm": has_batchnorm(model)}
    function = output_change(model, spec, state_a, example_args, kwargs, seed=seed,
                             outputs=outputs)
    planted = planted_self_test(spec, state_a, seed=seed)
    _, result = align(method, spec, model, state_a, state_b, data=data, seed=seed,
                      device=device, **(method_options or {}))
    report = Diagnosis(model=info, coverage=spec_coverage(model, spec), function=function,
                       planted=planted,
                       objective=objective_change(spec, state_a, state_b,
                                                  result.perm).to_json(),
                       method=method)
    inits = {f"{name}": _cosine_to_init(s, i)
             for name, s, i in (("A", state_a, init_a), ("B", state_b, init_b)) if i is not None}
    report.init = inits or None
    if data is not None:
        _measure_with_data(report, model, spec, state_a, state_b, result.perm, data,
                           points=points, eval_examples=eval_examples, device=device)
    report.hints = hints(report)
    return report


def _cosine_to_init(state: StateDict, initial: StateDict) -> float:
    """Cosine of the weight matrices to their initial values (NaN if they share none)."""
    try:
        return distance_to_init(state, initial).cosine
    except ValueError:
        return float("nan")


def _measure_with_data(report: Diagnosis, model: nn.Module, spec: PermutationSpec,
                       state_a: StateDict, state_b: StateDict, perm: Permutation,
                       data: Dataset, *, points: int, eval_examples: int | None,
                       device: torch.device | str) -> None:
    x = data.train_x[:eval_examples] if eval_examples else data.train_x
    try:
        per_group = matched_activation_correlation(spec, model, state_a, state_b, perm, x,
                                                   device=device)
        report.correlation = {g: c.to_json() for g, c in per_group.items()}
    except PermalignError as exc:
        report.correlation_note = f"not measured ({exc})"
    if eval_examples:
        data = data.subset(train=eval_examples, test=eval_examples)
    aligned = apply_permutation(spec, perm, state_b)
    lines: dict[str, Curve] = {
        "naive": interpolation_curve(model, state_a, state_b, data, points=points,
                                     device=device),
        "aligned": interpolation_curve(model, state_a, aligned, data, points=points,
                                       device=device)}
    if has_batchnorm(model):
        lines["aligned, no BN reset"] = interpolation_curve(
            model, state_a, aligned, data, points=points, bn_reset=False, device=device)
    report.barriers = {name: curve.barriers() for name, curve in lines.items()}


def hints(report: Diagnosis) -> list[str]:
    """Plain-language hints where the numbers point to a known cause (thresholds above)."""
    out: list[str] = []
    f, p, o, c = report.function, report.planted, report.objective, report.coverage
    if not f["preserved"]:
        out.append(f"WRONG SPEC: permuting with this spec changes the model's outputs (by "
                   f"{f['max_abs_diff']:.3g}, tolerance {f['tolerance']:.3g}); every result "
                   "built on it is meaningless. Let permalign infer the spec (--infer, or no "
                   "--spec) or fix the groups `permalign spec` prints.")
    elif p["objective_ratio"] < PLANTED_OK:
        out.append(f"Weight matching did not find a planted permutation of A again (objective "
                   f"{p['objective_ratio']:.4f} of the truth's): coordinate descent stalls on "
                   "this model. Try --restarts, or activation matching.")
    if c["share"] < LOW_COVERAGE:
        out.append(f"Only {c['share']:.0%} of the parameters have a permuted axis: alignment "
                   "can change little of this model. The fixed axes above say why.")
    if report.init is None:
        out.append("The initial weights are unknown, so it cannot be told whether training "
                   "moved the weights far from their initialisation (pass --init-a/--init-b "
                   "with the models' initial checkpoints to check).")
    else:
        near = {k: v for k, v in report.init.items() if v > NEAR_INIT_COSINE}
        if near:
            out.append("Weights close to their initialisation (cosine " + ", ".join(
                f"{k} {v:.3f}" for k, v in near.items()) + "): matching then lines up "
                "initialisation noise. Train longer, with a larger learning rate or weight "
                "decay (the paper's SGD recipe).")
    if o["cosine_before"] > SAME_BASIN_COSINE:
        out.append(f"A and B are already close before alignment (cosine "
                   f"{o['cosine_before']:.3f}): they probably share an initialisation or one "
                   "was fine-tuned from the other; they need no alignment.")
    if report.model["smallest_group"] < THIN_WIDTH:
        out.append(f"Thin model: the narrowest permutation group has "
                   f"{report.model['smallest_group']} units (median "
                   f"{report.model['median_group']:g}). The paper finds barriers remain at small "
                   "widths after alignment and vanish as width grows.")
    b = report.barriers
    if report.model["batchnorm"]:
        if b and "aligned, no BN reset" in b:
            out.append(f"BatchNorm: the aligned test-loss barrier is "
                       f"{b['aligned, no BN reset']['test_loss']:.4f} without re-estimating the "
                       f"statistics and {b['aligned']['test_loss']:.4f} with it; always reset "
                       "them for interpolated or merged models (merge does, unless "
                       "--no-bn-reset).")
        else:
            out.append("BatchNorm: an interpolated or merged model needs its statistics "
                       "re-estimated on training data (variance collapse); give merge a "
                       "--dataset and do not pass --no-bn-reset.")
    corr = report.correlation
    if corr:
        weak = {g: r["after"] for g, r in corr.items() if r["after"] < LOW_CORRELATION}
        if weak:
            worst = min(weak, key=weak.get)
            out.append(f"{len(weak)} of {len(corr)} groups have matched activations "
                       f"correlating below {LOW_CORRELATION} (lowest {worst}: "
                       f"{weak[worst]:.3f}): those units have no clear partner in the other "
                       "model.")
    if b and f["preserved"]:
        naive, aligned = b["naive"]["test_loss"], b["aligned"]["test_loss"]
        if aligned > 0.5 * naive and naive > 0.05:
            out.append(f"Alignment removed little of the barrier (test loss {naive:.4f} -> "
                       f"{aligned:.4f}); see the hints above for the likely cause.")
    if not out:
        out.append("No known problem found.")
    return out
