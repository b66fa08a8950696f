"""The op-rule registry: ATen op name -> rule.

A rule is ``fn(ctx, args)``: ``args`` are the op's arguments bound to their schema names, and
``ctx`` (:class:`~permalign.infer.context.Context`) gives the axes of inputs and outputs and the
constraints a rule may state. Register a rule with :func:`register_rule`; ops without a rule make
inference fail with the op's name and source location.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..context import Context

Rule = Callable[[Context, dict[str, Any]], None]
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


def aten(*names: str) -> list[str]:
    """``aten.NAME`` for each name."""
    return [f"aten.{n}" for n in names]


def dim(d: int, ndim: int) -> int:
    """A possibly negative axis index as a non-negative one."""
    return d + ndim if d < 0 else d


def dims(value: Any, ndim: int) -> list[int]:
    """The axes an op's ``dim`` argument names (all of them for None or ``[]``)."""
    if value is None or (isinstance(value, Sequence) and len(value) == 0):
        return list(range(ndim))
    if isinstance(value, int):
        return [dim(value, ndim)]
    return [dim(int(d), ndim) for d in value]
