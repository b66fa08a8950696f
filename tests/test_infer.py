"""Spec inference: every rule is exercised through check_spec, and real architectures work."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import same_perm
from permalign.errors import SpecError
from permalign.infer import infer_spec
from permalign.match import weight_matching
from permalign.permutation import apply_permutation, check_spec, invert, random_permutation
from permalign.spec import Member
from test_spec import ZOO_CASES, build

warnings.filterwarnings("ignore", category=UserWarning)


def recovers_planted(model: nn.Module, spec, seed: int = 0) -> bool:
    state = model.state_dict()
    perm = random_permutation(spec, torch.Generator().manual_seed(seed))
    result = weight_matching(spec, state, apply_permutation(spec, perm, state), seed=seed)
    return same_perm(result.perm, invert(perm))


def infer_and_verify(model: nn.Module, inputs, kwargs=None, min_groups: int = 1):
    """Infer, check outputs are preserved (several random permutations), recover a plant."""
    torch.manual_seed(0)
    model = model.eval()
    spec = infer_spec(model, inputs, example_kwargs=kwargs)
    assert len(spec.groups) >= min_groups, spec.describe()
    check_spec(model, spec, inputs if isinstance(inputs, tuple) else (inputs,),
               example_kwargs=kwargs, atol=1e-4, rtol=1e-3, trials=3,
               generator=torch.Generator().manual_seed(1))
    assert recovers_planted(model, spec)
    return spec


# ------------------------------------------------------------------ zoo: equal to hand-written
@pytest.mark.parametrize("name,shape", ZOO_CASES)
def test_inferred_zoo_spec_equals_hand_written(name, shape):
    model, spec = build(name, shape)
    inferred = infer_spec(model, torch.randn(2, *shape))
    assert inferred.canonical() == spec.canonical()


# ------------------------------------------------------------------ one module per rule
class Lambda(nn.Module):
    """Two linear layers around ``fn``: the hidden axis is what the rule must get right."""

    def __init__(self, fn, hidden=8, out_hidden=None, extra=None):
        super().__init__()
        self.fn = fn
        self.a = nn.Linear(6, hidden)
        self.b = nn.Linear(out_hidden or hidden, 3)
        self.extra = extra

    def forward(self, x):
        return self.b(self.fn(self, self.a(x)))


RULE_CASES = {
    "relu+gelu+silu+tanh": lambda m, h: torch.tanh(F.silu(F.gelu(torch.relu(h)))) + h.sigmoid(),
    "broadcast add/mul": lambda m, h: h * h.mean(-1, keepdim=True) + 1.0 - h / 3,
    "softmax": lambda m, h: torch.softmax(h, dim=-1) * h,
    "where/clamp/abs": lambda m, h: torch.where(h > 0, h, 0.1 * h).clamp(-1, 1) + h.abs(),
    "reductions": lambda m, h: h - h.amax(-1, keepdim=True) + h.var(-1, keepdim=True)
    + h.sum(-1, keepdim=True) + torch.linalg.vector_norm(h, dim=-1, keepdim=True),
    "dropout/clone/to": lambda m, h: F.dropout(h, 0.5, training=False).clone().to(torch.float32),
    "layer_norm": lambda m, h: F.layer_norm(h, (8,), m.extra.weight, m.extra.bias),
    "rms_norm": lambda m, h: F.rms_norm(h, (8,), m.extra.weight),
    "unsqueeze/expand/sum": lambda m, h: h.unsqueeze(1).expand(-1, 4, -1).sum(1),
    "transpose/matmul": lambda m, h: (h.unsqueeze(-1) @ h.unsqueeze(-2)).transpose(-1, -2).sum(-1),
    "cat": lambda m, h: torch.cat([h, torch.relu(h)], dim=-1),
    "split/chunk": lambda m, h: torch.cat([p * 2 for p in torch.chunk(h, 2, dim=-1)]
                                          + list(torch.split(h, [3, 5], dim=-1)), dim=-1),
    "slice/select": lambda m, h: torch.cat([h[:, 2:], h[:, :2] * h[:, 5:6], h[:, 0:1]], -1),
    "pad": lambda m, h: F.pad(h, (1, 2)),
    "repeat": lambda m, h: h.repeat(1, 2),
    "repeat_interleave": lambda m, h: h.repeat_interleave(2, dim=-1),
    "einsum": lambda m, h: torch.einsum("bi,bj->bij", h, h).sum(1) + torch.einsum("bi->bi", h),
    "view split/merge": lambda m, h: h.view(-1, 2, 4).transpose(1, 2).reshape(-1, 8),
    "stack": lambda m, h: torch.stack([h, 2 * h], dim=1).sum(1),
    "cumsum fixes": lambda m, h: torch.cumsum(h, dim=-1),
    "sort fixes": lambda m, h: torch.sort(h, dim=-1).values,
}
OUT_HIDDEN = {"cat": 16, "split/chunk": 16, "slice/select": 9, "pad": 11, "repeat": 16,
              "repeat_interleave": 16}
EXPECT_NO_GROUPS = {"cumsum fixes", "sort fixes"}


@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_rule_through_check_spec(case):
    torch.manual_seed(0)
    extra = nn.LayerNorm(8) if "norm" in case else None
    model = Lambda(RULE_CASES[case], out_hidden=OUT_HIDDEN.get(case), extra=extra)
    if extra is not None:
        nn.init.normal_(extra.weight)
        nn.init.normal_(extra.bias)
    x = torch.randn(5, 6)
    if case in EXPECT_NO_GROUPS:
        spec = infer_spec(model, x)
        assert all(not m.key.startswith("a.") or m.axis == 1
                   for g in spec.groups.values() for m in g.members)
        assert "a.weight:0" in spec.fixed
        return
    infer_and_verify(model, x)


def test_broken_rule_is_caught():
    """A wrong rule (linear that does not tie its input to the weight's in-axis) must fail."""
    def broken(ctx, args):
        out = ctx.output()
        w = ctx.terms(args["weight"])
        ctx.unify(out[-1], w[0])

    model = Lambda(lambda m, h: torch.relu(h))
    infer_and_verify(model, torch.randn(4, 6))  # the real rule is right for this model
    with pytest.raises(SpecError, match="outputs changed"):
        infer_spec(model.eval(), torch.randn(4, 6), extra_rules={"aten.linear": broken})


def test_unknown_op_names_op_and_place():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return torch.fft.fft(self.a(x)).real

    with pytest.raises(SpecError, match=r"no spec-inference rule for op aten\.\w+.*test_infer"):
        infer_spec(Odd(), torch.randn(2, 4))


# ------------------------------------------------------------------ conv architectures
class ResNetBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (7x7 stem, max-pool, 1x1 downsample), narrow."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            layers.append(nn.Sequential(ResNetBlock(cin, cout, 1 if i == 0 else 2),
                                        ResNetBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseBlock(nn.Module):
    """DenseNet-style: each layer sees the concatenation of all earlier feature maps."""

    def __init__(self, cin=4, growth=3, layers=3, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(1, cin, 3, padding=1)
        self.norms = nn.ModuleList()
        self.convs = nn.ModuleList()
        channels = cin
        for _ in range(layers):
            self.norms.append(nn.BatchNorm2d(channels))
            self.convs.append(nn.Conv2d(channels, growth, 3, padding=1))
            channels += growth
        self.head = nn.Linear(channels * 4 * 4, classes)

    def forward(self, x):
        features = [self.stem(x)]
        for norm, conv in zip(self.norms, self.convs):
            features.append(conv(F.relu(norm(torch.cat(features, 1)))))
        x = F.adaptive_avg_pool2d(torch.cat(features, 1), 4)
        return self.head(x.flatten(1))  # conv -> flatten -> linear: P (x) I


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.grouped = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.gn = nn.GroupNorm(4, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.dw(F.relu(self.stem(x)))))
        x = F.relu(self.gn(self.grouped(F.relu(self.pw(x)))))
        return self.head(x.mean((2, 3)))


def randomise_norms(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.1)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_resnet18_torchvision_style():
    torch.manual_seed(0)
    spec = infer_and_verify(randomise_norms(ResNet18()), torch.randn(2, 3, 32, 32),
                            min_groups=12)
    # 4 residual streams + 8 block-inner groups
    assert len(spec.groups) == 12


def test_densenet_block_concatenation():
    torch.manual_seed(0)
    spec = infer_and_verify(randomise_norms(DenseBlock()), torch.randn(2, 1, 8, 8))
    members = [m for g in spec.groups.values() for m in g.members]
    assert any(m.partial for m in members), "concatenation blocks expected"
    assert any(m.inner == 16 for m in members), "conv->flatten->linear (P x I) expected"


def test_depthwise_grouped_and_groupnorm():
    torch.manual_seed(0)
    spec = infer_and_verify(randomise_norms(DepthwiseSeparable()), torch.randn(2, 3, 8, 8))
    dw_group = next(g for g in spec.groups.values()
                    if any(m.key == "dw.weight" and m.axis == 0 for m in g.members))
    assert any(m.key == "stem.weight" for m in dw_group.members)  # depthwise: in == out


# ------------------------------------------------------------------ attention
def test_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    spec = infer_and_verify(mha, (x, x, x))
    sizes = sorted(g.size for g in spec.groups.values())
    assert 4 in sizes  # whole heads


def test_transformer_encoder_layer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    infer_and_verify(layer, torch.randn(2, 5, 16), min_groups=2)


class TinyLM(nn.Module):
    """Embedding -> pre-norm block with sdpa -> tied output head."""

    def __init__(self, vocab=20, dim=16, heads=4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.o = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # weight tying

    def forward(self, ids):
        x = self.embed(ids)  # (B, T, D)
        h = self.norm(x)
        b, t, d = h.shape
        q, k, v = (p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return self.head(x)


def test_sdpa_heads_and_tied_embedding():
    torch.manual_seed(0)
    model = TinyLM()
    spec = infer_and_verify(model, torch.randint(0, 20, (2, 6)), min_groups=4)
    stream = next(g for g in spec.groups.values()
                  if any(m.key == "embed.weight" and m.axis == 1 for m in g.members))
    keys = {m.key for m in stream.members}
    assert "head.weight" in keys  # the tied head shares the stream permutation
    heads = [g for g in spec.groups.values() if g.size == 4]
    assert heads and any(m.inner == 4 for m in heads[0].members)
    within = [g for g in spec.groups.values() if any(m.outer == 4 for m in g.members)]
    assert len(within) == 2  # q/k share one, v/o another


# ------------------------------------------------------------------ Hugging Face models
def hf_cases():
    transformers = pytest.importorskip("transformers")  # skips only these tests if missing
    transformers.logging.set_verbosity_error()
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                              GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, ViTConfig,
                              ViTForImageClassification)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    return {
        "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(
            n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16, bos_token_id=0,
            eos_token_id=0)), (ids,), {"use_cache": False}),
        "bert": (lambda: BertForSequenceClassification(BertConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            vocab_size=50, max_position_embeddings=16, num_labels=3)), (ids,), {}),
        "vit": (lambda: ViTForImageClassification(ViTConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            image_size=16, patch_size=4, num_labels=3)),
            (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),), {}),
        "llama-gqa": (lambda: LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=50, max_position_embeddings=16)), (ids,),
            {"use_cache": False}),
    }


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit", "llama-gqa"])
def test_hugging_face_models(name):
    factory, args, kwargs = hf_cases()[name]
    torch.manual_seed(0)
    model = factory()
    spec = infer_and_verify(model, args, kwargs, min_groups=5)
    # the residual stream is one group spanning every layer
    biggest = max(spec.groups.values(), key=lambda g: len(g.members))
    assert len({m.key.split(".")[-2] for m in biggest.members}) > 3
    if name == "llama-gqa":
        # kv heads (2) and queries per kv head (2) are separate factors of q's head axis
        q_groups = [g for g in spec.groups.values()
                    if any(m.key.endswith("layers.0.self_attn.q_proj.weight") and m.axis == 0
                           for m in g.members)]
        assert sorted(g.size for g in q_groups) == [2, 2]


