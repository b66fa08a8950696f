"""Experts as a permutable axis: carrier groups that move whole slices (the experts, with the
router's rows) while each slice's units keep a slot group of their own."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import catalogue_model, same_perm
from permalign.errors import SpecError
from permalign.infer import infer_spec
from permalign.match import weight_matching
from permalign.match.init import sorted_start
from permalign.match.reference import weight_matching_reference
from permalign.match.weight import matching_objective
from permalign.permutation import apply_permutation, check_spec, invert, random_permutation
from permalign.spec import Member, PermutationSpec
from permalign.testing.harness import permuted_outputs_differ
from test_experts import EXPERTS, HIDDEN, LoopExperts, toy_spec, toy_state
from test_infer import GroupedExperts


def carrier_spec() -> PermutationSpec:
    """The toy experts (``up``, ``down``) with the experts axis permuted too, with a router."""
    spec = toy_spec()
    spec.add_group("experts", EXPERTS, [Member("router", 0), Member("up", 0),
                                        Member("down", 0)])
    spec.groups["hidden"].members.append(Member("router", 1))
    return spec


def carrier_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {**toy_state(generator), "router": torch.randn(EXPERTS, HIDDEN, generator=generator)}


def test_carrier_found_and_round_trips_through_json():
    spec = carrier_spec()
    spec.validate(carrier_state(torch.Generator().manual_seed(0)))
    carried = spec.carried()
    assert list(carried) == ["experts"]
    assert carried["experts"].slots == tuple(f"inner{e}" for e in range(EXPERTS))
    again = PermutationSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again.carried() == carried  # no new JSON field: the structure says it


@pytest.mark.parametrize("breakage, message", [
    ("missing slot", "give every index a group"),
    ("two slots at one index", "both permute 'up' axis 1"),
    ("slots differ", "differ in more than the index"),
    ("second mover", "both permute 'up' axis 0"),
])
def test_carrier_validation(breakage, message):
    spec = carrier_spec()
    state = carrier_state(torch.Generator().manual_seed(0))
    if breakage == "missing slot":
        del spec.groups["inner2"]
    elif breakage == "two slots at one index":
        spec.groups["inner2"].members = [Member("up", 1, select=((0, 1),)),
                                         Member("down", 2, select=((0, 1),))]
    elif breakage == "slots differ":
        spec.groups["inner1"].members = spec.groups["inner1"].members[:1]
    else:
        spec.add_group("again", EXPERTS, [Member("up", 0)])
    with pytest.raises(SpecError, match=message):
        spec.validate(state)


def test_apply_moves_slices_then_units_and_invert_needs_the_spec():
    """Slot e of the result is B's slice perm[experts][e] with slot e's units permuted; the
    spec-aware inverse undoes it, the group-by-group inverse does not."""
    g = torch.Generator().manual_seed(0)
    spec, state = carrier_spec(), carrier_state(g)
    perm = random_permutation(spec, g)
    perm["experts"] = torch.tensor([2, 0, 1])
    out = apply_permutation(spec, perm, state)
    h = perm["hidden"]
    for e in range(EXPERTS):
        src, p = int(perm["experts"][e]), perm[f"inner{e}"]
        assert torch.equal(out["up"][e], state["up"][src][p][:, h])
        assert torch.equal(out["down"][e], state["down"][src][h][:, p])
        assert torch.equal(out["router"][e], state["router"][src][h])
    back = apply_permutation(spec, invert(perm, spec), out)
    assert all(torch.equal(back[k], state[k]) for k in state)
    perm["inner0"] = torch.tensor([1, 0, 2, 3])  # slots differ: group by group is wrong
    out = apply_permutation(spec, perm, state)
    naive = apply_permutation(spec, invert(perm), out)
    assert not all(torch.equal(naive[k], state[k]) for k in state)


@pytest.mark.parametrize("memory", ["cached", "bounded"])
def test_planted_experts_recovered_from_every_start(memory):
    """Weight matching of a copy whose experts *and* units were shuffled gives it back: from
    the sorted start and the default; from the identity the objective never falls and never
    passes the planted one."""
    g = torch.Generator().manual_seed(2)
    spec = carrier_spec()
    for trial in range(4):
        state = carrier_state(g)
        planted = random_permutation(spec, g)
        shuffled = apply_permutation(spec, planted, state)
        truth = matching_objective(spec, state, shuffled, invert(planted, spec))
        for init in ("identity", "sorted", "auto"):
            result = weight_matching(spec, state, shuffled, init=init, seed=trial,
                                     memory=memory)
            assert result.history[-1] == pytest.approx(
                matching_objective(spec, state, shuffled, result.perm), rel=1e-6)
            assert all(b >= a - 1e-9 for a, b in zip(result.history, result.history[1:]))
            if init != "identity":  # (from the identity these tiny models can stall)
                assert same_perm(result.perm, invert(planted, spec)), (trial, init)
            assert result.history[-1] <= truth * (1 + 1e-6)


def test_experts_held_in_place_cannot_reach_a_shuffled_copy():
    """With the experts shuffled, the same spec without the carrier (each expert's units
    matched in place) stops below the planted objective; the carrier spec reaches it."""
    g = torch.Generator().manual_seed(5)
    spec, state = carrier_spec(), carrier_state(g)
    planted = random_permutation(spec, g)
    planted["experts"] = torch.tensor([1, 2, 0])
    shuffled = apply_permutation(spec, planted, state)
    truth = matching_objective(spec, state, shuffled, invert(planted, spec))
    in_place = weight_matching(toy_spec(), state, shuffled).perm
    stuck = matching_objective(spec, state, shuffled, {**in_place,
                                                       "experts": torch.arange(EXPERTS)})
    assert stuck < truth - 1e-3
    found = weight_matching(spec, state, shuffled)
    assert same_perm(found.perm, invert(planted, spec))


def test_reference_refuses_carriers():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(SpecError, match="carrier"):
        weight_matching_reference(carrier_spec(), carrier_state(g), carrier_state(g))


def test_sorted_start_seats_slots_against_the_moved_slices():
    """The sorted start recovers a planted copy in one assignment per group, slots included
    (each slot is matched against the slice its carrier put there)."""
    g = torch.Generator().manual_seed(3)
    spec, state = carrier_spec(), carrier_state(g)
    planted = random_permutation(spec, g)
    planted["experts"] = torch.tensor([2, 0, 1])
    shuffled = apply_permutation(spec, planted, state)
    assert same_perm(sorted_start(spec, state, shuffled), invert(planted, spec))


class IndexedExperts(LoopExperts):
    """Experts told apart by their index: expert e's output is scaled by e + 1."""

    def forward(self, x):
        h = self.embed(x)
        gate = self.router(h).softmax(-1)
        y = h
        for e in range(self.experts):
            act = F.gelu(F.linear(h, self.up[e]))
            y = y + (e + 1) * gate[:, e:e + 1] * F.linear(act, self.down[e])
        return self.head(y)


