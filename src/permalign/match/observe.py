"""Where a spec group's units show up in the forward pass, for any architecture.

A group's units are observed on the inputs and outputs of the modules that own its members'
parameters (a Linear's output carries its out-axis, a norm's output its channels, q_proj's
output the attention heads with their within-head structure). Which tensor axis carries them is
not guessed from shapes: it is *probed*. Permuting only this group changes the model's
function nowhere, so every tensor in the forward pass either stays the same or is the same
tensor permuted along the axes that carry the group. A (tensor, axis, structure) is a site when
the probe's tensor equals the reference's gathered by the group's permutation on that axis.
This works for groups no Linear/Conv consumes (heads, within-head axes, norm-only channels).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..permutation import apply_permutation, identity_permutation, member_index, unit_block

from ..spec import Member, PermutationSpec
from ..stats import CrossMoments
from .invariants import sorted_similarity

MAX_SITES = 8  # per group: enough samples, bounded cost


@dataclass(frozen=True)
class Site:
    """One place a group's units appear: an axis of a module's input or output tensor."""

    module: str  # module name ("" is the model itself)
    io: str  # "input" or "output"
    index: int  # which tensor among that input's/output's flattened tensors
    axis: int
    layout: Member  # offset/outer/inner/partial of the units on that axis (key unused)


def _tensors(value: Any) -> list[torch.Tensor]:
    if hasattr(value, "to_tuple"):  # Hugging Face ModelOutput
        value = value.to_tuple()
    leaves, _ = tree_flatten(value)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def owner_modules(model: nn.Module, spec: PermutationSpec, group: str) -> list[str]:
    """Names of the modules that directly own a member of ``group``, in model order."""
    names = dict(model.named_modules())
    owners = []
    for m in spec.groups[group].members:
        prefix = m.key.rpartition(".")[0]
        if prefix in names and prefix not in owners:
            owners.append(prefix)
    order = {n: i for i, n in enumerate(names)}
    return sorted(owners, key=order.get)


@contextmanager
def capture(model: nn.Module, modules: list[str]) -> Iterator[dict[tuple[str, str], list]]:
    """While active, ``store[(name, "input"|"output")]`` holds the module's last tensors."""
    store: dict[tuple[str, str], list[torch.Tensor]] = {}
    handles = []
    for name in modules:
        def hook(_module, args, kwargs, output, _name=name):
            store[(_name, "input")] = _tensors((args, kwargs))
            store[(_name, "output")] = _tensors(output)
        handles.append(model.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state)``, keeping the model's own state-dict metadata (module
    versions that some ``_load_from_state_dict`` methods check) when ``state`` has none."""
    full = model.state_dict()
    full.update(state)  # an OrderedDict that keeps ``_metadata``
    model.load_state_dict(full)


def _close(x: torch.Tensor, y: torch.Tensor) -> bool:
    scale = float(x.abs().max()) if x.numel() else 0.0
    return torch.allclose(x, y, rtol=1e-4, atol=1e-5 * max(scale, 1e-6))


def _layouts(spec: PermutationSpec, group: str) -> list[Member]:
    seen = {Member("", 0)}
    for m in spec.groups[group].members:
        seen.add(Member("", 0, m.offset, m.outer, m.inner, m.partial))
    return sorted(seen, key=lambda m: (not m.is_plain, m.offset, m.outer, m.inner))


def _fits(layout: Member, size: int, length: int) -> bool:
    span = layout.span(size)
    return layout.offset + span <= length and (layout.covers_part or span == length)


def find_sites(ref: dict, probe: dict, perm: torch.Tensor, layouts: list[Member],
               size: int) -> list[Site]:
    """Sites where ``probe`` is ``ref`` gathered by ``perm`` along one axis."""
    sites = []
    for (module, io), tensors in ref.items():
        probed = probe.get((module, io), [])
        for index, (x, y) in enumerate(zip(tensors, probed)):
            if not x.is_floating_point() or x.shape != y.shape or _close(x, y):
                continue  # unchanged by this group: does not carry it
            for axis, length in enumerate(x.shape):
                layout = next((lay for lay in layouts if _fits(lay, size, length) and _close(
                    y, x.index_select(axis, member_index(lay, length, perm)))), None)
                if layout is not None:
                    sites.append(Site(module, io, index, axis, layout))
                    break
                blocks = _blocks_moved_together(x, y, axis, layouts, perm, size)
                if blocks:
                    sites += [Site(module, io, index, axis, lay) for lay in blocks]
                    break
    return sites


def _blocks_moved_together(x: torch.Tensor, y: torch.Tensor, axis: int, layouts: list[Member],
                           perm: torch.Tensor, size: int) -> list[Member]:
    """The group's partial layouts on this axis if ``y`` is ``x`` with all of them gathered at
    once (a fused projection: the queries' and keys' within-head axis is one group, at two
    offsets of the q/k/v output), else none. Each block is then a site of its own."""
    length = x.shape[axis]
    blocks = [lay for lay in layouts if lay.covers_part and _fits(lay, size, length)]
    spans = sorted((lay.offset, lay.offset + lay.span(size)) for lay in blocks)
    if len(blocks) < 2 or any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        return []  # one block (tried above) or overlapping ones
    index = torch.arange(length)
    for lay in blocks:  # disjoint blocks: the gathers compose in any order
        index = index[member_index(lay, length, perm)]
    return blocks if _close(y, x.index_select(axis, index)) else []


@torch.no_grad()
def observation_sites(model: nn.Module, spec: PermutationSpec, inputs: tuple,
                      kwargs: dict | None = None, *, seed: int = 0) -> dict[str, list[Site]]:
    """For every group, up to ``MAX_SITES`` places its units appear (possibly none)."""
    kwargs = kwargs or {}
    work = copy.deepcopy(model).eval()
    state = {k: v.clone() for k, v in work.state_dict().items()}  # loading overwrites the live
    generator = torch.Generator().manual_seed(seed)
    owners = {g: owner_modules(work, spec, g) for g in spec.groups}
    union = sorted({n for names in owners.values() for n in names})
    with capture(work, union) as store:
        work(*inputs, **kwargs)
        ref = dict(store)
    out: dict[str, list[Site]] = {}
    for name, group in spec.groups.items():
        perm = identity_permutation(spec)
        while group.size > 1 and torch.equal(perm[name], torch.arange(group.size)):
            perm[name] = torch.randperm(group.size, generator=generator)
        load_state(work, apply_permutation(spec, perm, state))
        with capture(work, owners[name]) as store:
            work(*inputs, **kwargs)
        mine = {k: v for k, v in ref.items() if k[0] in owners[name]}
        out[name] = find_sites(mine, store, perm[name], _layouts(spec, name),
                               group.size)[:MAX_SITES]
    return out


def invariant_unit_samples(x: torch.Tensor, layout: Member, size: int, axis: int
                           ) -> torch.Tensor:
    """(samples, size) values of the units at a site, paired across the two models.

    Positions of the other axes are samples. A unit's repeats within the axis (``outer``
    copies, ``inner`` positions: other heads, positions within a head) belong to other groups
    whose permutations differ between the models, so they are sorted, not paired.
    """
    block = unit_block(x, layout, size, axis).movedim(1, 0)  # (size, outer, inner, *rest)
    block = block.reshape(size, layout.outer * layout.inner, -1)  # (size, repeats, samples)
    return block.sort(dim=1).values.reshape(size, -1).T  # (samples, size)


@torch.no_grad()
def site_moments(model: nn.Module, spec: PermutationSpec, sites: dict[str, list[Site]],
                 state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                 inputs: tuple, kwargs: dict | None = None) -> dict[str, CrossMoments]:
    """Cross-moments of A's and B's units at every site, per group (float64)."""
    kwargs = kwargs or {}
    modules = sorted({s.module for ss in sites.values() for s in ss})
    captured = []
    for state in (state_a, state_b):
        work = copy.deepcopy(model).eval()
        load_state(work, state)
        with capture(work, modules) as store:
            work(*inputs, **kwargs)
        captured.append(dict(store))
    moments: dict[str, CrossMoments] = {}
    for name, group_sites in sites.items():
        for s in group_sites:
            xa = captured[0][(s.module, s.io)][s.index]
            xb = captured[1][(s.module, s.io)][s.index]
            size = spec.groups[name].size
            moments.setdefault(name, CrossMoments()).update(
                invariant_unit_samples(xa, s.layout, size, s.axis),
                invariant_unit_samples(xb, s.layout, size, s.axis))
    return moments


def activation_similarities(model: nn.Module, spec: PermutationSpec,
                            state_a: Mapping[str, torch.Tensor],
                            state_b: Mapping[str, torch.Tensor], inputs: tuple,
                            kwargs: dict | None = None) -> dict[str, torch.Tensor]:
    """Per group, (n, n): correlation of A's and B's units where they are observed, plus the
    sorted-weight similarity at a tiny weight (it breaks ties between dead units and is all
    there is for groups that are never observed)."""
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    sites = observation_sites(model, spec, inputs, kwargs)
    moments = site_moments(model, spec, sites, state_a, state_b, inputs, kwargs)
    sims = {}
    for name in spec.groups:
        weights = sorted_similarity(spec, name, state_a, state_b)
        weights = weights / weights.abs().max().clamp_min(1e-300)
        if name in moments:
            sims[name] = moments[name].correlation().cpu() + 1e-6 * weights
        else:
            sims[name] = weights
    return sims
