"""Ops that move, merge, split, slice, join or pad axes without changing values."""
from __future__ import annotations

from typing import Any

from ..context import Cat, Context, Prod
from .registry import aten, dim, dims, register_rule


@register_rule(*aten("view", "_unsafe_view", "reshape", "view_copy", "flatten", "unflatten",
                     "squeeze", "unsqueeze", "squeeze_copy", "unsqueeze_copy", "_reshape_alias",
                     "view_as", "reshape_as"))
def reshape(ctx: Context, args: dict[str, Any]) -> None:
    """Row-major reshape: merged axes become products, split axes refine into products."""
    ctx.reshape(ctx.terms(args["self"]), ctx.output())


@register_rule(*aten("permute", "permute_copy"))
def permute(ctx: Context, args: dict[str, Any]) -> None:
    """Output axis i is input axis ``dims[i]``."""
    x = ctx.terms(args["self"])
    ctx.set_output([x[dim(d, len(x))] for d in args["dims"]])


def _swap(ctx: Context, args: dict[str, Any], d0: int, d1: int) -> None:
    x = list(ctx.terms(args["self"]))
    if len(x) >= 2:
        d0, d1 = dim(d0, len(x)), dim(d1, len(x))
        x[d0], x[d1] = x[d1], x[d0]
    ctx.set_output(x)


@register_rule(*aten("transpose", "swapdims", "transpose_copy"))
def transpose(ctx: Context, args: dict[str, Any]) -> None:
    _swap(ctx, args, args["dim0"], args["dim1"])


@register_rule("aten.swapaxes")
def swapaxes(ctx: Context, args: dict[str, Any]) -> None:
    _swap(ctx, args, args["axis0"], args["axis1"])


@register_rule(*aten("t", "numpy_T", "adjoint", "mT"))
def matrix_transpose(ctx: Context, args: dict[str, Any]) -> None:
    """Swap the last two axes (``t`` of a 1-D tensor is the tensor itself)."""
    _swap(ctx, args, -2, -1)


@register_rule("aten.movedim")
def movedim(ctx: Context, args: dict[str, Any]) -> None:
    x = ctx.terms(args["self"])
    n = len(x)
    placed = dict(zip(dims(args["destination"], n), dims(args["source"], n)))
    rest = iter(d for d in range(n) if d not in placed.values())
    ctx.set_output([x[placed[i]] if i in placed else x[next(rest)] for i in range(n)])


@register_rule(*aten("expand", "expand_as", "broadcast_to", "expand_copy"))
def expand(ctx: Context, args: dict[str, Any]) -> None:
    """Expanded (size 1 -> n) and new leading axes are fresh: copies may be permuted freely."""
    ctx.unify_from_right(ctx.terms(args["self"]), ctx.output())


@register_rule("aten.repeat", "aten.tile")
def repeat(ctx: Context, args: dict[str, Any]) -> None:
    """Tiling: each output axis is (repeat count) x (input axis)."""
    x = ctx.terms(args["self"])
    out = ctx.output()
    reps = list(args.get("repeats", args.get("dims")))
    x = [ctx.unit] * (len(reps) - len(x)) + list(x)
    for a, b, r in zip(x, out[-len(x):], reps[-len(x):]):
        ctx.unify(b, Prod((ctx.new_axis(int(r)), a)))


@register_rule("aten.repeat_interleave")
def repeat_interleave(ctx: Context, args: dict[str, Any]) -> None:
    """Each unit repeated ``repeats`` times in place: the axis becomes (axis) x (repeats)."""
    x = ctx.terms(args["self"])
    out = ctx.output()
    repeats = args.get("repeats")
    if x is None or not isinstance(repeats, int) or args.get("dim") is None:
        ctx.fix_all(list(x or []) + list(out), "repeat_interleave with tensor repeats or no dim")
        return
    d = dim(args["dim"], len(x))
    for i, (a, b) in enumerate(zip(x, out)):
        ctx.unify(b, Prod((a, ctx.new_axis(repeats))) if i == d else a)


@register_rule(*aten("cat", "concat", "concatenate"))
def cat(ctx: Context, args: dict[str, Any]) -> None:
    """The joined axis is the concatenation of the inputs' axes; the others are shared."""
    tensors = [ctx.terms(t) for t in args["tensors"]]
    tensors = [t for t in tensors if t is not None and not (len(t) == 1 and ctx.size(t[0]) == 0)]
    out = ctx.output()
    d = dim(args.get("dim", 0), len(out))
    for i in range(len(out)):
        if i == d:
            ctx.unify(out[i], Cat(tuple(t[i] for t in tensors)))
        else:
            for t in tensors:
                ctx.unify(out[i], t[i])


@register_rule("aten.stack")
def stack(ctx: Context, args: dict[str, Any]) -> None:
    """A new axis whose units are the inputs, in order."""
    tensors = [ctx.terms(t) for t in args["tensors"]]
    out = ctx.output()
    d = dim(args.get("dim", 0), len(out))
    for t in tensors:
        ctx.unify_each(t, out[:d] + out[d + 1:])
    ctx.unify(out[d], Cat(tuple(ctx.new_axis(1) for _ in tensors)))


def _slice_bounds(start: Any, end: Any, n: int) -> tuple[int, int]:
    start = 0 if start is None else int(start)
    end = n if end is None else int(end)
    start = max(0, start + n if start < 0 else start)
    end = min(n, end + n if end < 0 else end)
    return start, max(start, end)


