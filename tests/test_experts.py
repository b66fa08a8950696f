"""Mixture-of-experts symmetries: members restricted to one expert (``Member.select``), and
spec inference that gives each expert's hidden units a group of their own."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import same_perm
from permalign.errors import SpecError
from permalign.infer import infer_spec
from permalign.match import weight_matching
from permalign.match.reference import weight_matching_reference
from permalign.match.weight import matching_objective
from permalign.permutation import (apply_permutation, check_spec, invert, random_permutation,
                                   unit_view)
from permalign.spec import Member, PermutationSpec
from test_infer import GroupedExperts, assert_preserved, free_places

EXPERTS, INNER, HIDDEN = 3, 4, 5


def toy_spec() -> PermutationSpec:
    """Experts stay in place; each expert's inner units (axis 1 of ``up``, axis 2 of ``down``)
    form a group of their own; the hidden axis is one group for all experts."""
    spec = PermutationSpec()
    for e in range(EXPERTS):
        spec.add_group(f"inner{e}", INNER, [Member("up", 1, select=((0, e),)),
                                            Member("down", 2, select=((0, e),))])
    spec.add_group("hidden", HIDDEN, [Member("up", 2), Member("down", 1)])
    return spec


def toy_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"up": torch.randn(EXPERTS, INNER, HIDDEN, generator=generator),
            "down": torch.randn(EXPERTS, HIDDEN, INNER, generator=generator)}


def test_restricted_member_json_round_trip(tmp_path):
    spec = toy_spec()
    spec.groups["inner1"].members.append(Member("gate_up", 1, offset=4, partial=True,
                                                select=((0, 1),)))
    again = PermutationSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again.canonical() == spec.canonical()
    assert again.groups["inner1"].members[0].select == ((0, 1),)
    path = tmp_path / "spec.json"
    spec.save(path)
    assert PermutationSpec.load(path).canonical() == spec.canonical()
    # the form written before ``select`` existed still reads, as an unrestricted member
    old = Member.from_json({"key": "up", "axis": 1, "offset": 0, "outer": 1, "inner": 1,
                            "partial": False})
    assert old == Member("up", 1) and old.is_plain
    assert Member("up", 1, select=((0, 2),)).describe() == "up[axis 0 = 2]  axis 1"
    for bad in ([[0]], [[0, -1]], [[0, True]], "0,1", [[1, 0]], [[0, 0], [0, 1]]):
        with pytest.raises(SpecError, match="select"):
            Member.from_json({"key": "up", "axis": 1, "select": bad})


def test_restricted_member_validation():
    state = toy_state(torch.Generator().manual_seed(0))
    toy_spec().validate(state)
    out_of_range = toy_spec()
    out_of_range.groups["inner0"].members[0] = Member("up", 1, select=((0, EXPERTS),))
    with pytest.raises(SpecError, match="out of range"):
        out_of_range.validate(state)
    no_axis = toy_spec()
    no_axis.groups["inner0"].members[0] = Member("up", 1, select=((3, 0),))
    with pytest.raises(SpecError, match="another of its 3 axes"):
        no_axis.validate(state)
    half = toy_spec()  # experts moved in ``up`` but not in ``down``: slots only half carried
    half.add_group("experts", EXPERTS, [Member("up", 0)])
    with pytest.raises(SpecError, match="only in part"):
        half.validate(state)  # (a full carrier is tested in test_carriers.py)


def test_apply_and_invert_on_expert_tensors():
    """Each expert's slice moves by its own permutation; the others stay; invert undoes it."""
    g = torch.Generator().manual_seed(0)
    spec, state = toy_spec(), toy_state(g)
    perm = random_permutation(spec, g)
    out = apply_permutation(spec, perm, state)
    for e in range(EXPERTS):
        p, h = perm[f"inner{e}"], perm["hidden"]
        assert torch.equal(out["up"][e], state["up"][e][p][:, h])
        assert torch.equal(out["down"][e], state["down"][e][h][:, p])
    assert torch.equal(unit_view(out["up"], spec.groups["inner1"].members[0], INNER),
                       state["up"][1][perm["inner1"]][:, perm["hidden"]])
    back = apply_permutation(spec, invert(perm), out)
    assert all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(SpecError, match="activation"):
        unit_view(out["up"], spec.groups["inner1"].members[0], INNER, axis=1)


