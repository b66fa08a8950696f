"""Activation matching: match units whose activations on training data correlate most.

One streaming pass over the data collects, per group, the means and the cross-moment of the
two models' activations in float64 (never all activations at once); conv activations count every
spatial position as a sample. Then one linear assignment per group.
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
from ..sites import consumer_sites, feature_dim, record_inputs
from ..permutation import apply_permutation, unit_view
from ..spec import PermutationSpec
from ..stats import CrossMoments
from .base import MatchResult, Option, register, solver_option
from .base import default_similarity_key

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
    (x,) = distributed.shard(x)
    sites = consumer_sites(model, spec)
    names = {module for entries in sites.values() for module, _ in entries}
    model_a, model_b = _loaded(model, state_a, device), _loaded(model, state_b, device)
    moments = {g: CrossMoments() for g in spec.groups}
    by_module: dict[str, list[tuple[str, object]]] = {}
    for group, entries in sites.items():
        for module, member in entries:
            by_module.setdefault(module, []).append((group, member))
    with record_inputs(model_a, names) as acts_a:
        handles = []
        for name in names:  # B's inputs are consumed as they appear, paired with A's
            dim = feature_dim(model_b.get_submodule(name))

            def hook(_module, args, _name=name, _dim=dim):
                act_a = acts_a.pop(_name)
                for group, member in by_module[_name]:
                    size = spec.groups[group].size
                    # every non-feature position is a sample: (samples, size) each
                    moments[group].update(unit_view(act_a, member, size, _dim).T,
                                          unit_view(args[0], member, size, _dim).T)
            handles.append(model_b.get_submodule(name).register_forward_pre_hook(hook))
        try:
            for xb, _ in tqdm(list(batches(x, x, batch_size)),
                              disable=None if progress and distributed.is_main() else True,
                              desc="activations",
                              leave=False):
                xb = xb.to(device)
                model_a(xb)
                model_b(xb)
        finally:
            for h in handles:
                h.remove()
    distributed.reduce_moments(moments)
    return moments


def _solve(spec: PermutationSpec, moments: Mapping[str, CrossMoments],
           state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], cost: str,
           solver: str) -> tuple[dict[str, torch.Tensor], float]:
    """The assignments from the moments (on rank 0 under a process group): a first solve per
    group, then a second whose ties between dead units are broken by incoming weights."""
    sims = {g: (m.correlation() if cost == "correlation" else m.cross_moment()).cpu()
            for g, m in moments.items()}
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
                       info={"cost": cost, "samples": len(x)})
