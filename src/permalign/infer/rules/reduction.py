"""Reductions over axes, and ops that pick positions along an axis (max, sort, topk)."""
from __future__ import annotations

from typing import Any

from ..context import Context
from .registry import aten, dims, register_rule

REDUCTIONS = """mean sum amax amin var std var_mean std_mean prod logsumexp any all nansum
linalg_vector_norm norm count_nonzero""".split()


@register_rule(*aten(*REDUCTIONS))
def reduction(ctx: Context, args: dict[str, Any]) -> None:
    """Reducing an axis is invariant to its permutation; the other axes pass through."""
    x = ctx.terms(args["self"])
    reduced = dims(args.get("dim"), len(x))
    survivors = [t for i, t in enumerate(x) if i not in reduced]
    for out in [ctx.output()] + ctx.extra_outputs():
        if len(out) == len(x):  # keepdim: reduced axes became size 1
            kept = [t for i, t in enumerate(out) if i not in reduced]
        else:
            kept = out
        if len(kept) == len(survivors):
            ctx.unify_each(survivors, kept)


@register_rule(*aten("max", "min", "argmax", "argmin", "sort", "argsort", "topk", "kthvalue",
                     "median", "mode"))
def index_reduction(ctx: Context, args: dict[str, Any]) -> None:
    """Ops whose result depends on the order of an axis (indices): that axis is fixed."""
    x = ctx.terms(args["self"])
    picked = dims(args.get("dim"), len(x))
    reason = f"order matters along this axis ({ctx.op})"
    ctx.fix_all([x[d] for d in picked], reason)
    for out in [ctx.output()] + ctx.extra_outputs():
        if len(out) == len(x):
            for i, (a, b) in enumerate(zip(x, out)):
                if i in picked:
                    ctx.fix(b, reason)
                else:
                    ctx.unify(a, b)
        else:
            ctx.unify_each([t for i, t in enumerate(x) if i not in picked], out)


@register_rule("aten.histc", "aten.bincount")
def histogram(ctx: Context, args: dict[str, Any]) -> None:
    """Counts per bin: the bins are values, so the output axis is fixed; a histogram does not
    depend on the order of its input (weights go with their entries)."""
    x, weights = ctx.terms(args["self"]), ctx.terms(args.get("weights"))
    if weights:
        ctx.unify_each(x, weights)
    ctx.fix_all(ctx.output(), f"histogram bins ({ctx.op})")
