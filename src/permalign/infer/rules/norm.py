"""Normalisation layers: statistics are invariant to permuting what they average over."""
from __future__ import annotations

from typing import Any

from ..context import Context, Prod
from .registry import aten, register_rule


@register_rule(*aten("batch_norm", "native_batch_norm", "_native_batch_norm_legit",
                     "_native_batch_norm_legit_no_training",
                     "_native_batch_norm_legit_functional", "instance_norm",
                     "cudnn_batch_norm", "miopen_batch_norm"))
def batch_norm(ctx: Context, args: dict[str, Any]) -> None:
    """Per-channel statistics (axis 1): weight, bias and running stats join the channel."""
    x = ctx.terms(args["input"])
    outs = [ctx.output()] + ctx.extra_outputs()
    channel = x[1] if len(x) > 1 else x[0]
    for name in ("weight", "bias", "running_mean", "running_var"):
        terms = ctx.terms(args.get(name))
        if terms:
            ctx.unify(terms[0], channel)
    ctx.unify_each(x, outs[0])
    for extra in outs[1:]:  # saved mean / invstd: one per channel
        if len(extra) == 1 and ctx.size(extra[0]) == ctx.size(channel):
            ctx.unify(extra[0], channel)


@register_rule(*aten("layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm"))
def layer_norm(ctx: Context, args: dict[str, Any]) -> None:
    """Statistics over the last axes are invariant to permuting them; weight/bias follow them."""
    x = ctx.terms(args["input"])
    k = len(list(args["normalized_shape"]))
    outs = [ctx.output()] + ctx.extra_outputs()
    ctx.unify_each(x, outs[0])
    for name in ("weight", "bias"):
        terms = ctx.terms(args.get(name))
        if terms:
            ctx.unify_each(terms, x[-k:])
    for extra in outs[1:]:  # mean / rstd: the leading axes
        ctx.unify_each(x[:-k], extra[:len(x) - k])


@register_rule("aten.group_norm", "aten.native_group_norm")
def group_norm(ctx: Context, args: dict[str, Any]) -> None:
    """Statistics per group of channels: channels are (group) x (channel within group)."""
    x = ctx.terms(args["input"])
    groups = int(args.get("num_groups", args.get("group")))
    outs = [ctx.output()] + ctx.extra_outputs()
    ctx.unify_each(x, outs[0])
    group = ctx.new_axis(groups)
    ctx.unify(x[1], Prod((group, ctx.new_axis(ctx.size(x[1]) // groups))))
    for name in ("weight", "bias"):
        terms = ctx.terms(args.get(name))
        if terms:
            ctx.unify(terms[0], x[1])
    for extra in outs[1:]:  # mean / rstd of shape (N, groups)
        ctx.unify(extra[0], x[0])
        if len(extra) > 1:
            ctx.unify(extra[1], group)
