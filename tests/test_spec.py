"""PermutationSpec: apply/invert, JSON, validation, check_spec on every zoo model."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from permalign import zoo
from permalign.errors import PermalignError, SpecError
from permalign.permutation import apply_permutation, check_spec, invert, random_permutation
from permalign.spec import Member, PermutationSpec

ZOO_CASES = [
    ("mlp:depth=3,width=32", (1, 8, 8)),
    ("mlp:depth=2,width=16,norm=ln", (64,)),
    ("mlp:depth=2,width=16,norm=bn", (64,)),
    ("vgg11:width=0.125", (3, 16, 16)),
    ("vgg11:width=0.125,norm=ln", (1, 8, 8)),
    ("vgg16:width=0.125,norm=bn", (3, 32, 32)),
    ("vgg16:width=0.125,norm=none", (1, 28, 28)),
    ("vgg16:width=0.125,norm=ln", (1, 28, 28)),
    ("resnet20:width=1,norm=ln", (3, 16, 16)),
    ("resnet20:width=1,norm=bn", (1, 8, 8)),
    ("resnet20:width=2,norm=bn", (3, 32, 32)),
]


def randomise_bn(model: nn.Module) -> None:
    """Give BatchNorm layers non-trivial running stats so the check can see them."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)


def build(name, shape, seed=0):
    torch.manual_seed(seed)
    model, spec = zoo.build(name, input_shape=shape, num_classes=10)
    randomise_bn(model)
    out = model.eval()(torch.randn(2, *shape))
    assert (out[0] - out[1]).abs().max() > 1e-3, "model output ignores its input: check is blind"
    return model, spec


@pytest.mark.parametrize("name,shape", ZOO_CASES)
def test_zoo_spec_preserves_outputs(name, shape):
    model, spec = build(name, shape)
    x = torch.randn(4, *shape)
    check_spec(model, spec, x, generator=torch.Generator().manual_seed(0), trials=2)