def test_weight_matching_with_restricted_members():
    """The cached matcher equals Algorithm 1 written out, and a planted permutation of
    every expert's units is recovered."""
    g = torch.Generator().manual_seed(1)
    spec = toy_spec()
    for trial in range(3):
        a, b = toy_state(g), toy_state(g)
        fast = weight_matching(spec, a, b, seed=trial)
        slow = weight_matching_reference(spec, a, b, seed=trial)
        assert same_perm(fast.perm, slow.perm)
        assert fast.history[-1] == pytest.approx(matching_objective(spec, a, b, fast.perm),
                                                 rel=1e-5)
    a = toy_state(g)
    planted = random_permutation(spec, g)
    result = weight_matching(spec, a, apply_permutation(spec, planted, a), init="sorted")
    assert same_perm(result.perm, invert(planted, spec))


def restricted_groups(spec: PermutationSpec) -> dict[str, set[tuple]]:
    """Group name -> the selections of its members, for groups of restricted members."""
    return {n: {m.select for m in g.members} for n, g in spec.groups.items()
            if any(m.select for m in g.members)}


def test_grouped_experts_get_one_group_each():
    """Fails if inference gives all experts one shared hidden group (the rules alone)."""
    pytest.importorskip("transformers.integrations.moe")
    torch.manual_seed(0)
    model = GroupedExperts().eval()
    x = torch.randn(6, 5)
    spec = infer_spec(model, x)  # check_spec included
    groups = restricted_groups(spec)
    assert sorted(groups.values(), key=str) == [{((0, e),)} for e in range(model.experts)]
    for name in groups:
        assert {m.key for m in spec.groups[name].members} == {"gate_up", "down"}
    assert {"embed.weight:0", "gate_up:2", "down:1"} <= free_places(spec)
    carrier, = spec.carried().values()  # the experts move too, with the router's rows
    assert {(m.key, m.axis) for m in spec.groups[carrier.carrier].members} == {
        ("router.weight", 0), ("gate_up", 0), ("down", 0)}
    assert sorted(carrier.slots) == sorted(groups)
    assert_preserved(model, spec, (x,))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    planted = random_permutation(spec, torch.Generator().manual_seed(1))
    result = weight_matching(spec, state, apply_permutation(spec, planted, state), init="sorted")
    assert same_perm(result.perm, invert(planted, spec))


