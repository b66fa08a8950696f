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