def test_inference_adds_carrier_only_where_the_model_confirms_it():
    """LoopExperts: the router's rows and bias move with the experts (its head, also of
    length E, was tried and refused); outputs hold through load_state_dict. IndexedExperts:
    the same proposal changes the outputs, so no carrier (and the hand-made one fails)."""
    torch.manual_seed(0)
    model, x = LoopExperts().eval(), torch.randn(7, 5)
    assert model.head.out_features == model.experts  # a decoy of the right length
    spec = infer_spec(model, x)
    (name, carried), = spec.carried().items()
    assert {(m.key, m.axis) for m in spec.groups[name].members} == {
        ("router.weight", 0), ("router.bias", 0), ("up", 0), ("down", 0)}
    assert "head.weight:0" in spec.fixed and "up:0" not in spec.fixed
    for seed in range(3):
        assert permuted_outputs_differ(model, spec, (x,), {},
                                       torch.Generator().manual_seed(seed)) <= 1e-6
    indexed = IndexedExperts().eval()
    indexed.load_state_dict(model.state_dict())
    plain = infer_spec(indexed, x)
    assert not plain.carried() and "up:0" in plain.fixed
    assert len([g for g in plain.groups.values() if g.members[0].select]) == model.experts
    with pytest.raises(SpecError, match="outputs changed"):
        check_spec(indexed, spec, x, permutations=[{
            **random_permutation(spec, torch.Generator().manual_seed(0)),
            name: torch.tensor([1, 2, 0])}])


def test_grouped_experts_carrier_recovered_end_to_end():
    """Mixtral-style routing (sort, histc, cumsum, grouped products): the inferred carrier
    moves the router rows and both expert tensors; a planted copy is recovered from the
    default start."""
    pytest.importorskip("transformers.integrations.moe")
    torch.manual_seed(1)
    model = GroupedExperts(experts=4).eval()
    x = torch.randn(9, 5)
    spec = infer_spec(model, x)
    assert len(spec.carried()) == 1
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    planted = random_permutation(spec, torch.Generator().manual_seed(4))
    result = weight_matching(spec, state, apply_permutation(spec, planted, state))
    assert same_perm(result.perm, invert(planted, spec))


MOE_CASES = ["transformers/mixtral", "transformers/qwen2_moe", "transformers/qwen3_moe",
             "transformers/olmoe", "transformers/deepseek_v3"]