def _take_range(ctx: Context, args: dict[str, Any], d: int, start: int, end: int,
                step: Any = 1) -> None:
    x, out = ctx.terms(args["self"]), ctx.output()
    for i, (a, b) in enumerate(zip(x, out)):
        if i != d:
            ctx.unify(a, b)
        elif step not in (1, None):
            ctx.unify(b, ctx.alg.strided(a, start, end, int(step)))
        else:
            ctx.unify(b, ctx.slice(a, start, end))


@register_rule("aten.slice", "aten.slice_copy")
def slice_(ctx: Context, args: dict[str, Any]) -> None:
    x = ctx.terms(args["self"])
    d = dim(args.get("dim", 0), len(x))
    start, end = _slice_bounds(args.get("start"), args.get("end"), ctx.size(x[d]))
    _take_range(ctx, args, d, start, end, args.get("step", 1))


@register_rule("aten.narrow")
def narrow(ctx: Context, args: dict[str, Any]) -> None:
    x = ctx.terms(args["self"])
    d = dim(args.get("dim", 0), len(x))
    first = int(args["start"])
    start, end = _slice_bounds(first, first + int(args["length"]), ctx.size(x[d]))
    _take_range(ctx, args, d, start, end)


@register_rule("aten.select", "aten.select_copy")
def select(ctx: Context, args: dict[str, Any]) -> None:
    """Picking one index of an axis: that unit becomes an axis piece of its own."""
    x, out = ctx.terms(args["self"]), ctx.output()
    d = dim(args["dim"], len(x))
    n = ctx.size(x[d])
    index = int(args["index"])
    index = index + n if index < 0 else index
    ctx.slice(x[d], index, index + 1)
    ctx.unify_each(x[:d] + x[d + 1:], out)


@register_rule(*aten("split", "split_with_sizes", "chunk", "tensor_split", "split_copy",
                     "unsafe_split", "split_with_sizes_copy"))
def split(ctx: Context, args: dict[str, Any]) -> None:
    """Consecutive pieces of one axis; the other axes are shared."""
    x = ctx.terms(args["self"])
    d = dim(args.get("dim", 0), len(x))
    offset = 0
    for out in ctx.all_outputs():
        length = ctx.size(out[d])
        ctx.unify(out[d], ctx.slice(x[d], offset, offset + length))
        ctx.unify_each(x[:d] + x[d + 1:], out[:d] + out[d + 1:])
        offset += length


@register_rule("aten.unbind", "aten.unbind_copy")
def unbind(ctx: Context, args: dict[str, Any]) -> None:
    """One output per index of the axis (each output lacks that axis)."""
    x = ctx.terms(args["self"])
    d = dim(args.get("dim", 0), len(x))
    for i, out in enumerate(ctx.all_outputs()):
        ctx.slice(x[d], i, i + 1)
        ctx.unify_each(x[:d] + x[d + 1:], out)


def _padded_axes(ctx: Context, args: dict[str, Any]) -> list[tuple[int, int, int]]:
    """``(axis, left, right)`` for every axis that the pad list widens (last axis first)."""
    x = ctx.terms(args["self"])
    pads = list(args.get("pad", args.get("padding")))
    out = []
    for i in range(len(x)):
        k = len(x) - 1 - i
        if 2 * k + 1 < len(pads) and (pads[2 * k] or pads[2 * k + 1]):
            out.append((i, int(pads[2 * k]), int(pads[2 * k + 1])))
    return out


@register_rule("aten.constant_pad_nd")
def constant_pad(ctx: Context, args: dict[str, Any]) -> None:
    """Constant padding: the padded axis is [fixed pad, input, fixed pad]."""
    x, out = ctx.terms(args["self"]), ctx.output()
    padded = {axis: (left, right) for axis, left, right in _padded_axes(ctx, args)}
    for i, (a, b) in enumerate(zip(x, out)):
        if i not in padded:
            ctx.unify(a, b)
            continue
        left, right = padded[i]
        if left < 0 or right < 0:
            ctx.fix_all([a, b], "negative padding")
            continue
        ctx.unify(b, Cat((ctx.new_axis(left, fixed="padding"), a,
                          ctx.new_axis(right, fixed="padding"))))


@register_rule("aten.pad")
def pad(ctx: Context, args: dict[str, Any]) -> None:
    """``F.pad``: constant mode as :func:`constant_pad`, other modes copy edge values."""
    if args.get("mode") in (None, "constant"):
        constant_pad(ctx, args)
    else:
        edge_pad(ctx, args)


@register_rule(*aten("reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
                     "replication_pad1d", "replication_pad2d", "replication_pad3d"))
def edge_pad(ctx: Context, args: dict[str, Any]) -> None:
    """Reflect/replicate padding copies values from near the edges: those axes are fixed."""
    x, out = ctx.terms(args["self"]), ctx.output()
    padded = {axis for axis, _, _ in _padded_axes(ctx, args)}
    for i, (a, b) in enumerate(zip(x, out)):
        if i in padded:
            ctx.fix_all([a, b], "reflect/replicate padding")
        else:
            ctx.unify(a, b)


@register_rule("getitem")
def getitem(ctx: Context, args: dict[str, Any]) -> None:
    """One output of a multi-output op."""
    ctx.set_output(ctx.item(args["self"], args["index"]))


@register_rule("aten.meshgrid")
def meshgrid(ctx: Context, args: dict[str, Any]) -> None:
    """Each output has one axis per 1-D input, carrying that input's axis (``indexing="xy"``
    swaps the first two)."""
    inputs = [ctx.terms(t) for t in args["tensors"]]
    order = list(range(len(inputs)))
    if args.get("indexing") == "xy" and len(order) >= 2:
        order[0], order[1] = 1, 0
    for out in ctx.all_outputs():
        for position, j in enumerate(order):
            if inputs[j]:
                ctx.unify(out[position], inputs[j][0])