# ------------------------------------------------------------------ issue 10, phase 2
def free_places(spec) -> set[str]:
    """``key:axis`` of every state-dict axis some group permutes."""
    return {f"{m.key}:{m.axis}" for g in spec.groups.values() for m in g.members}


def assert_preserved(model: nn.Module, spec, inputs: tuple, trials: int = 3) -> None:
    """Permute at random, load_state_dict, forward (float64 where it runs): unchanged."""
    from permalign.testing.harness import permuted_outputs_differ
    for seed in range(trials):
        diff = permuted_outputs_differ(model, spec, inputs, {},
                                       torch.Generator().manual_seed(seed))
        assert diff < 1e-9, f"outputs changed by {diff:.3g} (relative)"


def relative_index(window: int) -> torch.Tensor:
    """Swin's (n, n) relative position index of an n = window x window window (int64)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)  # (2, n)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1  # (n, n, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class RelativeBiasAttention(nn.Module):
    """Windowed attention with a relative position bias looked up by an integer index: a
    persistent buffer (torchvision Swin/MaxViT) or built in forward (BEiT, meshgrid)."""

    def __init__(self, window: int = 3, heads: int = 2, dim: int = 8, in_forward: bool = False):
        super().__init__()
        self.window, self.heads, self.in_forward = window, heads, in_forward
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        if not in_forward:
            self.register_buffer("index", relative_index(window))  # persistent, int64

    def forward(self, x):  # (B, n, dim)
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        index = relative_index(self.window) if self.in_forward else self.index
        bias = self.table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1)  # (heads, n, n)
        attn = (q @ k.transpose(-1, -2) + bias).softmax(-1)  # (B, heads, n, n)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


@pytest.mark.parametrize("in_forward", [False, True], ids=["buffer", "meshgrid"])
def test_integer_index_is_never_a_unit(in_forward):
    """An int index (buffer or built from arange + meshgrid) is fixed and relates to what it
    indexes; heads stay free. Fails if integer buffers become groups (torchvision Swin)."""
    torch.manual_seed(0)
    model = RelativeBiasAttention(in_forward=in_forward).eval()
    x = torch.randn(2, 9, 8)
    spec = infer_spec(model, x, check=False)
    assert_preserved(model, spec, (x,))
    assert "qkv.weight:0" in free_places(spec)
    if not in_forward:
        assert "index:0" in spec.fixed and "index:1" in spec.fixed
        assert not any(m.key == "index" for g in spec.groups.values() for m in g.members)


class MeshOfParameters(nn.Module):
    """meshgrid of two learned vectors: each output axis carries one input's units."""

    def __init__(self):
        super().__init__()
        self.p, self.q = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(5))
        self.fc = nn.Linear(5, 3)

    def forward(self, x):  # (B, 5)
        gp, gq = torch.meshgrid(self.p, self.q, indexing="ij")  # (4, 5) each
        return self.fc(x * (gp * gq).sum(0))


