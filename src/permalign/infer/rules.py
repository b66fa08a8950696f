"""One rule per ATen op: how each op's output axes relate to its input axes.

A rule is ``fn(ctx, args)`` where ``args`` are the op's arguments bound to their schema names.
It reads input axes with ``ctx.terms(arg)``, creates the output's with ``ctx.output()`` and
relates them with ``ctx.unify``/``ctx.fix``. Register new ones with :func:`register_rule`.
Ops without a rule make inference fail with the op's name and source location.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .axes import Cat, Prod, Term

if TYPE_CHECKING:
    from .graph import Context

Rule = Callable[["Context", dict[str, Any]], None]
RULES: dict[str, Rule] = {}

# ops that produce no tensor (checks, asserts, shape queries): nothing to propagate
IGNORED = {"aten._assert_tensor_metadata", "aten._assert_async", "aten._assert_scalar",
           "aten.sym_size", "aten.sym_numel", "aten.sym_stride", "aten._local_scalar_dense",
           "aten.item", "aten.sym_constrain_range_for_size", "aten.sym_constrain_range",
           "aten._functional_sym_constrain_range", "aten._functional_assert_async",
           "aten.set_grad_enabled"}


def register_rule(*names: str) -> Callable[[Rule], Rule]:
    """Decorator: use ``fn`` for the ATen ops ``names`` (e.g. ``"aten.linear"``)."""
    def wrap(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn
    return wrap


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _dims(dim: Any, ndim: int) -> list[int]:
    if dim is None or (isinstance(dim, Sequence) and len(dim) == 0):
        return list(range(ndim))
    if isinstance(dim, int):
        return [_dim(dim, ndim)]
    return [_dim(int(d), ndim) for d in dim]


# ---------------------------------------------------------------- element-wise
ELEMENTWISE = """
add sub rsub mul div true_divide floor_divide remainder fmod pow maximum minimum fmax fmin
atan2 hypot copysign where masked_fill masked_fill_ eq ne lt le gt ge __and__ __or__ __xor__
bitwise_and bitwise_or bitwise_xor bitwise_not logical_and logical_or logical_not logical_xor
clamp clamp_min clamp_max clip relu relu_ relu6 gelu silu sigmoid tanh exp exp2 log log2 log10
log1p expm1 sqrt rsqrt neg abs reciprocal erf erfc erfinv sin cos tan sinh cosh asin acos atan
hardtanh hardswish hardsigmoid leaky_relu elu selu celu softplus mish prelu glu_jvp sign sgn
floor ceil round trunc frac square nan_to_num lerp addcmul addcdiv dropout native_dropout
alpha_dropout feature_dropout feature_alpha_dropout clone contiguous detach alias to _to_copy
type_as lift_fresh_copy zeros_like ones_like full_like empty_like rand_like randn_like fill
fill_ copy copy_ isnan isinf isfinite signbit logit threshold xlogy heaviside bucketize
softmax _softmax log_softmax _log_softmax _safe_softmax special_expit masked_fill_
""".split()


def elementwise(ctx: "Context", args: dict[str, Any]) -> None:
    """Broadcasting element-wise op: every tensor argument's axes align with the output's."""
    out = ctx.output()
    for value in args.values():
        for tensor in (value if isinstance(value, list | tuple) else [value]):
            terms = ctx.terms(tensor)
            if terms is None:
                continue
            for i in range(1, len(terms) + 1):
                if i <= len(out) and ctx.alg.size(terms[-i]) == ctx.alg.size(out[-i]):
                    ctx.unify(terms[-i], out[-i])
    for extra in ctx.extra_outputs():  # e.g. native_dropout's mask: same shape as the input
        for a, b in zip(extra, out):
            if ctx.alg.size(a) == ctx.alg.size(b):
                ctx.unify(a, b)


# in-place variants (add_, relu_, ...) relate their axes in the same way
register_rule(*(f"aten.{n}" for n in ELEMENTWISE),
              *(f"aten.{n}_" for n in ELEMENTWISE if not n.endswith("_")))(elementwise)


@register_rule("aten.cumsum", "aten.cumprod", "aten.cummax", "aten.cummin", "aten.flip",
               "aten.roll", "aten.logcumsumexp")
def order_dependent(ctx: "Context", args: dict[str, Any]) -> None:
    """Element-wise, but the order along ``dim``/``dims`` matters: those axes are fixed."""
    x = ctx.terms(args["self"])
    out = ctx.output()
    dims = _dims(args.get("dim", args.get("dims", args.get("shifts"))), len(x))
    for i, (a, b) in enumerate(zip(x, out)):
        ctx.unify(a, b)
        if i in dims or "roll" in ctx.op and args.get("dims") in (None, []):
            ctx.fix(a, f"order matters along this axis ({ctx.op})")


@register_rule("aten.triu", "aten.tril")
def triangular(ctx: "Context", args: dict[str, Any]) -> None:
    x, out = ctx.terms(args["self"]), ctx.output()
    for a, b in zip(x, out):
        ctx.unify(a, b)
    for a in x[-2:]:
        ctx.fix(a, f"order matters along this axis ({ctx.op})")


@register_rule("aten.diff")
def diff(ctx: "Context", args: dict[str, Any]) -> None:
    x, out = ctx.terms(args["self"]), ctx.output()
    d = _dim(args.get("dim", -1), len(x))
    for i, (a, b) in enumerate(zip(x, out)):
        if i == d:
            ctx.fix(a, "order matters along this axis (diff)")
            ctx.fix(b, "order matters along this axis (diff)")
        else:
            ctx.unify(a, b)


# ---------------------------------------------------------------- factories
FACTORIES = """arange full zeros ones empty scalar_tensor rand randn randint linspace logspace eye
new_ones new_zeros new_full new_empty tensor empty_strided randperm normal""".split()


@register_rule(*(f"aten.{n}" for n in FACTORIES))
def factory(ctx: "Context", args: dict[str, Any]) -> None:
    """Tensors made inside the model are tied to positions: their axes are fixed."""
    for term in ctx.output():
        ctx.fix(term, f"axis of a tensor created inside the model ({ctx.op})")


# ---------------------------------------------------------------- reductions
REDUCTIONS = """mean sum amax amin var std var_mean std_mean prod logsumexp any all nansum
linalg_vector_norm norm count_nonzero""".split()


@register_rule(*(f"aten.{n}" for n in REDUCTIONS))
def reduction(ctx: "Context", args: dict[str, Any]) -> None:
    """Reducing an axis is invariant to its permutation; the other axes pass through."""
    x = ctx.terms(args["self"])
    dims = _dims(args.get("dim"), len(x))
    survivors = [t for i, t in enumerate(x) if i not in dims]
    for out in [ctx.output()] + ctx.extra_outputs():
        if len(out) == len(x):  # keepdim: reduced axes became size 1
            kept = [t for i, t in enumerate(out) if i not in dims]
        else:
            kept = out
        if len(kept) == len(survivors):
            for a, b in zip(survivors, kept):
                ctx.unify(a, b)


@register_rule("aten.max", "aten.min", "aten.argmax", "aten.argmin", "aten.sort",
               "aten.argsort", "aten.topk", "aten.kthvalue", "aten.median", "aten.mode")
def index_reduction(ctx: "Context", args: dict[str, Any]) -> None:
    """Ops whose result depends on the order of an axis (indices): that axis is fixed."""
    x = ctx.terms(args["self"])
    dims = _dims(args.get("dim"), len(x))
    for d in dims:
        ctx.fix(x[d], f"order matters along this axis ({ctx.op})")
    outs = [ctx.output()] + ctx.extra_outputs()
    for out in outs:
        if len(out) == len(x):
            for i, (a, b) in enumerate(zip(x, out)):
                if i in dims:
                    ctx.fix(b, f"order matters along this axis ({ctx.op})")
                else:
                    ctx.unify(a, b)
        else:
            for a, b in zip([t for i, t in enumerate(x) if i not in dims], out):
                ctx.unify(a, b)


# ---------------------------------------------------------------- shapes
@register_rule("aten.view", "aten._unsafe_view", "aten.reshape", "aten.view_copy",
               "aten.flatten", "aten.unflatten", "aten.squeeze", "aten.unsqueeze",
               "aten.squeeze_copy", "aten.unsqueeze_copy", "aten._reshape_alias",
               "aten.view_as", "aten.reshape_as")
def reshape(ctx: "Context", args: dict[str, Any]) -> None:
    """Row-major reshape: merged axes become products, split axes refine into products."""
    x = ctx.terms(args["self"])
    out = ctx.output()
    ctx.alg.unify_products(list(x), list(out))


@register_rule("aten.permute", "aten.transpose", "aten.t", "aten.swapaxes", "aten.swapdims",
               "aten.movedim", "aten.numpy_T", "aten.permute_copy", "aten.transpose_copy",
               "aten.adjoint", "aten.mT")
def permute(ctx: "Context", args: dict[str, Any]) -> None:
    x = ctx.terms(args["self"])
    n = len(x)
    order = list(range(n))
    if "dims" in args and args["dims"] is not None and ctx.op in ("aten.permute",
                                                                   "aten.permute_copy"):
        order = [_dim(d, n) for d in args["dims"]]
    elif ctx.op == "aten.movedim":
        src = _dims(args["source"], n)
        dst = _dims(args["destination"], n)
        rest = [d for d in range(n) if d not in src]
        order = [0] * n
        placed = dict(zip(dst, src))
        it = iter(rest)
        order = [placed[i] if i in placed else next(it) for i in range(n)]
    elif n >= 2:
        d0, d1 = (args.get("dim0", n - 2), args.get("dim1", n - 1))
        if ctx.op in ("aten.swapaxes",):
            d0, d1 = args["axis0"], args["axis1"]
        d0, d1 = _dim(d0, n), _dim(d1, n)
        order[d0], order[d1] = order[d1], order[d0]
    ctx.set_output([x[i] for i in order])


@register_rule("aten.expand", "aten.expand_as", "aten.broadcast_to", "aten.expand_copy")
def expand(ctx: "Context", args: dict[str, Any]) -> None:
    """Expanded (size 1 -> n) and new leading axes are fresh: copies may be permuted freely."""
    x = ctx.terms(args["self"])
    out = ctx.output()
    for i in range(1, len(x) + 1):
        if ctx.alg.size(x[-i]) == ctx.alg.size(out[-i]):
            ctx.unify(x[-i], out[-i])


@register_rule("aten.repeat", "aten.tile")
def repeat(ctx: "Context", args: dict[str, Any]) -> None:
    """Tiling: each output axis is (repeat count) x (input axis)."""
    x = ctx.terms(args["self"])
    out = ctx.output()
    reps = list(args.get("repeats", args.get("dims")))
    x = [ctx.alg.unit] * (len(reps) - len(x)) + list(x)
    for a, b, r in zip(x, out[-len(x):], reps[-len(x):]):
        ctx.unify(b, Prod((ctx.alg.atom(int(r)), a)))


@register_rule("aten.repeat_interleave")
def repeat_interleave(ctx: "Context", args: dict[str, Any]) -> None:
    x = ctx.terms(args["self"])
    out = ctx.output()
    repeats = args.get("repeats")
    if not isinstance(repeats, int) or args.get("dim") is None:
        for t in x + out:
            ctx.fix(t, "repeat_interleave with tensor repeats or no dim")
        return
    d = _dim(args["dim"], len(x))
    for i, (a, b) in enumerate(zip(x, out)):
        ctx.unify(b, Prod((a, ctx.alg.atom(repeats))) if i == d else a)


@register_rule("aten.cat", "aten.concat", "aten.concatenate")
def cat(ctx: "Context", args: dict[str, Any]) -> None:
    tensors = [ctx.terms(t) for t in args["tensors"]]
    tensors = [t for t in tensors if t is not None and not (len(t) == 1 and
                                                            ctx.alg.size(t[0]) == 0)]
    out = ctx.output()
    d = _dim(args.get("dim", 0), len(out))
    for i in range(len(out)):
        if i == d:
            ctx.unify(out[i], Cat(tuple(t[i] for t in tensors)))
        else:
            for t in tensors:
                ctx.unify(out[i], t[i])


@register_rule("aten.stack")
def stack(ctx: "Context", args: dict[str, Any]) -> None:
    tensors = [ctx.terms(t) for t in args["tensors"]]
    out = ctx.output()
    d = _dim(args.get("dim", 0), len(out))
    rest = out[:d] + out[d + 1:]
    for t in tensors:
        for a, b in zip(t, rest):
            ctx.unify(a, b)
    ctx.unify(out[d], Cat(tuple(ctx.alg.atom(1) for _ in tensors)))


def _slice_bounds(start: Any, end: Any, n: int) -> tuple[int, int]:
    start = 0 if start is None else int(start)
    end = n if end is None else int(end)
    start = max(0, start + n if start < 0 else start)
    end = min(n, end + n if end < 0 else end)
    return start, max(start, end)


@register_rule("aten.slice", "aten.slice_copy", "aten.narrow")
def slice_(ctx: "Context", args: dict[str, Any]) -> None:
    x = ctx.terms(args["self"])
    out = ctx.output()
    d = _dim(args.get("dim", 0), len(x))
    n = ctx.alg.size(x[d])
    if ctx.op == "aten.narrow":
        start, end = _slice_bounds(args["start"], int(args["start"]) + int(args["length"]), n)
    else:
        start, end = _slice_bounds(args.get("start"), args.get("end"), n)
    for i, (a, b) in enumerate(zip(x, out)):
        if i != d:
            ctx.unify(a, b)
        elif args.get("step", 1) not in (1, None):
            ctx.fix(a, "strided slice")
            ctx.fix(b, "strided slice")
        else:
            ctx.unify(b, ctx.alg.slice(a, start, end))


@register_rule("aten.select", "aten.select_copy")
def select(ctx: "Context", args: dict[str, Any]) -> None:
    x = ctx.terms(args["self"])
    out = ctx.output()
    d = _dim(args["dim"], len(x))
    index = int(args["index"])
    n = ctx.alg.size(x[d])
    index = index + n if index < 0 else index
    ctx.alg.slice(x[d], index, index + 1)  # the chosen unit is now an axis piece of its own
    for a, b in zip(x[:d] + x[d + 1:], out):
        ctx.unify(a, b)


@register_rule("aten.split", "aten.split_with_sizes", "aten.chunk", "aten.unbind",
               "aten.tensor_split", "aten.split_copy", "aten.unsafe_split",
               "aten.split_with_sizes_copy", "aten.unbind_copy")
def split(ctx: "Context", args: dict[str, Any]) -> None:
    x = ctx.terms(args["self"])
    outs = ctx.all_outputs()
    d = _dim(args.get("dim", 0), len(x))
    offset = 0
    for out in outs:
        if ctx.op.startswith("aten.unbind"):
            piece_len = 1
            others = out
        else:
            piece_len = ctx.alg.size(out[d])
            others = out[:d] + out[d + 1:]
        piece = ctx.alg.slice(x[d], offset, offset + piece_len)
        if not ctx.op.startswith("aten.unbind"):
            ctx.unify(out[d], piece)
        for a, b in zip(x[:d] + x[d + 1:], others):
            ctx.unify(a, b)
        offset += piece_len


@register_rule("aten.constant_pad_nd", "aten.pad", "aten.reflection_pad1d",
               "aten.reflection_pad2d", "aten.replication_pad1d", "aten.replication_pad2d")
def pad(ctx: "Context", args: dict[str, Any]) -> None:
    """Zero padding of an axis: the padded axis is [fixed pad, input, fixed pad]."""
    x = ctx.terms(args["self"])
    out = ctx.output()
    pads = list(args.get("pad", args.get("padding")))
    reflect = "reflection" in ctx.op or "replication" in ctx.op or args.get("mode") not in (
        None, "constant")
    for i in range(len(x)):
        k = len(x) - 1 - i  # pads list the last axis first
        if 2 * k + 1 < len(pads) and (pads[2 * k] or pads[2 * k + 1]):
            if reflect:
                ctx.fix(x[i], "reflect/replicate padding")
                ctx.fix(out[i], "reflect/replicate padding")
                continue
            left, right = int(pads[2 * k]), int(pads[2 * k + 1])
            if left < 0 or right < 0:
                ctx.fix(x[i], "negative padding")
                ctx.fix(out[i], "negative padding")
                continue
            ctx.unify(out[i], Cat((ctx.alg.atom(left, fixed="padding"), x[i],
                                   ctx.alg.atom(right, fixed="padding"))))
        else:
            ctx.unify(x[i], out[i])


# ---------------------------------------------------------------- indexing
@register_rule("aten.index")
def index(ctx: "Context", args: dict[str, Any]) -> None:
    """Advanced indexing: indexed axes are fixed; untouched leading/trailing axes pass through."""
    x = ctx.terms(args["self"])
    out = ctx.output()
    indices = list(args["indices"])
    used = [i for i, t in enumerate(indices) if t is not None]
    for i in used:
        ctx.fix(x[i], "indexed by a tensor")
    lead = used[0] if used else len(x)
    for i in range(lead):
        ctx.unify(x[i], out[i])
    trailing = len(x) - (used[-1] + 1 if used else len(x))
    for i in range(1, trailing + 1):
        ctx.unify(x[-i], out[-i])
    for t in out[lead:len(out) - trailing]:
        ctx.fix(t, "result of tensor indexing")


@register_rule("aten.index_select", "aten.gather", "aten.take_along_dim", "aten.scatter",
               "aten.scatter_add", "aten.index_add", "aten.index_copy", "aten.index_put",
               "aten.index_fill", "aten.scatter_reduce", "aten.masked_scatter",
               "aten.masked_select", "aten.nonzero", "aten.unique", "aten._unique2",
               "aten.one_hot")
def gather_like(ctx: "Context", args: dict[str, Any]) -> None:
    """Ops that address positions by value: every axis involved is fixed (always safe)."""
    for value in args.values():
        for t in (value if isinstance(value, list | tuple) else [value]):
            for term in ctx.terms(t) or []:
                ctx.fix(term, f"positions addressed by value ({ctx.op})")
    for out in [ctx.output()] + ctx.extra_outputs():
        for term in out:
            ctx.fix(term, f"positions addressed by value ({ctx.op})")


@register_rule("aten.embedding")
def embedding(ctx: "Context", args: dict[str, Any]) -> None:
    w, idx = ctx.terms(args["weight"]), ctx.terms(args["indices"])
    out = ctx.output()
    ctx.fix(w[0], "embedding rows are looked up by token id")
    for a, b in zip(idx, out[:-1]):
        ctx.unify(a, b)
    ctx.unify(out[-1], w[1])


# ---------------------------------------------------------------- linear algebra
def matmul_terms(ctx: "Context", a: list[Term], b: list[Term], out: list[Term]) -> None:
    """out = a @ b with NumPy matmul semantics (1-D operands, broadcast batch axes)."""
    a_vec, b_vec = len(a) == 1, len(b) == 1
    a2 = [ctx.alg.unit] + list(a) if a_vec else list(a)
    b2 = list(b) + [ctx.alg.unit] if b_vec else list(b)
    ctx.unify(a2[-1], b2[-2])  # contraction
    o = list(out)
    if not b_vec:
        ctx.unify(o.pop(), b2[-1])
    if not a_vec:
        ctx.unify(o.pop(), a2[-2])
    batch_a, batch_b = a2[:-2], b2[:-2]
    for i in range(1, len(o) + 1):
        for batch in (batch_a, batch_b):
            if i <= len(batch) and ctx.alg.size(batch[-i]) == ctx.alg.size(o[-i]):
                ctx.unify(batch[-i], o[-i])


@register_rule("aten.matmul", "aten.mm", "aten.bmm", "aten.dot", "aten.mv", "aten.vdot",
               "aten.inner")
def matmul(ctx: "Context", args: dict[str, Any]) -> None:
    values = [v for v in args.values() if ctx.terms(v) is not None]
    matmul_terms(ctx, ctx.terms(values[0]), ctx.terms(values[1]), ctx.output())


@register_rule("aten.addmm", "aten.baddbmm", "aten.addbmm", "aten.addmv")
def addmm(ctx: "Context", args: dict[str, Any]) -> None:
    out = ctx.output()
    m1 = args.get("mat1", args.get("batch1", args.get("mat")))
    m2 = args.get("mat2", args.get("batch2", args.get("vec")))
    matmul_terms(ctx, ctx.terms(m1), ctx.terms(m2), out)
    bias = ctx.terms(args["self"])
    for i in range(1, len(bias) + 1):
        if ctx.alg.size(bias[-i]) == ctx.alg.size(out[-i]):
            ctx.unify(bias[-i], out[-i])


@register_rule("aten.outer", "aten.ger")
def outer(ctx: "Context", args: dict[str, Any]) -> None:
    a, b = ctx.terms(args["self"]), ctx.terms(args["vec2"])
    out = ctx.output()
    ctx.unify(out[0], a[0])
    ctx.unify(out[1], b[0])


@register_rule("aten.linear")
def linear(ctx: "Context", args: dict[str, Any]) -> None:
    x, w = ctx.terms(args["input"]), ctx.terms(args["weight"])
    out = ctx.output()
    ctx.unify(x[-1], w[-1])
    if len(w) == 2:
        ctx.unify(out[-1], w[0])
        lead = out[:-1]
    else:
        lead = out
    for a, b in zip(x[:-1], lead):
        ctx.unify(a, b)
    bias = ctx.terms(args.get("bias"))
    if bias:
        ctx.unify(bias[-1], out[-1])


@register_rule("aten.einsum")
def einsum(ctx: "Context", args: dict[str, Any]) -> None:
    equation = args["equation"].replace(" ", "")
    inputs, _, output = equation.partition("->")
    specs = inputs.split(",")
    if "." in equation or not output and "->" not in equation:
        raise NotImplementedError("einsum with ellipsis or implicit output")
    by_letter: dict[str, Term] = {}
    out = ctx.output()
    for letters, terms in list(zip(specs, [ctx.terms(t) for t in args["tensors"]])) + [
            (output, out)]:
        for letter, term in zip(letters, terms):
            if letter in by_letter and ctx.alg.size(by_letter[letter]) == ctx.alg.size(term):
                ctx.unify(by_letter[letter], term)
            elif letter not in by_letter or ctx.alg.size(term) != 1:
                by_letter.setdefault(letter, term)


# ---------------------------------------------------------------- convolution
@register_rule("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution",
               "aten._convolution", "aten.conv_transpose1d", "aten.conv_transpose2d",
               "aten.conv_transpose3d")
def convolution(ctx: "Context", args: dict[str, Any]) -> None:
    """Channels: in-axis of the weight meets the input's channels; out-axis the output's.

    Grouped and depthwise convolutions share a *group* factor between input and output
    channels: channels may move with their group, or within it consistently for every group.
    Spatial axes are fixed.
    """
    x, w = ctx.terms(args["input"]), ctx.terms(args["weight"])
    out = ctx.output()
    transposed = bool(args.get("transposed", False)) or "transpose" in ctx.op
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
        group = ctx.alg.atom(groups)
        per_in = ctx.alg.size(c_in) // groups
        per_out = ctx.alg.size(c_out) // groups
        in_inner, out_inner = ctx.alg.atom(per_in), ctx.alg.atom(per_out)
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
    for t in list(w[2:]) + list(x[-spatial:]) + list(out[-spatial:]):
        ctx.fix(t, "spatial position")


POOLS = """max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d
adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
max_pool2d_with_indices max_pool3d_with_indices upsample_nearest1d upsample_nearest2d
upsample_bilinear2d upsample_bicubic2d upsample_linear1d _upsample_nearest_exact2d
_adaptive_avg_pool2d pixel_shuffle pixel_unshuffle""".split()


@register_rule(*(f"aten.{n}" for n in POOLS))
def pooling(ctx: "Context", args: dict[str, Any]) -> None:
    """Pooling and resizing: channels pass through, spatial axes are fixed."""
    x = ctx.terms(args["self"] if "self" in args else args["input"])
    match = re.search(r"(\d)d", ctx.op)
    spatial = int(match.group(1)) if match else 2
    if "pixel_" in ctx.op:
        for t in x[-3:]:
            ctx.fix(t, "pixel (un)shuffle mixes channels and space")
    for out in [ctx.output()] + ctx.extra_outputs():
        for a, b in zip(x[:-spatial], out[:-spatial]):
            if "pixel_" in ctx.op:
                continue
            ctx.unify(a, b)
        for t in list(x[-spatial:]) + list(out[-spatial:]) + (list(out[-3:])
                                                                if "pixel_" in ctx.op else []):
            ctx.fix(t, "spatial position")


# ---------------------------------------------------------------- normalisation
@register_rule("aten.batch_norm", "aten.native_batch_norm", "aten._native_batch_norm_legit",
               "aten._native_batch_norm_legit_no_training",
               "aten._native_batch_norm_legit_functional", "aten.instance_norm",
               "aten.cudnn_batch_norm", "aten.miopen_batch_norm")
def batch_norm(ctx: "Context", args: dict[str, Any]) -> None:
    """Per-channel statistics (axis 1): weight, bias and running stats join the channel."""
    x = ctx.terms(args["input"])
    outs = [ctx.output()] + ctx.extra_outputs()
    channel = x[1] if len(x) > 1 else x[0]
    for name in ("weight", "bias", "running_mean", "running_var"):
        terms = ctx.terms(args.get(name))
        if terms:
            ctx.unify(terms[0], channel)
    for a, b in zip(x, outs[0]):
        ctx.unify(a, b)
    for extra in outs[1:]:
        if len(extra) == 1 and ctx.alg.size(extra[0]) == ctx.alg.size(channel):
            ctx.unify(extra[0], channel)


@register_rule("aten.layer_norm", "aten.native_layer_norm", "aten.rms_norm",
               "aten._fused_rms_norm")
def layer_norm(ctx: "Context", args: dict[str, Any]) -> None:
    """Statistics over the last axes are invariant to permuting them; weight/bias follow them."""
    x = ctx.terms(args["input"])
    shape = list(args["normalized_shape"])
    outs = [ctx.output()] + ctx.extra_outputs()
    for a, b in zip(x, outs[0]):
        ctx.unify(a, b)
    k = len(shape)
    for name in ("weight", "bias"):
        terms = ctx.terms(args.get(name))
        if terms:
            for a, b in zip(terms, x[-k:]):
                ctx.unify(a, b)
    for extra in outs[1:]:  # mean / rstd: the leading axes
        for a, b in zip(x[:-k], extra[:len(x) - k]):
            ctx.unify(a, b)


@register_rule("aten.group_norm", "aten.native_group_norm")
def group_norm(ctx: "Context", args: dict[str, Any]) -> None:
    """Statistics per group of channels: channels are (group) x (channel within group)."""
    x = ctx.terms(args["input"])
    groups = int(args.get("num_groups", args.get("group")))
    outs = [ctx.output()] + ctx.extra_outputs()
    for a, b in zip(x, outs[0]):
        ctx.unify(a, b)
    size = ctx.alg.size(x[1])
    structure = Prod((ctx.alg.atom(groups), ctx.alg.atom(size // groups)))
    ctx.unify(x[1], structure)
    for name in ("weight", "bias"):
        terms = ctx.terms(args.get(name))
        if terms:
            ctx.unify(terms[0], x[1])
    for extra in outs[1:]:  # mean / rstd of shape (N, groups)
        ctx.unify(extra[0], x[0])
        if len(extra) > 1:
            ctx.unify(extra[1], structure.parts[0])


# ---------------------------------------------------------------- attention
@register_rule("aten.scaled_dot_product_attention",
               "aten._scaled_dot_product_flash_attention_for_cpu",
               "aten._scaled_dot_product_efficient_attention",
               "aten._scaled_dot_product_flash_attention",
               "aten._scaled_dot_product_cudnn_attention")
def attention(ctx: "Context", args: dict[str, Any]) -> None:
    """softmax(q k^T) v per head: q/k share the within-head axis, v/out another; heads are
    shared by q, k, v and the output (with grouped-query attention, q's heads are
    (kv head) x (query per kv head))."""
    q, k, v = (ctx.terms(args[n]) for n in ("query", "key", "value"))
    out = ctx.output()
    ctx.unify(q[-1], k[-1])
    ctx.unify(k[-2], v[-2])
    ctx.unify(out[-2], q[-2])
    ctx.unify(out[-1], v[-1])
    if len(q) >= 3:
        hq, hk = ctx.alg.size(q[-3]), ctx.alg.size(k[-3])
        ctx.unify(k[-3], v[-3])
        ctx.unify(out[-3], q[-3])
        if hq == hk:
            ctx.unify(q[-3], k[-3])
        elif hk and hq % hk == 0:
            ctx.unify(q[-3], Prod((k[-3], ctx.alg.atom(hq // hk))))
        else:
            ctx.fix(q[-3], "head counts of query and key do not divide")
        for i in range(4, len(q) + 1):
            for t in (k, v, out):
                if i <= len(t):
                    ctx.unify(q[-i], t[-i])
    if args.get("is_causal"):
        for t in (q[-2], k[-2]):
            ctx.fix(t, "causal attention: sequence order matters")
    mask = ctx.terms(args.get("attn_mask"))
    if mask:
        scores = list(q[:-1]) + [k[-2]]
        for i in range(1, len(mask) + 1):
            if i <= len(scores) and ctx.alg.size(mask[-i]) == ctx.alg.size(scores[-i]):
                ctx.unify(mask[-i], scores[-i])


@register_rule("getitem")
def getitem(ctx: "Context", args: dict[str, Any]) -> None:
    ctx.set_output(ctx.item(args["self"], args["index"]))

