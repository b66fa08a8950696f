"""Scaled dot-product attention: heads and the two within-head axes."""
from __future__ import annotations

from typing import Any

from ..context import Context, Prod
from .registry import aten, register_rule


@register_rule(*aten("scaled_dot_product_attention",
                     "_scaled_dot_product_flash_attention_for_cpu",
                     "_scaled_dot_product_efficient_attention",
                     "_scaled_dot_product_flash_attention",
                     "_scaled_dot_product_cudnn_attention"))
def attention(ctx: Context, args: dict[str, Any]) -> None:
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
        hq, hk = ctx.size(q[-3]), ctx.size(k[-3])
        ctx.unify(k[-3], v[-3])
        ctx.unify(out[-3], q[-3])
        if hq == hk:
            ctx.unify(q[-3], k[-3])
        elif hk and hq % hk == 0:
            ctx.unify(q[-3], Prod((k[-3], ctx.new_axis(hq // hk))))
        else:
            ctx.fix(q[-3], "head counts of query and key do not divide")
        for t in (k, v, out):  # batch axes in front of the heads
            ctx.unify_from_right(q[:-3], t[:-3])
    if args.get("is_causal"):
        ctx.fix_all([q[-2], k[-2]], "causal attention: sequence order matters")
    mask = ctx.terms(args.get("attn_mask"))
    if mask:
        ctx.unify_from_right(mask, list(q[:-1]) + [k[-2]])
