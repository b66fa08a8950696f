"""Element-wise ops, ops whose result depends on the order along an axis, and constants."""
from __future__ import annotations

from typing import Any

from ..context import Context
from .registry import aten, dim, dims, register_rule

ELEMENTWISE = """
add sub rsub mul div true_divide floor_divide remainder fmod pow maximum minimum fmax fmin
atan2 hypot copysign where masked_fill eq ne lt le gt ge __and__ __or__ __xor__
bitwise_and bitwise_or bitwise_xor bitwise_not logical_and logical_or logical_not logical_xor
clamp clamp_min clamp_max clip relu relu6 gelu silu sigmoid tanh exp exp2 log log2 log10
log1p expm1 sqrt rsqrt neg abs reciprocal erf erfc erfinv sin cos tan sinh cosh asin acos atan
hardtanh hardswish hardsigmoid leaky_relu elu selu celu softplus mish prelu glu_jvp sign sgn
floor ceil round trunc frac square nan_to_num lerp addcmul addcdiv dropout native_dropout
alpha_dropout feature_dropout feature_alpha_dropout clone contiguous detach alias to _to_copy
type_as lift_fresh_copy zeros_like ones_like full_like empty_like rand_like randn_like fill
copy isnan isinf isfinite signbit logit threshold xlogy heaviside bucketize
softmax _softmax log_softmax _log_softmax _safe_softmax special_expit
""".split()


def elementwise(ctx: Context, args: dict[str, Any]) -> None:
    """Broadcasting element-wise op: every tensor argument's axes align with the output's."""
    out = ctx.output()
    for value in args.values():
        for tensor in (value if isinstance(value, list | tuple) else [value]):
            terms = ctx.terms(tensor)
            if terms is not None:
                ctx.unify_from_right(terms, out)
    for extra in ctx.extra_outputs():  # e.g. native_dropout's mask: same shape as the input
        ctx.unify_from_right(extra, out)


# in-place variants (add_, relu_, ...) relate their axes in the same way
register_rule(*aten(*ELEMENTWISE), *aten(*(f"{n}_" for n in ELEMENTWISE)))(elementwise)


def _order_matters(ctx: Context, args: dict[str, Any], fixed_dims: list[int]) -> None:
    """Element-wise, except that the axes ``fixed_dims`` keep their order."""
    x, out = ctx.terms(args["self"]), ctx.output()
    ctx.unify_each(x, out)
    for i in fixed_dims:
        ctx.fix(x[i], f"order matters along this axis ({ctx.op})")


@register_rule(*aten("cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"))
def cumulative(ctx: Context, args: dict[str, Any]) -> None:
    """Running totals along ``dim``: that axis keeps its order."""
    _order_matters(ctx, args, dims(args["dim"], len(ctx.terms(args["self"]))))


@register_rule("aten.flip")
def flip(ctx: Context, args: dict[str, Any]) -> None:
    """Reversing ``dims``: those axes keep their order."""
    _order_matters(ctx, args, dims(args["dims"], len(ctx.terms(args["self"]))))


@register_rule("aten.roll")
def roll(ctx: Context, args: dict[str, Any]) -> None:
    """Rolling along ``dims`` (all axes, flattened, when none are given)."""
    _order_matters(ctx, args, dims(args.get("dims"), len(ctx.terms(args["self"]))))


@register_rule("aten.triu", "aten.tril")
def triangular(ctx: Context, args: dict[str, Any]) -> None:
    """Triangle of the last two axes: both keep their order."""
    _order_matters(ctx, args, [len(ctx.terms(args["self"])) - k for k in (2, 1)])


@register_rule("aten.diff")
def diff(ctx: Context, args: dict[str, Any]) -> None:
    """Differences of neighbours along ``dim``: that axis keeps its order (and changes size)."""
    x, out = ctx.terms(args["self"]), ctx.output()
    d = dim(args.get("dim", -1), len(x))
    for i, (a, b) in enumerate(zip(x, out)):
        if i == d:
            ctx.fix_all([a, b], "order matters along this axis (diff)")
        else:
            ctx.unify(a, b)


# ---------------------------------------------------------------- factories
# every entry of these equals every other: no permutation of any axis changes them
CONSTANT_FACTORIES = """full zeros ones empty scalar_tensor new_ones new_zeros new_full new_empty
empty_strided""".split()
# entries depend on their position (or are random draws that a permutation would reorder)
POSITIONAL_FACTORIES = """arange rand randn randint linspace logspace eye tensor randperm
normal""".split()


@register_rule(*aten(*CONSTANT_FACTORIES))
def constant_factory(ctx: Context, args: dict[str, Any]) -> None:
    """A constant tensor is unchanged by any permutation: its axes are fresh and adapt to
    whatever they meet (e.g. the zero initial state of a scan)."""
    ctx.output()


@register_rule(*aten(*POSITIONAL_FACTORIES))
def factory(ctx: Context, args: dict[str, Any]) -> None:
    """Tensors whose entries depend on their position are tied to it: their axes are fixed."""
    ctx.fix_all(ctx.output(), f"axis of a tensor created inside the model ({ctx.op})")
