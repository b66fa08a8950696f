"""A catalogue of real architectures as their libraries ship them, at tiny sizes.

Each :class:`Case` builds one model class from transformers, torchvision or timm with random
weights and a small configuration (no download), and makes example inputs for it. The cases are
what :mod:`permalign.testing.harness` runs spec inference and matching on; ``traits`` name the
structures a case exercises (residual streams, grouped convolutions, attention variants, ...).

torchvision and timm do not import next to every torch build; :meth:`Case.unavailable` says why
a case cannot run in the current environment instead of failing.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import nn

from ..errors import first_line

Inputs = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    """One architecture: how to build it small, and what to call it with."""

    name: str  # "<library>/<architecture>"
    kind: str  # cnn, vision-transformer, encoder, decoder, encoder-decoder, moe, ssm
    build: Callable[[], nn.Module]
    inputs: Callable[[], Inputs]
    traits: tuple[str, ...] = ()
    slow: bool = False  # takes more than a few seconds on 2 CPU cores
    free: tuple[str, ...] = ()  # "key:axis" places that have a permutation symmetry

    @property
    def library(self) -> str:
        return self.name.split("/", 1)[0]

    def unavailable(self) -> str | None:
        """Why this case cannot run here (its library does not import), or None."""
        return library_unavailable(self.library)

    def model(self, seed: int = 0) -> nn.Module:
        """The model with weights drawn from ``seed``, in eval mode.

        Tensors that the library initialises to one constant (norm weights and biases,
        running statistics, zero biases, layer scales) are perturbed, so that a spec that
        forgets to permute one of them changes the outputs instead of passing by symmetry.
        """
        torch.manual_seed(seed)
        model = self.build().eval()
        perturb_constants(model, torch.Generator().manual_seed(seed))
        return model


@torch.no_grad()
def perturb_constants(model: nn.Module, generator: torch.Generator) -> None:
    """Give every floating tensor of the state dict whose entries are all equal distinct
    entries: positive constants c become c * U(0.5, 1.5), others c + N(0, 0.1**2)."""
    for tensor in model.state_dict(keep_vars=True).values():
        t = tensor.data
        if not t.is_floating_point() or t.numel() < 2 or not bool((t == t.flatten()[0]).all()):
            continue
        c = float(t.flatten()[0])
        noise = torch.rand(t.shape, generator=generator) if c > 0 else torch.randn(
            t.shape, generator=generator)
        t.copy_(c * (0.5 + noise) if c > 0 else c + 0.1 * noise)


@cache
def library_unavailable(library: str) -> str | None:
    """None when ``library`` imports here, else a one-line reason."""
    try:
        module = importlib.import_module(library)
        if library == "transformers":
            module.logging.set_verbosity_error()
    except Exception as exc:  # a broken install raises anything (RuntimeError for torchvision)
        first = first_line(exc, 160)
        return f"{library} does not import with torch {torch.__version__}: {first}"
    return None


# ------------------------------------------------------------------ example inputs
def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(size: int = 32, channels: int = 3, batch: int = 2) -> Callable[[], Inputs]:
    return lambda: ((torch.randn(batch, channels, size, size, generator=_gen()),), {})


def tokens(vocab: int = 50, length: int = 8, batch: int = 2, **kwargs: Any
           ) -> Callable[[], Inputs]:
    """Token ids (avoiding id 0..2, often special) plus fixed keyword arguments."""
    return lambda: ((torch.randint(3, vocab, (batch, length), generator=_gen()),), dict(kwargs))


def seq2seq(vocab: int = 50, length: int = 8, target: int = 6, batch: int = 2
            ) -> Callable[[], Inputs]:
    def make() -> Inputs:
        ids = torch.randint(3, vocab, (batch, length), generator=_gen())
        dec = torch.randint(3, vocab, (batch, target), generator=_gen(1))
        return (ids,), {"decoder_input_ids": dec, "use_cache": False}
    return make


# ------------------------------------------------------------------ transformers
def _hf(model_class: str, config_class: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers
        cfg = getattr(transformers, config_class)(**config)
        return getattr(transformers, model_class)(cfg)
    return build


LM = dict(vocab_size=50, max_position_embeddings=32)  # shared by the small language models
ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
VIT = dict(ENC, image_size=32, patch_size=8, num_labels=5)
STAGES = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=5)


def _whisper_inputs() -> Inputs:
    features = torch.randn(2, 8, 32, generator=_gen())  # (batch, mel bins, frames)
    dec = torch.randint(3, 50, (2, 6), generator=_gen(1))
    return (features,), {"decoder_input_ids": dec, "use_cache": False}


TRANSFORMERS = [
    # vision: convolutional
    Case("transformers/resnet", "cnn", _hf(
        "ResNetForImageClassification", "ResNetConfig", embedding_size=16,
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="bottleneck",
        num_labels=5), images(), ("residual", "batchnorm")),
    Case("transformers/regnet", "cnn", _hf(
        "RegNetForImageClassification", "RegNetConfig", embedding_size=16,
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], groups_width=8, num_labels=5),
        images(), ("residual", "grouped", "squeeze-excite")),
    Case("transformers/bit", "cnn", _hf(
        "BitForImageClassification", "BitConfig", embedding_size=16,
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_groups=4, num_labels=5),
        images(), ("residual", "groupnorm", "weight-standardisation")),
    Case("transformers/convnext", "cnn", _hf(
        "ConvNextForImageClassification", "ConvNextConfig", **STAGES), images(),
        ("residual", "depthwise", "layernorm", "layer-scale")),
    Case("transformers/convnextv2", "cnn", _hf(
        "ConvNextV2ForImageClassification", "ConvNextV2Config", **STAGES), images(),
        ("residual", "depthwise", "global-response-norm")),
    Case("transformers/mobilenet_v1", "cnn", _hf(
        "MobileNetV1ForImageClassification", "MobileNetV1Config", depth_multiplier=0.25,
        image_size=32, num_labels=5), images(), ("depthwise",)),
    Case("transformers/mobilenet_v2", "cnn", _hf(
        "MobileNetV2ForImageClassification", "MobileNetV2Config", depth_multiplier=0.25,
        image_size=32, num_labels=5), images(), ("residual", "depthwise", "inverted")),
    Case("transformers/efficientnet", "cnn", _hf(
        "EfficientNetForImageClassification", "EfficientNetConfig", image_size=32,
        width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=5),
        images(), ("residual", "depthwise", "squeeze-excite")),
    Case("transformers/poolformer", "cnn", _hf(
        "PoolFormerForImageClassification", "PoolFormerConfig", hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1], num_labels=5), images(), ("residual", "groupnorm", "layer-scale")),
    # vision: transformers
    Case("transformers/vit", "vision-transformer", _hf(
        "ViTForImageClassification", "ViTConfig", **VIT), images(),
        ("global-attention", "cls-token")),
    Case("transformers/deit", "vision-transformer", _hf(
        "DeiTForImageClassificationWithTeacher", "DeiTConfig", **VIT), images(),
        ("global-attention", "distillation-token")),
    Case("transformers/beit", "vision-transformer", _hf(
        "BeitForImageClassification", "BeitConfig", **VIT, use_relative_position_bias=True,
        use_mean_pooling=True), images(), ("global-attention", "relative-position-index",
                                           "layer-scale")),
    Case("transformers/dinov2", "vision-transformer", _hf(
        "Dinov2ForImageClassification", "Dinov2Config", hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=8, num_labels=5),
        images(), ("global-attention", "layer-scale")),
    Case("transformers/swin", "vision-transformer", _hf(
        "SwinForImageClassification", "SwinConfig", image_size=32, patch_size=2, embed_dim=16,
        depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5), images(),
        ("windowed-attention", "relative-position-index", "patch-merging")),
    Case("transformers/swinv2", "vision-transformer", _hf(
        "Swinv2ForImageClassification", "Swinv2Config", image_size=32, patch_size=2,
        embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5), images(),
        ("windowed-attention", "continuous-position-bias", "patch-merging")),
    Case("transformers/levit", "vision-transformer", _hf(
        "LevitForImageClassificationWithTeacher", "LevitConfig", image_size=64,
        hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
        key_dim=[8, 8, 8], num_labels=5), images(64),
        ("attention-bias-index", "subsampled-attention", "batchnorm")),
    Case("transformers/mobilevit", "vision-transformer", _hf(
        "MobileViTForImageClassification", "MobileViTConfig", image_size=64,
        hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        num_attention_heads=2, num_labels=5), images(64),
        ("depthwise", "patch-unfold", "global-attention")),
    Case("transformers/segformer", "vision-transformer", _hf(
        "SegformerForImageClassification", "SegformerConfig", hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1], decoder_hidden_size=32,
        num_labels=5), images(), ("spatial-reduction-attention", "overlapping-patches")),
    # CvT: stage s needs depth > s (its drop-path rates are indexed by stage)
    Case("transformers/cvt", "vision-transformer", _hf(
        "CvtForImageClassification", "CvtConfig", embed_dim=[16, 32, 64], num_heads=[1, 2, 4],
        depth=[1, 2, 3], num_labels=5), images(), ("convolutional-projection", "cls-token")),
    # text: encoders
    Case("transformers/bert", "encoder", _hf(
        "BertForSequenceClassification", "BertConfig", **ENC, **LM, num_labels=3), tokens(),
        ("global-attention", "absolute-positions")),
    Case("transformers/roberta", "encoder", _hf(
        "RobertaForMaskedLM", "RobertaConfig", **ENC, **LM, pad_token_id=1), tokens(),
        ("tied-embeddings", "padding-aware-positions")),
    Case("transformers/albert", "encoder", _hf(
        "AlbertForMaskedLM", "AlbertConfig", embedding_size=16, **ENC, **LM), tokens(),
        ("shared-layers", "factorised-embedding", "tied-embeddings")),
    Case("transformers/distilbert", "encoder", _hf(
        "DistilBertForSequenceClassification", "DistilBertConfig", dim=32, n_layers=2,
        n_heads=4, hidden_dim=64, **LM, num_labels=3), tokens(), ("global-attention",)),
    Case("transformers/electra", "encoder", _hf(
        "ElectraForPreTraining", "ElectraConfig", embedding_size=16, **ENC, **LM), tokens(),
        ("factorised-embedding",)),
    # text: decoders
    Case("transformers/gpt2", "decoder", _hf(
        "GPT2LMHeadModel", "GPT2Config", n_layer=2, n_embd=32, n_head=4, vocab_size=50,
        n_positions=32), tokens(use_cache=False), ("tied-embeddings", "conv1d-projections")),
    Case("transformers/gpt_neo", "decoder", _hf(
        "GPTNeoForCausalLM", "GPTNeoConfig", hidden_size=32, num_layers=2, num_heads=4,
        attention_types=[[["global", "local"], 1]], window_size=4, **LM),
        tokens(use_cache=False), ("local-attention", "tied-embeddings")),
    Case("transformers/llama", "decoder", _hf(
        "LlamaForCausalLM", "LlamaConfig", **ENC, num_key_value_heads=2, **LM),
        tokens(use_cache=False), ("gqa", "rotary", "rmsnorm", "gated-mlp")),
    Case("transformers/mistral", "decoder", _hf(
        "MistralForCausalLM", "MistralConfig", **ENC, num_key_value_heads=2, sliding_window=4,
        **LM), tokens(use_cache=False), ("gqa", "rotary", "sliding-window")),
    Case("transformers/qwen2", "decoder", _hf(
        "Qwen2ForCausalLM", "Qwen2Config", **ENC, num_key_value_heads=2, **LM),
        tokens(use_cache=False), ("gqa", "rotary", "qkv-bias")),
    Case("transformers/gemma", "decoder", _hf(
        "GemmaForCausalLM", "GemmaConfig", **ENC, num_key_value_heads=1, head_dim=8, **LM),
        tokens(use_cache=False), ("multi-query", "rotary", "tied-embeddings",
                                  "scaled-embedding")),
    Case("transformers/phi", "decoder", _hf(
        "PhiForCausalLM", "PhiConfig", **ENC, partial_rotary_factor=0.5, **LM),
        tokens(use_cache=False), ("partial-rotary", "parallel-block")),
    Case("transformers/gpt_neox", "decoder", _hf(
        "GPTNeoXForCausalLM", "GPTNeoXConfig", **ENC, rotary_pct=0.5, **LM),
        tokens(use_cache=False), ("partial-rotary", "fused-qkv", "parallel-block")),
    Case("transformers/opt", "decoder", _hf(
        "OPTForCausalLM", "OPTConfig", hidden_size=32, num_hidden_layers=2, ffn_dim=64,
        num_attention_heads=4, word_embed_proj_dim=32, **LM), tokens(use_cache=False),
        ("learned-positions", "tied-embeddings")),
    Case("transformers/falcon", "decoder", _hf(
        "FalconForCausalLM", "FalconConfig", hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, alibi=True, vocab_size=50), tokens(use_cache=False),
        ("alibi", "multi-query", "parallel-block")),
    Case("transformers/bloom", "decoder", _hf(
        "BloomForCausalLM", "BloomConfig", hidden_size=32, n_layer=2, n_head=4, vocab_size=50),
        tokens(use_cache=False), ("alibi", "fused-qkv", "embedding-layernorm")),
    Case("transformers/mpt", "decoder", _hf(
        "MptForCausalLM", "MptConfig", d_model=32, n_heads=4, n_layers=2, expansion_ratio=2,
        vocab_size=50, max_seq_len=32), tokens(use_cache=False), ("alibi", "fused-qkv")),
    # text: encoder-decoders
    Case("transformers/t5", "encoder-decoder", _hf(
        "T5ForConditionalGeneration", "T5Config", d_model=32, d_kv=8, d_ff=64, num_layers=2,
        num_decoder_layers=2, num_heads=4, vocab_size=50, decoder_start_token_id=0),
        seq2seq(), ("relative-position-buckets", "cross-attention", "rmsnorm")),
    Case("transformers/bart", "encoder-decoder", _hf(
        "BartForConditionalGeneration", "BartConfig", d_model=32, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, **LM), seq2seq(),
        ("cross-attention", "tied-embeddings", "learned-positions")),
    Case("transformers/whisper", "encoder-decoder", _hf(
        "WhisperForConditionalGeneration", "WhisperConfig", d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16,
        max_target_positions=16, vocab_size=50, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1), _whisper_inputs,
        ("conv-frontend", "cross-attention", "sinusoidal-positions")),
    # mixture of experts, state space
    Case("transformers/mixtral", "moe", _hf(
        "MixtralForCausalLM", "MixtralConfig", **ENC, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, **LM), tokens(use_cache=False),
        ("mixture-of-experts", "gqa", "rotary"),
        # each expert's hidden units (one group per expert), the residual stream, and the
        # experts themselves with the router's rows (a carrier group)
        free=("model.layers.0.mlp.experts.gate_up_proj:1",
              "model.layers.1.mlp.experts.down_proj:2",
              "model.layers.0.mlp.experts.gate_up_proj:2",
              "model.layers.0.mlp.gate.weight:0", "model.layers.1.mlp.experts.down_proj:0")),
    Case("transformers/qwen2_moe", "moe", _hf(
        "Qwen2MoeForCausalLM", "Qwen2MoeConfig", **ENC, num_key_value_heads=2, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24,
        decoder_sparse_step=1, **LM), tokens(use_cache=False),
        ("mixture-of-experts", "shared-expert", "gqa", "rotary"),
        free=("model.layers.0.mlp.gate.weight:0", "model.layers.0.mlp.experts.down_proj:0",
              "model.layers.1.mlp.shared_expert.up_proj.weight:0")),
    Case("transformers/qwen3_moe", "moe", _hf(
        "Qwen3MoeForCausalLM", "Qwen3MoeConfig", **ENC, num_key_value_heads=2, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8, **LM),
        tokens(use_cache=False), ("mixture-of-experts", "qk-norm", "gqa", "rotary"),
        free=("model.layers.0.mlp.gate.weight:0", "model.layers.0.mlp.experts.gate_up_proj:1")),
    Case("transformers/olmoe", "moe", _hf(
        "OlmoeForCausalLM", "OlmoeConfig", **ENC, num_key_value_heads=2, num_experts=4,
        num_experts_per_tok=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **LM),
        tokens(use_cache=False), ("mixture-of-experts", "qk-norm", "rotary"),
        free=("model.layers.1.mlp.gate.weight:0", "model.layers.1.mlp.experts.gate_up_proj:0")),
    # group-limited routing (n_group > 1): experts may only move within their group, which a
    # carrier group cannot express, so the experts axis stays fixed (each expert's units move)
    Case("transformers/deepseek_v3", "moe", _hf(
        "DeepseekV3ForCausalLM", "DeepseekV3Config", hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
        moe_intermediate_size=16, n_routed_experts=4, n_shared_experts=1,
        num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
        q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **LM),
        tokens(use_cache=False), ("mixture-of-experts", "group-limited-routing", "mla"),
        free=("model.layers.1.mlp.experts.gate_up_proj:1",)),
    # interleaved gate/up columns (x[..., ::2], x[..., 1::2]); experts picked in a Python loop
    # by data-dependent indices, so all experts' units share one group
    Case("transformers/gpt_oss", "moe", _hf(
        "GptOssForCausalLM", "GptOssConfig", hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=16,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], **LM), tokens(use_cache=False),
        ("mixture-of-experts", "interleaved-gate-up", "attention-sinks"),
        free=("model.layers.0.mlp.experts.gate_up_proj:2",
              "model.layers.0.mlp.experts.down_proj:1")),
    # full widths as published (slow): coordinate descent from the identity gets stuck more
    # often as groups grow
    Case("transformers/deit-tiny-full", "vision-transformer", _hf(
        "ViTForImageClassification", "ViTConfig", hidden_size=192, num_hidden_layers=12,
        num_attention_heads=3, intermediate_size=768, image_size=224, patch_size=16,
        num_labels=10), images(224), ("global-attention", "cls-token", "full-size"), slow=True),
    Case("transformers/mobilenet_v2-full", "cnn", _hf(
        "MobileNetV2ForImageClassification", "MobileNetV2Config", image_size=64, num_labels=10),
        images(64), ("residual", "depthwise", "inverted", "full-size"), slow=True),
    Case("transformers/mamba", "ssm", _hf(
        "MambaForCausalLM", "MambaConfig", hidden_size=32, state_size=4, num_hidden_layers=2,
        vocab_size=50, expand=2, conv_kernel=4), tokens(use_cache=False),
        ("selective-scan", "depthwise-causal-conv", "tied-embeddings"),
        free=("backbone.layers.0.mixer.in_proj.weight:0",)),
]


# ------------------------------------------------------------------ torchvision
def _tv(path: str, *args: Any, **kwargs: Any) -> Callable[[], nn.Module]:
    """``torchvision.models.<module>.<Class>(*args, **kwargs)``; args may be callables of the
    imported module (for config objects)."""
    def build() -> nn.Module:
        module_name, _, attr = path.rpartition(".")
        module = importlib.import_module(f"torchvision.models.{module_name}")
        resolved = [a(module) if callable(a) else a for a in args]
        kw = {k: v(module) if callable(v) else v for k, v in kwargs.items()}
        return getattr(module, attr)(*resolved, **kw)
    return build


TORCHVISION = [
    Case("torchvision/resnet18", "cnn", _tv(
        "resnet.ResNet", lambda m: m.BasicBlock, [1, 1, 1, 1], num_classes=10), images(),
        ("residual", "batchnorm", "strided-shortcut")),
    Case("torchvision/resnext", "cnn", _tv(
        "resnet.ResNet", lambda m: m.Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4,
        num_classes=10), images(), ("residual", "grouped"), slow=True),
    Case("torchvision/densenet", "cnn", _tv(
        "densenet.DenseNet", growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16,
        bn_size=2, num_classes=10), images(), ("dense-concat", "batchnorm")),
    Case("torchvision/mobilenet_v2", "cnn", _tv(
        "mobilenetv2.MobileNetV2", width_mult=0.25, num_classes=10), images(),
        ("residual", "depthwise", "inverted")),
    Case("torchvision/mobilenet_v3", "cnn", _tv(
        "mobilenetv3.mobilenet_v3_small", width_mult=0.25, num_classes=10), images(),
        ("residual", "depthwise", "squeeze-excite", "hardswish")),
    Case("torchvision/efficientnet", "cnn", _tv(
        "efficientnet.EfficientNet", lambda m: m._efficientnet_conf(
            "efficientnet_b0", width_mult=0.25, depth_mult=0.25)[0], 0.2, num_classes=10),
        images(), ("residual", "depthwise", "squeeze-excite")),
    Case("torchvision/shufflenet", "cnn", _tv(
        "shufflenetv2.ShuffleNetV2", [2, 2, 2], [8, 16, 32, 64, 128], num_classes=10),
        images(), ("channel-shuffle", "channel-split", "depthwise"),
        free=("stage3.1.branch2.5.weight:0",)),
    Case("torchvision/squeezenet", "cnn", _tv(
        "squeezenet.SqueezeNet", "1_1", num_classes=10), images(64),
        ("fire-concat", "conv-classifier")),
    Case("torchvision/mnasnet", "cnn", _tv("mnasnet.MNASNet", 0.5, num_classes=10), images(),
         ("residual", "depthwise", "state-dict-version")),
    Case("torchvision/regnet", "cnn", _tv(
        "regnet.RegNet", lambda m: m.BlockParams.from_init_params(
            depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25), num_classes=10),
        images(), ("residual", "grouped", "squeeze-excite")),
    Case("torchvision/convnext", "cnn", _tv(
        "convnext.ConvNeXt", lambda m: [m.CNBlockConfig(8, 16, 1), m.CNBlockConfig(16, 32, 1),
                                        m.CNBlockConfig(32, None, 1)], num_classes=10),
        images(), ("residual", "depthwise", "layer-scale", "permute-layernorm")),
    Case("torchvision/mobilenet_v2-full", "cnn", _tv(
        "mobilenetv2.MobileNetV2", num_classes=10), images(64),
        ("residual", "depthwise", "inverted", "full-size"), slow=True),
    Case("torchvision/efficientnet_b0-full", "cnn", _tv(
        "efficientnet.efficientnet_b0", num_classes=10), images(64),
        ("residual", "depthwise", "squeeze-excite", "full-size"), slow=True),
    Case("torchvision/vit", "vision-transformer", _tv(
        "vision_transformer.VisionTransformer", image_size=32, patch_size=8, num_layers=2,
        num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10), images(),
        ("global-attention", "nn-multihead-attention", "cls-token")),
    Case("torchvision/swin", "vision-transformer", _tv(
        "swin_transformer.SwinTransformer", patch_size=[2, 2], embed_dim=16, depths=[2, 2],
        num_heads=[2, 4], window_size=[4, 4], num_classes=10), images(),
        ("windowed-attention", "relative-position-index", "patch-merging")),
    Case("torchvision/maxvit", "vision-transformer", _tv(
        "maxvit.MaxVit", input_size=(32, 32), stem_channels=8, partition_size=2,
        block_channels=[16, 32], block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0,
        num_classes=10), images(),
        ("windowed-attention", "grid-attention", "relative-position-index", "squeeze-excite")),
]


# ------------------------------------------------------------------ timm
def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """A registered timm model (random weights), with overrides for its constructor."""
    def build() -> nn.Module:
        import timm
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    return build


def _timm_class(make: Callable[[Any], nn.Module]) -> Callable[[], nn.Module]:
    """``make(timm.models)``: for shapes no registered name offers."""
    def build() -> nn.Module:
        import timm.models
        return make(timm.models)
    return build


SMALL_RESNET = dict(channels=(16, 32, 64, 128), stem_width=16, num_classes=10)

TIMM = [
    Case("timm/resnet18", "cnn", _timm_class(lambda tm: tm.resnet.ResNet(
        tm.resnet.BasicBlock, (1, 1, 1, 1), **SMALL_RESNET)), images(),
        ("residual", "batchnorm", "zero-init-last")),
    Case("timm/resnest", "cnn", _timm_class(lambda tm: tm.resnet.ResNet(
        tm.resnest.ResNestBottleneck, (1, 1, 1, 1), stem_type="deep", avg_down=True,
        block_args=dict(radix=2, avd=True, avd_first=False), **SMALL_RESNET)), images(),
        ("split-attention", "radix-softmax", "residual")),
    Case("timm/cspresnet50", "cnn", _timm("cspresnet50"), images(),
         ("cross-stage-partial", "channel-split", "residual"), slow=True),
    Case("timm/mixer", "vision-transformer", _timm_class(lambda tm: tm.mlp_mixer.MlpMixer(
        num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=32)), images(),
        ("token-mixing-mlp",)),
    Case("timm/vit", "vision-transformer", _timm(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4),
        images(), ("global-attention", "fused-qkv", "cls-token")),
    Case("timm/deit_distilled", "vision-transformer", _timm(
        "deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32,
        num_heads=4), images(), ("global-attention", "distillation-token")),
    Case("timm/swin", "vision-transformer", _timm(  # 14x14 tokens in 7x7 windows
        "swin_tiny_patch4_window7_224", img_size=56, embed_dim=16, depths=(2, 2),
        num_heads=(2, 4)), images(56),
        ("windowed-attention", "relative-position-index", "patch-merging"),
        free=("layers.0.blocks.0.mlp.fc2.weight:0",)),
    Case("timm/convnext", "cnn", _timm(
        "convnext_atto", dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)), images(),
        ("residual", "depthwise", "layer-scale")),
    Case("timm/efficientnet", "cnn", _timm_class(lambda tm: tm.efficientnet._gen_efficientnet(
        "efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.25, num_classes=10)),
        images(), ("residual", "depthwise", "squeeze-excite")),
    Case("timm/mobilenetv3", "cnn", _timm("mobilenetv3_small_050"), images(),
         ("residual", "depthwise", "squeeze-excite", "hardswish")),
    Case("timm/regnety", "cnn", _timm("regnety_002"), images(),
         ("residual", "grouped", "squeeze-excite"), slow=True),
    Case("timm/densenet", "cnn", _timm("densenet121", growth_rate=8, block_config=(2, 2, 2, 2),
                                       bn_size=2), images(), ("dense-concat",)),
    Case("timm/mobilevit", "vision-transformer", _timm("mobilevit_xxs"), images(64),
         ("depthwise", "patch-unfold", "global-attention"), slow=True),
    Case("timm/levit", "vision-transformer", _timm("levit_128s", img_size=64), images(64),
         ("attention-bias-index", "batchnorm"), slow=True),
    Case("timm/maxvit", "vision-transformer", _timm("maxvit_rmlp_pico_rw_256", img_size=64),
         images(64), ("windowed-attention", "grid-attention", "relative-position-mlp"),
         slow=True),
]

CASES: dict[str, Case] = {c.name: c for c in TRANSFORMERS + TORCHVISION + TIMM}


def available_cases(include_slow: bool = True) -> list[Case]:
    """Cases whose library imports here (optionally leaving out the slow ones)."""
    return [c for c in CASES.values() if c.unavailable() is None and (include_slow
                                                                       or not c.slow)]
