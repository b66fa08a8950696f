"""The experts themselves as a permutable axis: carrier groups, proposed and then verified.

After inference, a mixture-of-experts layer has one group per expert for its hidden units
(:mod:`permalign.infer.experts`), while the experts axis itself is fixed: the router's ``topk``
and the routing arithmetic (sort, ``histc``, ``cumsum`` of counts) read expert *indices*, which
the axis rules cannot follow. Yet relabelling the experts — the router's rows together with
every expert tensor's axis 0, each expert keeping its own units — leaves the layer's function
unchanged, because tokens follow their scores to whichever index the expert now has.

This module does not prove that from the graph. It *proposes* the symmetry from the spec's
shape and keeps it only when the model confirms it:

1. a *family* is a set of per-expert slot groups, one for each index ``0..E-1`` of the same
   fixed expert axes (``gate_up_proj:0``, ``down_proj:0``);
2. a *router* is a module next to the experts (under the experts module's parent) whose
   parameters or buffers have fixed axes of length ``E`` (``gate.weight:0``, a bias, a
   balancing bias); each such module is tried in model order;
3. the carrier (the family's expert axes plus the router's) is kept if a forward pass of the
   model with every expert moved (a cyclic shift, every other group at random) and a second
   with a random permutation give the outputs of the unpermuted model, as
   :func:`~permalign.permutation.check_spec` measures them.

So a proposal that is wrong for the model (experts told apart by their index, a head whose
size happens to be ``E``) is never returned. The check sees only the example inputs: an
expert that no example token reaches cannot show that it is misplaced, exactly as for every
other group.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import SpecError
from ..permutation import check_spec, random_permutation
from ..spec import Group, Member, PermutationSpec

Place = tuple[str, int]  # (state_dict key, axis)


def expert_families(spec: PermutationSpec, shapes: Mapping[str, tuple[int, ...]]
                    ) -> list[tuple[list[Place], list[str]]]:
    """``(expert axes, slot groups by index)`` for every complete set of per-expert groups
    that select one index each on the same fixed axes of length ``E`` (``shapes`` in model
    order)."""
    order = {key: i for i, key in enumerate(shapes)}
    families: dict[frozenset[Place], dict[int, str]] = {}
    for name, group in spec.groups.items():
        if any(len(m.select) != 1 for m in group.members):
            continue
        seats = {(m.key, *m.select[0]) for m in group.members}
        if len({i for _, _, i in seats}) != 1:
            continue
        places = frozenset((key, axis) for key, axis, _ in seats)
        if any(f"{key}:{axis}" not in spec.fixed for key, axis in places):
            continue
        index = next(iter(seats))[2]
        families.setdefault(places, {}).setdefault(index, name)
    out = []
    for places, slots in families.items():
        lengths = {shapes[key][axis] for key, axis in places}
        if len(lengths) == 1 and sorted(slots) == list(range(lengths.pop())):
            ordered = sorted(places, key=lambda p: (order[p[0]], p[1]))
            out.append((ordered, [slots[e] for e in range(len(slots))]))
    return out


def router_candidates(spec: PermutationSpec, shapes: Mapping[str, tuple[int, ...]],
                      experts: list[Place]) -> list[list[Place]]:
    """Fixed axes of length ``E`` per module under the experts module's parent, in model
    order: each list is one module's (a router's weight, bias and balancing buffers)."""
    size = shapes[experts[0][0]][experts[0][1]]
    owner = experts[0][0].rpartition(".")[0]  # the experts module
    parent = owner.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    taken = set(experts)
    modules: dict[str, list[Place]] = {}
    for place in spec.fixed:
        key, _, axis_text = place.rpartition(":")
        if key not in shapes or not axis_text.isdigit() or not key.startswith(prefix):
            continue
        axis = int(axis_text)
        if (key, axis) in taken or shapes[key][axis] != size:
            continue
        modules.setdefault(key.rpartition(".")[0], []).append((key, axis))
    order = {key: i for i, key in enumerate(shapes)}
    return sorted((sorted(places, key=lambda p: (order[p[0]], p[1]))
                   for places in modules.values()),
                  key=lambda places: order[places[0][0]])


def with_carrier(spec: PermutationSpec, places: list[Place], size: int
                 ) -> tuple[PermutationSpec, str]:
    """A copy of ``spec`` with one carrier group over ``places`` (those axes no longer fixed),
    and the carrier's name."""
    groups = {n: Group(n, g.size, list(g.members)) for n, g in spec.groups.items()}
    key, axis = places[0]
    name = f"{key}:{axis}"
    while name in groups:
        name += "'"
    groups[name] = Group(name, size, [Member(k, a) for k, a in places])
    fixed = {p: why for p, why in spec.fixed.items()
             if p not in {f"{k}:{a}" for k, a in places}}
    return PermutationSpec(groups, fixed), name


def add_expert_carriers(model: nn.Module, spec: PermutationSpec, example_inputs: tuple,
                        example_kwargs: dict[str, Any] | None = None,
                        outputs: Sequence[str | int] | None = None) -> PermutationSpec:
    """``spec`` with a carrier group for every mixture-of-experts layer whose experts the
    model confirms may be relabelled together with a router (see the module docstring; the
    confirmation compares the output entries ``outputs`` names, default all); unchanged where
    no family or no confirmed router exists."""
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for experts, slots in expert_families(spec, shapes):
        size = len(slots)
        for router in router_candidates(spec, shapes, experts):
            candidate, carrier = with_carrier(spec, router + experts, size)
            moved = random_permutation(candidate, torch.Generator().manual_seed(0))
            moved[carrier] = torch.roll(torch.arange(size), 1)  # every expert moves
            shuffled = random_permutation(candidate, torch.Generator().manual_seed(1))
            try:
                check_spec(model, candidate, example_inputs, example_kwargs=example_kwargs,
                           atol=1e-4, rtol=1e-3, permutations=[moved, shuffled],
                           outputs=outputs)
            except SpecError:
                continue
            spec = candidate
            break
    return spec
