"""Ops that address positions by value: advanced indexing, gather/scatter, embeddings."""
from __future__ import annotations

from typing import Any

import torch

from ..context import Context
from .registry import aten, register_rule


@register_rule("aten.index")
def index(ctx: Context, args: dict[str, Any]) -> None:
    """Advanced indexing ``x[..., idx, ...]``: indexed axes of ``x`` are fixed (addressed by
    value); the index tensors' broadcast axes become the result's (permuting the index tensor
    permutes the result); axes not indexed pass through.

    With adjacent index tensors the broadcast axes sit where the indexed ones were; with
    separated ones (NumPy rule) they come first.
    """
    x = ctx.terms(args["self"])
    out = ctx.output()
    indices = list(args["indices"])
    used = [i for i, t in enumerate(indices) if t is not None]
    ctx.fix_all([x[i] for i in used], "indexed by a tensor")
    index_terms = [ctx.terms(indices[i]) for i in used]
    if any(t is None for t in index_terms) or any(
            not ctx.is_integer(indices[i]) or _is_mask(indices[i]) for i in used):
        # boolean masks: which positions survive depends on values (always safe to fix)
        ctx.fix_all(list(x) + list(out), "indexed by a boolean mask")
        return
    rest = [t for i, t in enumerate(x) if i not in used]
    n_broadcast = len(out) - len(rest)
    adjacent = used == list(range(used[0], used[-1] + 1)) if used else True
    lead = used[0] if used and adjacent else 0
    broadcast = out[lead:lead + n_broadcast]
    ctx.unify_each(rest, out[:lead] + out[lead + n_broadcast:])
    for terms in index_terms:  # (..., k) index tensors broadcast onto the new axes
        ctx.unify_from_right(terms, broadcast)


def _is_mask(arg: Any) -> bool:
    """A boolean index (selects positions by value; one result axis per mask)."""
    val = getattr(arg, "meta", {}).get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.bool


@register_rule(*aten("index_select", "gather", "take_along_dim", "scatter", "scatter_add",
                     "index_add", "index_copy", "index_put", "index_fill", "scatter_reduce",
                     "masked_scatter", "masked_select", "nonzero", "unique", "_unique2",
                     "one_hot"),
               *aten(*(f"{n}_" for n in ("scatter", "scatter_add", "index_add", "index_copy",
                                         "index_put", "index_fill", "scatter_reduce",
                                         "masked_scatter"))))
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