def test_meshgrid_carries_input_axes():
    """Fails if meshgrid's outputs are not tied to its inputs (q would move without fc)."""
    torch.manual_seed(0)
    model = MeshOfParameters().eval()
    x = torch.randn(3, 5)
    spec = infer_spec(model, x, check=False)
    assert_preserved(model, spec, (x,))


class ValueIndexed(nn.Module):
    """A table looked up by an index computed from hidden units: the index tensor's axes are
    the result's, so the hidden units stay one group from fc1 through the lookup to fc2."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.table = nn.Parameter(torch.randn(2, 4))

    def forward(self, x):  # (B, 6)
        idx = (self.fc1(x) > 0).long()  # (B, 8)
        return self.fc2(self.table[idx].sum(-1))  # (B, 8, 4) -> (B, 8) -> (B, 3)


def test_index_relates_index_axes_to_result():
    """Fails if the index rule fixes the result (no group) or leaves it unrelated (two groups
    that change the outputs)."""
    torch.manual_seed(0)
    model = ValueIndexed().eval()
    x = torch.randn(16, 6)
    spec = infer_spec(model, x, check=False)
    assert_preserved(model, spec, (x,))
    hidden = [g for g in spec.groups.values() if {m.key for m in g.members} >= {"fc1.weight",
                                                                               "fc2.weight"}]
    assert hidden and {(m.key, m.axis) for m in hidden[0].members} >= {("fc1.weight", 0),
                                                                       ("fc2.weight", 1)}


def test_integer_member_is_a_spec_error():
    """A hand-written spec naming an integer buffer: one-line SpecError, not a KeyError."""
    from permalign.spec import PermutationSpec
    model = RelativeBiasAttention()
    spec = PermutationSpec.from_json({"groups": {"index": {"size": 9, "members": [
        {"key": "index", "axis": 0}]}}})
    state = model.state_dict()
    with pytest.raises(SpecError, match="int64"):
        spec.validate(state)
    with pytest.raises(SpecError, match="int64"):
        weight_matching(spec, state, state)


class Scan(nn.Module):
    """Mamba-style recurrence started from ``torch.zeros``: the constant state takes whatever
    channels it meets."""

    def __init__(self):
        super().__init__()
        self.fc_in, self.fc_out = nn.Linear(6, 8), nn.Linear(8, 3)
        self.decay = nn.Parameter(torch.randn(8))

    def forward(self, x):  # (B, T, 6)
        u = self.fc_in(x)  # (B, T, 8)
        h = torch.zeros(x.shape[0], 8, dtype=x.dtype)
        scale = u.new_ones(8)
        states = []
        for t in range(x.shape[1]):
            h = torch.sigmoid(self.decay) * h + u[:, t] * scale
            states.append(h)
        return self.fc_out(torch.stack(states, 1))


def test_constant_factory_adapts():
    """Fails if zeros/new_ones fix the axes they meet (Mamba lost its SSM channels)."""
    torch.manual_seed(0)
    model = Scan().eval()
    x = torch.randn(2, 4, 6)
    spec = infer_spec(model, x, check=False)
    assert_preserved(model, spec, (x,))
    assert {"fc_in.weight:0", "decay:0", "fc_out.weight:1"} <= free_places(spec)


class WindowsThenMerge(nn.Module):
    """timm Swin at a tiny size: 6x6 tokens in 3x3 windows, then 2x2 patch merging. After
    window reverse each spatial axis is (window, position) = (2, 3); merging views it as
    (3, 2), which cannot be tracked, but the channels after it pass through."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.c = c
        self.embed, self.mix = nn.Linear(5, c), nn.Linear(c, c)
        self.merge, self.head = nn.Linear(4 * c, 8), nn.Linear(8, 3)

    def forward(self, x):  # (B, 6, 6, 5)
        b, c = x.shape[0], self.c
        h = self.embed(x)  # (B, 6, 6, C)
        w = h.view(b, 2, 3, 2, 3, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 3, 3, c)  # windows
        w = self.mix(w)
        h = h + w.view(b, 2, 2, 3, 3, c).permute(0, 1, 3, 2, 4, 5).reshape(b, 6, 6, c)
        h = h.reshape(b, 3, 2, 3, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)  # (B, 3, 3, 4C)
        return self.head(self.merge(h).mean((1, 2)))


