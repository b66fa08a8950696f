"""Activation matching: match units whose activations on training data correlate most.

One streaming pass over the data collects, per group, the means and the cross-moment of the
two models' activations in float64 (never all activations at once); conv activations count every
spatial position as a sample. Then one linear assignment per group.

A group's activations are read at the inputs of the Linear/Conv layers that consume it. A group
that none consumes (attention heads and the axis within a head, channels only a norm or an
attention product reads) is observed where probing finds it (:mod:`permalign.match.observe`:
the module inputs and outputs that move with the group's permutation, on the first
``PROBE_EXAMPLES`` inputs). Where a unit repeats along its axis at positions another group
permutes (a head's positions, permuted by the within-head group, and the within-head axis
repeated over heads), the repeats are sorted rather than paired: the two models order them
differently. A group observed nowhere (a parameter the forward pass never reads, experts'
units inside a fused kernel) is matched by its sorted weights, and the result's
``info["unobserved"]`` names it.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed, lap
from ..data import Dataset, batches
from ..errors import PermalignError, SpecError
from ..sites import consumer_sites, feature_dim, first_input, record_inputs
from ..permutation import apply_permutation, unit_view
from ..spec import PermutationSpec
from ..stats import CrossMoments
from .base import MatchResult, Option, register, solver_option
from .base import default_similarity_key
from .invariants import sorted_similarity
from .observe import Site, capture, invariant_unit_samples, observation_sites

PROBE_EXAMPLES = 8  # inputs that locate the sites of groups no Linear/Conv consumes

# Dead units (constant activations) correlate with nothing; the cosine similarity of their
# incoming weights, at this tiny weight, decides between them without disturbing live units.
TIE_BREAK = 1e-6


def incoming_weight_cosine(spec: PermutationSpec, group: str, state_a, state_b
                           ) -> torch.Tensor:
    """Cosine similarity of A's and B's units by their incoming weights (axis-0 members), (n, n).

    ``state_b`` should already have the other groups' permutations applied.
    """
    size = spec.groups[group].size
    members = [m for m in spec.groups[group].members
               if m.axis == 0 and default_similarity_key(m.key)]
    if not members:
        return torch.zeros(size, size, dtype=torch.float64)
    rows_a = torch.cat([unit_view(state_a[m.key].double().cpu(), m, size) for m in members], 1)
    rows_b = torch.cat([unit_view(state_b[m.key].double().cpu(), m, size) for m in members], 1)
    rows_a = rows_a / rows_a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rows_b = rows_b / rows_b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return rows_a @ rows_b.T


def _loaded(model: nn.Module, state: Mapping[str, torch.Tensor], device) -> nn.Module:
    m = copy.deepcopy(model).to(device).eval()
    m.load_state_dict(state)
    return m


@torch.inference_mode()
def activation_statistics(spec: PermutationSpec, model: nn.Module,
                          state_a: Mapping[str, torch.Tensor],
                          state_b: Mapping[str, torch.Tensor], x: torch.Tensor, *,
                          batch_size: int = 256, device: torch.device | str = "cpu",
                          progress: bool = False) -> dict[str, CrossMoments]:
    """Per-group streaming moments of A's and B's activations over the inputs ``x``.

    With a process group (:mod:`permalign.distributed`) each rank reads its shard of ``x``
    and the moments are summed over the ranks: every rank returns those of all of ``x``.
    """
    sites = consumer_sites(model, spec, strict=False)
    model_a, model_b = _loaded(model, state_a, device), _loaded(model, state_b, device)
    probed = _probed_sites(model_a, spec, [g for g in spec.groups if g not in sites],
                           x[:PROBE_EXAMPLES].to(device))  # before sharding: same on every rank
    (x,) = distributed.shard(x)
    names = {module for entries in sites.values() for module, _ in entries}
    probed_modules = sorted({s.module for found in probed.values() for s in found})
    moments = {g: CrossMoments() for g in [*sites, *probed]}
    shared = {(key, m.axis) for key, entries in spec.members_by_key().items()
              for _, m in entries if sum(e.axis == m.axis for _, e in entries) > 1}
    by_module: dict[str, list[tuple[str, object]]] = {}
    for group, entries in sites.items():
        for module, member in entries:
            by_module.setdefault(module, []).append((group, member))
    with record_inputs(model_a, names) as acts_a:
        handles = []
        for name in names:  # B's inputs are consumed as they appear, paired with A's
            dim = feature_dim(model_b.get_submodule(name))

            def hook(_module, args, kwargs, _name=name, _dim=dim):
                act_a, act_b = acts_a[_name].pop(0), first_input(args, kwargs)
                for group, member in by_module[_name]:
                    size = spec.groups[group].size
                    if (member.key, member.axis) in shared:  # repeats another group orders
                        moments[group].update(
                            invariant_unit_samples(act_a, member, size, _dim),
                            invariant_unit_samples(act_b, member, size, _dim))
                        continue
                    # every non-feature position is a sample: (samples, size) each
                    moments[group].update(unit_view(act_a, member, size, _dim).T,
                                          unit_view(act_b, member, size, _dim).T)
            handles.append(model_b.get_submodule(name).register_forward_pre_hook(
                hook, with_kwargs=True))
        try:
            with capture(model_a, probed_modules) as seen_a, \
                    capture(model_b, probed_modules) as seen_b:
                for xb, _ in tqdm(list(batches(x, x, batch_size)),
                                  disable=None if progress and distributed.is_main() else True,
                                  desc="activations",
                                  leave=False):
                    xb = xb.to(device)
                    model_a(xb)
                    model_b(xb)
                    for group, found in probed.items():
                        size = spec.groups[group].size
                        for site in found:  # (samples, size) each, repeats sorted
                            moments[group].update(*(invariant_unit_samples(
                                seen[(site.module, site.io)][site.index], site.layout, size,
                                site.axis) for seen in (seen_a, seen_b)))
        finally:
            for h in handles:
                h.remove()
    distributed.reduce_moments(moments)
    # a consumer whose forward never ran (its weight used directly): observed nowhere
    return {g: m for g, m in moments.items() if m.count}


def _probed_sites(model: nn.Module, spec: PermutationSpec, groups: list[str],
                  x: torch.Tensor) -> dict[str, list[Site]]:
    """Where each of ``groups`` (none consumed by a Linear/Conv) appears in ``model`` on the
    inputs ``x``; groups that appear nowhere are left out."""
    if not groups:
        return {}
    found = observation_sites(model, PermutationSpec({g: spec.groups[g] for g in groups}),
                              (x,))
    return {g: sites for g, sites in found.items() if sites}


def _solve(spec: PermutationSpec, moments: Mapping[str, CrossMoments],
           state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], cost: str,
           solver: str) -> tuple[dict[str, torch.Tensor], float]:
    """The assignments from the moments (on rank 0 under a process group): a first solve per
    group, then a second whose ties between dead units are broken by incoming weights."""
    sims = {g: (moments[g].correlation() if cost == "correlation"
                else moments[g].cross_moment()).cpu() if g in moments
            else sorted_similarity(spec, g, state_a, state_b)  # observed nowhere
            for g in spec.groups}
    first = {g: torch.as_tensor(lap.solve(s.numpy(), solver)) for g, s in sims.items()}
    # second pass: break ties between dead units by their incoming weights, with B's other
    # axes permuted by the first pass
    permuted_b = apply_permutation(spec, first, state_b)
    perm, objective = {}, 0.0
    for group, sim in sims.items():
        cosine = torch.empty(sim.shape, dtype=torch.float64)
        cosine[:, first[group]] = incoming_weight_cosine(spec, group, state_a, permuted_b)
        sim = (sim + TIE_BREAK * sim.abs().max().clamp_min(1e-12) * cosine).numpy()
        p = lap.solve(sim, solver)
        objective += float(sim[range(len(p)), p].sum())
        perm[group] = torch.as_tensor(p, dtype=torch.long)
    return perm, objective


@register("activation", needs_data=True, options=[
    Option("cost", str, "correlation", "similarity of activations",
           choices=("correlation", "cross_moment")),
    Option("num_examples", int, None, "training examples for the statistics",
           minimum=1),
    Option("batch_size", int, 256, "examples per forward pass", minimum=1),
    solver_option()])
def activation_matching(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                        state_b: Mapping[str, torch.Tensor], *, model: nn.Module | None = None,
                        data: Dataset | None = None, cost: str = "correlation",
                        num_examples: int | None = None, batch_size: int = 256,
                        device: torch.device | str = "cpu", solver: str = "auto",
                        progress: bool = False) -> MatchResult:
    """Permutation of B's units maximising the correlation (or cross-moment) of activations.

    ``data.train_x`` (or its first ``num_examples`` rows) is the input; ``model`` gives the
    architecture the two state dicts belong to.
    """
    if model is None or data is None:
        raise PermalignError("activation matching needs the model and training data "
                             "(pass --dataset)")
    if cost not in ("correlation", "cross_moment"):
        raise PermalignError(f"unknown activation cost {cost!r}; use correlation or cross_moment")
    per_expert = next((n for n, g in spec.groups.items() if any(m.select for m in g.members)),
                      None)
    if per_expert is not None:
        raise SpecError(f"activation matching cannot observe group {per_expert!r}: its units "
                        "belong to one expert (mixture of experts), and moving experts needs "
                        "the nested weight-matching step; use --method weight")
    start = time.perf_counter()
    x = data.train_x if num_examples is None else data.train_x[:num_examples]
    moments = activation_statistics(spec, model, state_a, state_b, x, batch_size=batch_size,
                                    device=device, progress=progress)
    collected = time.perf_counter()
    perm, objective = distributed.on_main(_solve, spec, moments, state_a, state_b, cost,
                                          solver)
    return MatchResult(perm=perm, method="activation", history=[objective],
                       timings={"total": time.perf_counter() - start,
                                "statistics": collected - start},
                       info={"cost": cost, "samples": len(x),
                             "unobserved": [g for g in spec.groups if g not in moments]})
