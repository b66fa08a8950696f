"""Matrix products: the contracted axes meet, the others pass to the output."""
from __future__ import annotations

from typing import Any

from ..context import Context, Term
from .registry import aten, register_rule


def matmul_terms(ctx: Context, a: list[Term], b: list[Term], out: list[Term]) -> None:
    """out = a @ b with NumPy matmul semantics (1-D operands, broadcast batch axes)."""
    a_vec, b_vec = len(a) == 1, len(b) == 1
    a2 = [ctx.unit] + list(a) if a_vec else list(a)
    b2 = list(b) + [ctx.unit] if b_vec else list(b)
    ctx.unify(a2[-1], b2[-2])  # contraction
    o = list(out)
    if not b_vec:
        ctx.unify(o.pop(), b2[-1])
    if not a_vec:
        ctx.unify(o.pop(), a2[-2])
    ctx.unify_from_right(a2[:-2], o)  # broadcast batch axes
    ctx.unify_from_right(b2[:-2], o)


@register_rule(*aten("matmul", "mm", "bmm", "dot", "mv", "vdot", "inner"))
def matmul(ctx: Context, args: dict[str, Any]) -> None:
    values = [v for v in args.values() if ctx.terms(v) is not None]
    matmul_terms(ctx, ctx.terms(values[0]), ctx.terms(values[1]), ctx.output())


@register_rule(*aten("addmm", "baddbmm", "addbmm", "addmv"))
def addmm(ctx: Context, args: dict[str, Any]) -> None:
    """``self + m1 @ m2``: the product as :func:`matmul`, ``self`` broadcast onto the output."""
    out = ctx.output()
    m1 = args.get("mat1", args.get("batch1", args.get("mat")))
    m2 = args.get("mat2", args.get("batch2", args.get("vec")))
    matmul_terms(ctx, ctx.terms(m1), ctx.terms(m2), out)
    ctx.unify_from_right(ctx.terms(args["self"]), out)


@register_rule("aten.outer", "aten.ger")
def outer(ctx: Context, args: dict[str, Any]) -> None:
    a, b = ctx.terms(args["self"]), ctx.terms(args["vec2"])
    out = ctx.output()
    ctx.unify(out[0], a[0])
    ctx.unify(out[1], b[0])


@register_rule("aten.linear")
def linear(ctx: Context, args: dict[str, Any]) -> None:
    """``x @ W.T + b``: x's last axis meets W's in-axis, W's out-axis is the output's."""
    x, w = ctx.terms(args["input"]), ctx.terms(args["weight"])
    out = ctx.output()
    ctx.unify(x[-1], w[-1])
    if len(w) == 2:
        ctx.unify(out[-1], w[0])
        lead = out[:-1]
    else:
        lead = out
    ctx.unify_each(x[:-1], lead)
    bias = ctx.terms(args.get("bias"))
    if bias:
        ctx.unify(bias[-1], out[-1])


@register_rule("aten.einsum")
def einsum(ctx: Context, args: dict[str, Any]) -> None:
    """Axes with the same letter meet."""
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
            if letter in by_letter and ctx.size(by_letter[letter]) == ctx.size(term):
                ctx.unify(by_letter[letter], term)
            elif letter not in by_letter or ctx.size(term) != 1:
                by_letter.setdefault(letter, term)


@register_rule("aten._grouped_mm", "aten.grouped_mm", "transformers.grouped_mm_fallback")
def grouped_mm(ctx: Context, args: dict[str, Any]) -> None:
    """Per-group matrix products (mixture-of-experts): the contraction axes meet; the group
    axis (experts) and whichever axis ``offs`` cuts into groups are fixed, since which rows
    belong to which group is given by values; the other axes pass to the output.

    Shapes: (M, K) x (G, K, N) -> (M, N), rows cut by ``offs``; (G, M, K) x (K, N) -> (M, N),
    columns cut; (M, K) x (K, N) -> (G, M, N), contraction cut; (G, M, K) x (G, K, N) ->
    (G, M, N). Also Hugging Face's ``grouped_mm_fallback(input, weight, offs)`` custom op.
    """
    a = ctx.terms(args["self"] if "self" in args else args["input"])
    b = ctx.terms(args["mat2"] if "mat2" in args else args["weight"])
    out = ctx.output()
    reason = "grouped matrix product: groups given by values (offs)"
    ctx.fix_all(ctx.terms(args.get("offs")) or [], reason)
    ctx.unify(a[-2], out[-2])
    ctx.unify(b[-1], out[-1])
    cut_contraction = len(a) == 2 and len(b) == 2
    if cut_contraction:
        ctx.fix_all([a[-1], b[-2]], reason)
    else:
        ctx.unify(a[-1], b[-2])
    if len(a) == 3:
        ctx.fix(a[0], reason)
    if len(b) == 3:
        ctx.fix(b[0], reason)
    if len(out) == 3:
        ctx.fix(out[0], reason)
    if len(a) == 2 and len(b) == 3:  # rows cut into groups
        ctx.fix(a[-2], reason)
    if len(a) == 3 and len(b) == 2:  # columns cut into groups
        ctx.fix(b[-1], reason)
    bias = ctx.terms(args.get("bias"))
    if bias:
        ctx.fix_all(bias[:-1], reason)
        ctx.unify(bias[-1], out[-1])