@pytest.mark.parametrize("name", MOE_CASES)
def test_real_moe_experts_axis(name):
    """transformers' MoE models as they ship: every sparse layer gets a carrier over the
    router's rows (and DeepSeek-V3's balancing bias) and the experts, except DeepSeek-V3 with
    group-limited routing (``n_group`` > 1: experts may only move within their group, which a
    carrier cannot express, and the cyclic shift the proposal checks is refused)."""
    model, inputs, kwargs = catalogue_model(name)
    spec = infer_spec(model, inputs, example_kwargs=kwargs)
    carriers = spec.carried()
    sparse = [n for n, mod in model.named_modules() if n.endswith("mlp.experts")]
    if name == "transformers/deepseek_v3":
        assert sparse and not carriers
        grouped = type(model)(type(model.config)(**{**model.config.to_dict(), "n_group": 1,
                                                    "topk_group": 1}))
        torch.manual_seed(0)
        grouped.eval()
        spec = infer_spec(grouped, inputs, example_kwargs=kwargs)
        carriers, model = spec.carried(), grouped
    assert len(carriers) == len(sparse) > 0
    for carrier in carriers:
        keys = {m.key for m in spec.groups[carrier].members}
        layer = carrier.rsplit(".mlp.", 1)[0]
        assert {f"{layer}.mlp.experts.gate_up_proj", f"{layer}.mlp.experts.down_proj"} <= keys
        assert any(".experts." not in k for k in keys)  # the router moves along
    diff = permuted_outputs_differ(model, spec, inputs, kwargs, torch.Generator().manual_seed(0))
    assert diff <= 1e-5
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    planted = random_permutation(spec, torch.Generator().manual_seed(1))
    shuffled = apply_permutation(spec, planted, state)
    result = weight_matching(spec, state, shuffled, init="identity")
    assert same_perm(result.perm, invert(planted, spec))


def test_activation_matching_refuses_carriers_in_one_line():
    from permalign.match.activation import activation_matching
    torch.manual_seed(0)
    model, x = LoopExperts().eval(), torch.randn(7, 5)
    spec = infer_spec(model, x)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    from permalign.data import Dataset
    labels = torch.zeros(7, dtype=torch.long)
    data = Dataset("toy", x, labels, x, labels, num_classes=3)
    with pytest.raises(SpecError, match="use --method weight") as info:
        activation_matching(spec, state, state, model=model, data=data)
    assert "\n" not in str(info.value)


def test_unchanged_without_experts():
    """A model without restricted members keeps exactly the spec it had (no carrier pass)."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(),
                          nn.Linear(6, 2)).eval()
    spec = infer_spec(model, torch.randn(3, 4))
    assert not spec.carried() and len(spec.groups) == 2


def test_merge_many_first_round_uses_the_default_start():
    """MergeMany of a Mixtral and a copy with experts and units shuffled gives back one of the
    two (either unit order): its first round starts each model from ``auto``; from the
    identity (the paper's MergeMany, ``init="identity"``) it averages misaligned units here."""
    transformers = pytest.importorskip("transformers")
    from permalign.merge import merge_many
    config = transformers.MixtralConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=50,
        max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).eval()
    spec = infer_spec(model, torch.randint(3, 50, (2, 8), generator=torch.Generator()
                                           .manual_seed(0)), example_kwargs={"use_cache": False})
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    planted = random_permutation(spec, torch.Generator().manual_seed(1))
    for carrier in spec.carried():
        planted[carrier] = torch.roll(planted[carrier], 1)
    shuffled = apply_permutation(spec, planted, state)

    def recovered(merged) -> bool:
        return any(all(torch.allclose(merged[k], s[k], atol=1e-6) for k in state)
                   for s in (state, shuffled))
    assert recovered(merge_many(spec, [state, shuffled]).merged)
    assert not recovered(merge_many(spec, [state, shuffled], init="identity").merged)


def test_hostile_carrier_specs_name_the_real_problem():
    """A huge carrier size is compared, not enumerated; a misspelt key or an out-of-range
    select is named as such even inside a carrier pattern; two groups on one whole axis are
    refused (their inverse would not undo them)."""
    state = carrier_state(torch.Generator().manual_seed(0))
    huge = carrier_spec()
    huge.groups["experts"].size = 10 ** 12
    with pytest.raises(SpecError, match="give every index a group"):
        huge.carried()
    with pytest.raises(SpecError, match="has size 1000000000000"):
        huge.validate(state)
    typo = carrier_spec()
    typo.groups["inner0"].members[0] = Member("upp", 1, select=((0, 0),))
    with pytest.raises(SpecError, match="names key 'upp'"):
        typo.validate(state)
    out_of_range = carrier_spec()
    out_of_range.groups["inner2"].members = [Member("up", 1, select=((0, 7),)),
                                             Member("down", 2, select=((0, 7),))]
    with pytest.raises(SpecError, match="out of range"):
        out_of_range.validate(state)
    doubled = carrier_spec()
    doubled.add_group("again", HIDDEN, [Member("router", 1)])
    with pytest.raises(SpecError, match="both permute 'router' axis 1"):
        doubled.validate(state)


def test_check_spec_moves_every_group():
    """check_spec's permutations never leave a group of two or more units in place, so a
    wrong two-unit group cannot pass by drawing the identity."""
    from permalign.permutation import moving_permutation
    spec = carrier_spec()
    spec.add_group("pair", 2, [])
    for seed in range(20):
        perm = moving_permutation(spec, torch.Generator().manual_seed(seed))
        assert all(not torch.equal(p, torch.arange(len(p))) for p in perm.values())
