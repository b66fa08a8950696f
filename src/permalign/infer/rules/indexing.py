"""Ops that address positions by value: advanced indexing, gather/scatter, embeddings."""
from __future__ import annotations

from typing import Any

from ..context import Context
from .registry import aten, register_rule


@register_rule("aten.index")
def index(ctx: Context, args: dict[str, Any]) -> None:
    """Advanced indexing: indexed axes are fixed; untouched leading/trailing axes pass through."""
    x = ctx.terms(args["self"])
    out = ctx.output()
    indices = list(args["indices"])
    used = [i for i, t in enumerate(indices) if t is not None]
    ctx.fix_all([x[i] for i in used], "indexed by a tensor")
    lead = used[0] if used else len(x)
    ctx.unify_each(x[:lead], out[:lead])
    trailing = len(x) - (used[-1] + 1 if used else len(x))
    for i in range(1, trailing + 1):
        ctx.unify(x[-i], out[-i])
    ctx.fix_all(out[lead:len(out) - trailing], "result of tensor indexing")


@register_rule(*aten("index_select", "gather", "take_along_dim", "scatter", "scatter_add",
                     "index_add", "index_copy", "index_put", "index_fill", "scatter_reduce",
                     "masked_scatter", "masked_select", "nonzero", "unique", "_unique2",
                     "one_hot"))
def gather_like(ctx: Context, args: dict[str, Any]) -> None:
    """Ops that address positions by value: every axis involved is fixed (always safe)."""
    reason = f"positions addressed by value ({ctx.op})"
    for value in args.values():
        for t in (value if isinstance(value, list | tuple) else [value]):
            ctx.fix_all(ctx.terms(t) or [], reason)
    for out in [ctx.output()] + ctx.extra_outputs():
        ctx.fix_all(out, reason)


@register_rule("aten.embedding")
def embedding(ctx: Context, args: dict[str, Any]) -> None:
    """Rows looked up by token id (fixed); the embedding axis passes to the output."""
    w, idx = ctx.terms(args["weight"]), ctx.terms(args["indices"])
    out = ctx.output()
    ctx.fix(w[0], "embedding rows are looked up by token id")
    ctx.unify_each(idx, out[:-1])
    ctx.unify(out[-1], w[1])