@pytest.mark.parametrize("name,shape", ZOO_CASES)
def test_wrong_spec_is_caught(name, shape):
    """Dropping one member (a layer's in-axis) from a group must make check_spec fail."""
    model, spec = build(name, shape)
    group = next(g for g in spec.groups.values() if any(m.axis == 1 for m in g.members))
    group.members.remove(next(m for m in group.members if m.axis == 1))
    with pytest.raises(SpecError, match="outputs changed"):
        check_spec(model, spec, torch.randn(4, *shape), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,shape", ZOO_CASES[:6])
def test_wrong_norm_member_is_caught(name, shape):
    """A norm or bias left out of its group changes the outputs too."""
    model, spec = build(name, shape)
    group = next(iter(spec.groups.values()))
    extra = [m for m in group.members if m.axis == 0 and not m.key.endswith("weight")]
    if not extra:
        pytest.skip("no bias or norm member")
    group.members.remove(extra[0])
    with pytest.raises(SpecError):
        check_spec(model, spec, torch.randn(4, *shape), generator=torch.Generator().manual_seed(0))


def test_resnet_stream_groups():
    _, spec = build("resnet20:width=1,norm=bn", (3, 32, 32))
    streams = [n for n in spec.groups if "stream" in n]
    assert len(streams) == 3 and len(spec.groups) == 12
    stage1 = spec.groups["stage1.stream"].members
    keys = {m.key for m in stage1}
    # every block output of stage 1, the shortcut conv and its norm (buffers included)
    assert "stages.1.0.shortcut.0.weight" in keys and "stages.1.2.norm2.running_var" in keys


@pytest.mark.parametrize("name,shape", ZOO_CASES)
def test_apply_then_invert_is_identity(name, shape):
    model, spec = build(name, shape)
    state = model.state_dict()
    perm = random_permutation(spec, torch.Generator().manual_seed(3))
    permuted = apply_permutation(spec, perm, state)
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    back = apply_permutation(spec, invert(perm), permuted)
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_apply_is_pure():
    model, spec = build("mlp:depth=2,width=8", (4,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_permutation(spec, random_permutation(spec), state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_json_round_trip(tmp_path):
    _, spec = build("resnet20:width=1,norm=bn", (3, 16, 16))
    spec.groups["stage0.stream"].members.append(Member("head.weight", 1, offset=0, outer=1,
                                                       inner=1))
    spec.fixed["head.weight:0"] = "model output"
    again = PermutationSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again.canonical() == spec.canonical() and again.fixed == spec.fixed
    path = tmp_path / "spec.json"
    spec.save(path)
    assert PermutationSpec.load(path).canonical() == spec.canonical()


def test_validate_names_the_problem():
    model, spec = build("mlp:depth=2,width=8", (4,))
    state = model.state_dict()
    bad = PermutationSpec.from_json(spec.to_json())
    bad.groups["hidden0"].size = 9
    with pytest.raises(SpecError, match="size 9"):
        bad.validate(state)
    bad = PermutationSpec.from_json(spec.to_json())
    bad.groups["hidden0"].members.append(Member("nope.weight", 0))
    with pytest.raises(SpecError, match="nope.weight"):
        bad.validate(state)
    bad = PermutationSpec.from_json(spec.to_json())
    bad.groups["hidden0"].members.append(Member("layers.0.bias", 1))
    with pytest.raises(SpecError, match="no axis 1"):
        bad.validate(state)


class ConvFlattenNet(nn.Module):
    """conv -> flatten -> linear: the channel group acts on the linear's in-axis as P (x) I."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def conv_flatten_spec() -> PermutationSpec:
    spec = PermutationSpec()
    spec.add_group("conv", 6, [Member("conv.weight", 0), Member("conv.bias", 0),
                               Member("fc.weight", 1, inner=16)])
    spec.add_group("fc", 5, [Member("fc.weight", 0), Member("fc.bias", 0),
                             Member("out.weight", 1)])
    return spec


def test_structured_member_kron():
    torch.manual_seed(0)
    model = ConvFlattenNet()
    check_spec(model, conv_flatten_spec(), torch.randn(3, 2, 4, 4))
    wrong = conv_flatten_spec()
    wrong.groups["conv"].members[2] = Member("fc.weight", 1, outer=16)  # I (x) P instead
    with pytest.raises(SpecError):
        check_spec(model, wrong, torch.randn(3, 2, 4, 4))


class HeadsNet(nn.Module):
    """A linear layer whose output is split into heads; heads and within-head axes permute."""

    def __init__(self, heads=3, dim=4) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.up = nn.Linear(5, heads * dim)
        self.down = nn.Linear(heads * dim, 2)

    def forward(self, x):
        h = self.up(x).view(-1, self.heads, self.dim)
        h = torch.tanh(h) * h.sum(-1, keepdim=True)  # mixes within a head only
        return self.down(h.flatten(1))


def test_structured_members_heads_and_within_head():
    torch.manual_seed(0)
    model = HeadsNet()
    spec = PermutationSpec()
    spec.add_group("heads", 3, [Member("up.weight", 0, inner=4), Member("up.bias", 0, inner=4),
                                Member("down.weight", 1, inner=4)])
    spec.add_group("within", 4, [Member("up.weight", 0, outer=3), Member("up.bias", 0, outer=3),
                                 Member("down.weight", 1, outer=3)])
    check_spec(model, spec, torch.randn(6, 5), trials=3)


def test_concat_block_offset():
    """A block of an axis (as made by concatenation) permuted on its own."""
    lin_a, lin_b, out = nn.Linear(3, 4), nn.Linear(3, 2), nn.Linear(6, 1)

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = lin_a, lin_b, out

        def forward(self, x):
            return self.out(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))

    spec = PermutationSpec()
    spec.add_group("a", 4, [Member("a.weight", 0), Member("a.bias", 0), Member("out.weight", 1)])
    spec.add_group("b", 2, [Member("b.weight", 0), Member("b.bias", 0),
                            Member("out.weight", 1, offset=4)])
    net = Cat()
    with pytest.raises(SpecError, match="length"):  # a plain member must span the whole axis
        spec.validate(net.state_dict())
    spec.groups["a"].members[2] = Member("out.weight", 1, partial=True)
    check_spec(net, spec, torch.randn(5, 3), trials=3)
    swapped = PermutationSpec.from_json(spec.to_json())
    swapped.groups["b"].members[2] = Member("out.weight", 1, offset=0, partial=True)
    with pytest.raises(SpecError):
        check_spec(net, swapped, torch.randn(5, 3), generator=torch.Generator().manual_seed(1),
                   trials=8)


def test_unknown_model_string():
    with pytest.raises(PermalignError, match="unknown model"):
        zoo.build("transformer:width=3", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(PermalignError, match="bad option"):
        zoo.build("mlp:depht=3", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(PermalignError, match="must be int"):
        zoo.build("mlp:width=wide", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(PermalignError, match="unknown norm"):
        zoo.build("resnet20:norm=gn", input_shape=(1, 8, 8), num_classes=10)


class TiedLM(nn.Module):
    """Embedding -> MLP -> output layer sharing the embedding's weight (tied, one tensor)."""

    def __init__(self, vocab: int = 11, width: int = 6, hidden: int = 9) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)  # (B, T, width)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h)  # (B, T, vocab)


def test_check_spec_permutes_tied_weights_once():
    """Both keys of a tied tensor are members; permuting it twice would break the check."""
    torch.manual_seed(0)
    model = TiedLM()
    spec = PermutationSpec()
    spec.add_group("width", 6, [Member("embed.weight", 1), Member("head.weight", 1),
                                Member("up.weight", 1), Member("down.weight", 0),
                                Member("down.bias", 0)])
    spec.add_group("hidden", 9, [Member("up.weight", 0), Member("up.bias", 0),
                                 Member("down.weight", 1)])
    ids = torch.randint(0, 11, (2, 5))
    check_spec(model, spec, ids, generator=torch.Generator().manual_seed(0), trials=3)
    spec.groups["hidden"].members.pop()  # down's in-axis left out: a wrong spec
    with pytest.raises(SpecError):
        check_spec(model, spec, ids, generator=torch.Generator().manual_seed(0))