def test_reshape_fallback_is_segment_local():
    """Fails if an untrackable regrouping of spatial axes also fixes the channels."""
    torch.manual_seed(0)
    model = WindowsThenMerge().eval()
    x = torch.randn(2, 6, 6, 5)
    spec = infer_spec(model, x, check=False)
    assert_preserved(model, spec, (x,))
    assert {"embed.weight:0", "mix.weight:0", "merge.weight:1"} <= free_places(spec)


class ChannelShuffle(nn.Module):
    """ShuffleNetV2 unit: split, one branch convolved, concatenated, channels shuffled."""

    def __init__(self):
        super().__init__()
        self.stem, self.branch = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):  # (B, 3, H, W)
        keep, rest = self.stem(x).chunk(2, dim=1)
        h = torch.cat([keep, torch.relu(self.branch(rest))], 1)  # (B, 8, H, W)
        b, c, hh, ww = h.shape
        h = h.view(b, 2, c // 2, hh, ww).transpose(1, 2).reshape(b, c, hh, ww)
        return self.head(h).mean((2, 3))


def test_channel_shuffle_keeps_branch_channels():
    """Fails if a channel shuffle fixes the branch's output channels (ShuffleNet)."""
    torch.manual_seed(0)
    model = ChannelShuffle().eval()
    x = torch.randn(2, 3, 4, 4)
    spec = infer_spec(model, x, check=False)
    assert_preserved(model, spec, (x,))
    assert {"branch.weight:0", "branch.weight:1"} <= free_places(spec)


class GroupedExperts(nn.Module):
    """Mixtral-style routing as transformers 5 runs it on CPU: sort by expert, histc counts,
    cumsum offsets, two grouped products, index_put_ inverse order, weighted sum over top k."""

    def __init__(self, hidden: int = 8, inner: int = 4, experts: int = 3, k: int = 2,
                 mix: str = ""):
        super().__init__()
        self.k, self.experts = k, experts
        self.mix = mix  # "centre" / "norm": use the mean of the activations over all experts;
        # "slice": also pair two experts' units directly
        self.embed, self.head = nn.Linear(5, hidden), nn.Linear(hidden, 3)
        self.router = nn.Linear(hidden, experts, bias=False)
        self.gate_up = nn.Parameter(0.3 * torch.randn(experts, 2 * inner, hidden))
        self.down = nn.Parameter(0.3 * torch.randn(experts, hidden, inner))

    def forward(self, x):  # (T, 5)
        grouped_mm = torch.ops.transformers.grouped_mm_fallback
        h = self.embed(x)  # (T, H)
        weights, ids = self.router(h).softmax(-1).topk(self.k, -1)  # (T, k)
        ids, order = ids.reshape(-1).sort()  # (T k,)
        xs = h[order // self.k]  # (T k, H), grouped by expert
        offs = torch.histc(ids.float(), bins=self.experts, min=0, max=self.experts - 1
                           ).cumsum(0).to(torch.int32)
        gate, up = grouped_mm(xs, self.gate_up.transpose(1, 2), offs).chunk(2, -1)
        act = F.silu(gate) * up  # (T k, I): row r holds the units of its own expert
        if self.mix == "centre":
            act = act - act.mean(0)
        ys = grouped_mm(act, self.down.transpose(1, 2), offs)  # (T k, H)
        if self.mix == "norm":
            ys = ys * act.mean(0).norm()
        if self.mix == "slice":  # experts 0 and 1 unit by unit, outside the routed path
            pair = F.linear(h, self.gate_up[0]) * F.linear(h, self.gate_up[1])  # (T, 2I)
            h = h * pair.sum(-1, keepdim=True)
        ys = ys * weights.reshape(-1)[order].unsqueeze(-1)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel())
        y = ys[inverse].view(x.shape[0], self.k, -1).sum(1)  # (T, H)
        return self.head(h + y)


def test_grouped_mm_experts_fixed_hidden_free():
    """Fails without histc/grouped-mm/index_put_ rules, or if the rules let the experts move
    (only the verified carrier pass of ``infer/carriers.py`` may, as one group)."""
    from permalign.infer.graph import export_graph, infer_from_exported
    pytest.importorskip("transformers.integrations.moe")
    torch.manual_seed(0)
    model = GroupedExperts().eval()
    x = torch.randn(6, 5)
    rules_only = infer_from_exported(model, export_graph(model, (x,), {}))
    assert "gate_up:0" in rules_only.fixed and "router.weight:0" in rules_only.fixed
    spec = infer_spec(model, x, check=False)
    assert_preserved(model, spec, (x,))
    assert {"embed.weight:0", "gate_up:2", "down:1", "gate_up:1", "down:2"} <= free_places(spec)
    (carrier, _), = spec.carried().items()
    assert {(m.key, m.axis) for m in spec.groups[carrier].members} == {
        ("router.weight", 0), ("gate_up", 0), ("down", 0)}


class TinyContribution(nn.Module):
    """A bias whose effect on the outputs (3e-6 relative) is below float32 round-off."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.small = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return self.fc(x) + 3e-6 * self.small


def test_check_spec_compares_in_float64():
    """A wrong spec (permuting ``small`` alone) passes a float32 comparison but not float64."""
    from permalign.spec import PermutationSpec
    torch.manual_seed(0)
    model = TinyContribution().eval()
    wrong = PermutationSpec.from_json({"groups": {"s": {"size": 4, "members": [
        {"key": "small", "axis": 0}]}}})
    x = torch.randn(3, 4)
    check_spec(model, wrong, x, float64=False)  # float32 cannot see it
    with pytest.raises(SpecError, match="float64"):
        check_spec(model, wrong, x, generator=torch.Generator().manual_seed(0))


class Interleaved(nn.Module):
    """Gate and up projections interleaved in one output (GPT-OSS): ``x[..., ::2]`` and
    ``x[..., 1::2]``; a strided slice that does not cover whole units (``x[..., :6:3]``) in
    ``mode="partial"``."""

    def __init__(self, mode: str = ""):
        super().__init__()
        self.mode = mode
        self.gate_up, self.down = nn.Linear(5, 12), nn.Linear(6, 3)
        self.extra = nn.Linear(2, 3)

    def forward(self, x):
        h = self.gate_up(x)  # (T, 12): units (6, 2) row-major
        y = self.down(torch.sigmoid(h[..., ::2]) * h[..., 1::2])
        if self.mode == "partial":
            y = y + self.extra(h[..., :6:3])
        return y


@pytest.mark.parametrize("mode", ["", "partial"])
def test_strided_slice_reads_interleaved_units(mode):
    """``x[..., 0::2]`` and ``x[..., 1::2]`` across a whole axis share the units of a (units, 2)
    product: the hidden axis is a group of 6 with the gate/up pair as ``inner=2``; a strided
    slice that does not cover whole units fixes the axis."""
    torch.manual_seed(0)
    model, x = Interleaved(mode).eval(), torch.randn(4, 5)
    spec = infer_spec(model, x)
    assert_preserved(model, spec, (x,))
    if mode:
        assert "gate_up.weight:0" in spec.fixed
        return
    (group,) = [g for g in spec.groups.values()
                if any(m.key == "gate_up.weight" for m in g.members)]
    assert group.size == 6
    assert Member("gate_up.weight", 0, inner=2) in group.members
    assert Member("down.weight", 1) in group.members