@pytest.mark.parametrize("mix", ["centre", "norm", "slice"])
def test_rows_mixed_across_experts_keep_one_group(mix):
    """An op that reads all rows at once (a mean over tokens) mixes the experts' units: they
    keep one group for all experts, and the per-expert spec of the unmixed model is wrong.
    ("centre" feeds the mixed rows to the second product, "norm" only scales the output;
    "slice" multiplies expert 0's and expert 1's units outside the routed path.)"""
    pytest.importorskip("transformers.integrations.moe")
    torch.manual_seed(0)
    model = GroupedExperts(mix=mix).eval()
    x = torch.randn(6, 5)
    spec = infer_spec(model, x)
    assert not restricted_groups(spec) and {"gate_up:1", "down:2"} <= free_places(spec)
    assert_preserved(model, spec, (x,))
    per_expert = infer_spec(GroupedExperts().eval(), x, check=False)
    with pytest.raises(SpecError, match="outputs changed"):
        check_spec(model, per_expert, x, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm"])
def test_mixtral_has_one_hidden_group_per_expert_and_layer(implementation):
    """transformers' Mixtral (catalogue config: 2 layers, 4 experts): 8 per-expert groups of
    64 units each, the outputs are preserved and a planted permutation is recovered. Its
    default experts code (``grouped_mm``: sort, histc, offsets, grouped products) and
    ``batched_mm`` (``bmm`` with ``gate_up_proj[expert_ids]``) export to different graphs."""
    from permalign.infer.graph import export_graph, op_name
    from permalign.testing import CASES, run_case
    from permalign.testing.harness import permuted_outputs_differ, planted_match
    case = CASES["transformers/mixtral"]
    if case.unavailable():
        pytest.skip(case.unavailable())
    model = case.model(0)
    model.config._experts_implementation = implementation  # read at every forward
    inputs, kwargs = case.inputs()
    ops = {op_name(n) for n in export_graph(model, inputs, kwargs).graph.nodes}
    assert ("aten.bmm" in ops) == (implementation == "batched_mm")
    spec = infer_spec(model, inputs, example_kwargs=kwargs, check=False)
    groups = restricted_groups(spec)
    layers, experts = model.config.num_hidden_layers, model.config.num_local_experts
    assert len(groups) == layers * experts
    for layer in range(layers):
        prefix = f"model.layers.{layer}.mlp.experts."
        mine = [n for n in groups if spec.groups[n].members[0].key.startswith(prefix)]
        assert sorted(sel for n in mine for sel in groups[n]) == [((0, e),)
                                                                  for e in range(experts)]
        assert all(spec.groups[n].size == model.config.intermediate_size for n in mine)
    if implementation == "grouped_mm":  # the catalogue's own model, end to end
        report = run_case(case, starts=("identity", "sorted"))
        assert report.failed is None, f"{report.failed}: {report.error}"
        assert report.groups == len(spec.groups)
        assert report.recovered("identity") and report.recovered("sorted")
        return
    for seed in range(2):  # load_state_dict + forward of randomly permuted copies
        diff = permuted_outputs_differ(model, spec, inputs, kwargs,
                                       torch.Generator().manual_seed(seed))
        assert diff <= 1e-6, f"outputs changed by {diff:.3g} (relative)"
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert planted_match(spec, state, "identity").recovered


class LoopExperts(nn.Module):
    """Dense experts written as a loop over slices of 3-D parameters (``self.up[e]``:
    ``aten.select`` with a constant index), mixed by a softmax router. ``mode``: "shared" scales
    every expert's hidden units by one shared vector (ties the experts' units together);
    "whole" also uses the experts' mean weights (reads every expert at once); "tied" does so
    through a second name of the same parameter."""

    def __init__(self, mode: str = "", hidden: int = 6, inner: int = 4, experts: int = 3):
        super().__init__()
        self.mode, self.experts = mode, experts
        self.embed, self.head = nn.Linear(5, hidden), nn.Linear(hidden, 3)
        self.router = nn.Linear(hidden, experts)
        self.up = nn.Parameter(0.5 * torch.randn(experts, inner, hidden))
        self.down = nn.Parameter(0.5 * torch.randn(experts, hidden, inner))
        self.scale = nn.Parameter(torch.rand(inner) + 0.5)
        if mode == "tied":  # the same parameter under a second name, read whole there
            self.up_again = self.up

    def forward(self, x):  # (T, 5)
        h = self.embed(x)  # (T, H)
        gate = self.router(h).softmax(-1)  # (T, E)
        y = h
        for e in range(self.experts):
            act = F.gelu(F.linear(h, self.up[e]))  # (T, I): expert e's units
            if self.mode == "shared":
                act = act * self.scale
            y = y + gate[:, e:e + 1] * F.linear(act, self.down[e])
        if self.mode in ("whole", "tied"):
            up = self.up_again if self.mode == "tied" else self.up
            y = y + F.linear(F.linear(h, up.mean(0)), self.down.mean(0))
        return self.head(y)


@pytest.mark.parametrize("mode", ["", "shared", "whole", "tied"])
def test_loop_over_expert_slices(mode):
    """A constant slice per expert gives each expert's units a group of their own, unless
    something ties them (a shared scale) or reads all experts at once (their mean)."""
    torch.manual_seed(0)
    model = LoopExperts(mode).eval()
    x = torch.randn(7, 5)
    spec = infer_spec(model, x)
    assert_preserved(model, spec, (x,))
    groups = restricted_groups(spec)
    if mode:
        assert not groups and {"up:1", "down:2"} <= free_places(spec)
        per_expert = infer_spec(LoopExperts().eval(), x, check=False)
        with pytest.raises(SpecError, match="outputs changed"):
            check_spec(model, per_expert, x, generator=torch.Generator().manual_seed(0))
        return
    assert sorted(groups.values(), key=str) == [{((0, e),)} for e in range(model.experts)]
    assert {"embed.weight:0", "up:2", "down:1"} <= free_places(spec)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    planted = random_permutation(spec, torch.Generator().manual_seed(1))
    result = weight_matching(spec, state, apply_permutation(spec, planted, state), init="sorted")
    assert same_perm(result.perm, invert(planted, spec))
