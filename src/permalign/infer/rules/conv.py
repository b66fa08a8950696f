"""Convolutions, pooling and resizing: channels carry units, spatial positions are fixed."""
from __future__ import annotations

import re
from typing import Any

from ..context import Context, Prod, Term
from .registry import aten, register_rule


def _convolution(ctx: Context, args: dict[str, Any], transposed: bool) -> None:
    """Channels: in-axis of the weight meets the input's channels; out-axis the output's.

    Grouped and depthwise convolutions share a *group* factor between input and output
    channels: channels may move with their group, or within it consistently for every group.
    Spatial axes are fixed.
    """
    x, w = ctx.terms(args["input"]), ctx.terms(args["weight"])
    out = ctx.output()
    groups = int(args.get("groups", 1) or 1)
    w_out, w_in = (w[1], w[0]) if transposed else (w[0], w[1])
    batched = len(x) == len(w)
    if batched:
        ctx.unify(x[0], out[0])
    c_in, c_out = x[1 if batched else 0], out[1 if batched else 0]
    if groups == 1:
        ctx.unify(c_in, w_in)
        ctx.unify(c_out, w_out)
    else:
        group = ctx.new_axis(groups)
        in_inner = ctx.new_axis(ctx.size(c_in) // groups)
        out_inner = ctx.new_axis(ctx.size(c_out) // groups)
        ctx.unify(c_in, Prod((group, in_inner)))
        ctx.unify(c_out, Prod((group, out_inner)))
        if transposed:  # weight (C_in, C_out/groups, ...): in-axis carries the groups
            ctx.unify(w[0], Prod((group, in_inner)))
            ctx.unify(w[1], out_inner)
        else:  # weight (C_out, C_in/groups, ...)
            ctx.unify(w[0], Prod((group, out_inner)))
            ctx.unify(w[1], in_inner)
    bias = ctx.terms(args.get("bias"))
    if bias:
        ctx.unify(bias[0], c_out)
    spatial = len(w) - 2
    ctx.fix_all(list(w[2:]) + list(x[-spatial:]) + list(out[-spatial:]), "spatial position")


@register_rule(*aten("conv1d", "conv2d", "conv3d"))
def convolution(ctx: Context, args: dict[str, Any]) -> None:
    _convolution(ctx, args, transposed=False)


@register_rule(*aten("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"))
def transposed_convolution(ctx: Context, args: dict[str, Any]) -> None:
    _convolution(ctx, args, transposed=True)


@register_rule("aten.convolution", "aten._convolution")
def general_convolution(ctx: Context, args: dict[str, Any]) -> None:
    """The generic convolution op says itself whether it is transposed."""
    _convolution(ctx, args, transposed=bool(args.get("transposed", False)))


POOLS = """max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d
adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
max_pool2d_with_indices max_pool3d_with_indices upsample_nearest1d upsample_nearest2d
upsample_bilinear2d upsample_bicubic2d upsample_linear1d _upsample_nearest_exact2d
_adaptive_avg_pool2d""".split()


def _input_terms(ctx: Context, args: dict[str, Any]) -> list[Term]:
    return ctx.terms(args["self"] if "self" in args else args["input"])


@register_rule(*aten(*POOLS))
def pooling(ctx: Context, args: dict[str, Any]) -> None:
    """Pooling and resizing: channels pass through, spatial axes are fixed."""
    x = _input_terms(ctx, args)
    match = re.search(r"(\d)d", ctx.op)
    spatial = int(match.group(1)) if match else 2
    for out in [ctx.output()] + ctx.extra_outputs():
        ctx.unify_each(x[:-spatial], out[:-spatial])
        ctx.fix_all(list(x[-spatial:]) + list(out[-spatial:]), "spatial position")


@register_rule("aten.pixel_shuffle", "aten.pixel_unshuffle")
def pixel_shuffle(ctx: Context, args: dict[str, Any]) -> None:
    """Moves channel blocks into space (or back): channels and space are fixed."""
    x = _input_terms(ctx, args)
    out = ctx.output()
    ctx.unify_each(x[:-3], out[:-3])
    ctx.fix_all(list(x[-3:]) + list(out[-3:]), "pixel (un)shuffle mixes channels and space")
