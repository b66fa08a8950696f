"""What an op rule sees and may do: the axes of the op's inputs and outputs, and constraints.

A rule reads input axes with :meth:`Context.terms`, gets the output's with
:meth:`Context.output`, and relates them with :meth:`Context.unify` / :meth:`Context.fix` (and
the few helpers below). Rules never touch the axis algebra directly.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import Node

from .axes import AxisAlgebra, Cat, Prod, Term

__all__ = ["Context", "Cat", "Prod", "Term"]


def _shape(value: Any) -> list[int] | None:
    if isinstance(value, torch.Tensor):
        return [int(s) for s in value.shape]
    return None


class Context:
    """The axis algebra, the axes of every value computed so far, and the node being processed."""

    def __init__(self) -> None:
        self.alg = AxisAlgebra()
        self.values: dict[Node, Any] = {}  # node -> [terms] or [[terms] | None, ...]
        self.node: Node | None = None
        self.op = ""  # the node's op name, e.g. "aten.linear" (for messages)

    # ------------------------------------------------------------------ reading axes
    def terms(self, arg: Any) -> list[Term] | None:
        """The axes of a tensor argument, or None if ``arg`` is not a single tensor."""
        if not isinstance(arg, Node):
            return None
        value = self.values.get(arg)
        if value is None or (value and isinstance(value[0], list | type(None))):
            return None
        return value

    def is_integer(self, arg: Any) -> bool:
        """True if ``arg`` is a tensor of integers or booleans (indices, masks, counts)."""
        if not isinstance(arg, Node):
            return False
        val = arg.meta.get("val")
        return isinstance(val, torch.Tensor) and not (val.is_floating_point() or val.is_complex())

    def all_outputs(self) -> list[list[Term]]:
        """The axes of every tensor the op returns (fresh axes on first use)."""
        if self.node not in self.values:
            val = self.node.meta.get("val")
            if isinstance(val, list | tuple):
                self.values[self.node] = [self.fresh(_shape(v)) if _shape(v) is not None
                                          else None for v in val]
            else:
                self.values[self.node] = self.fresh(_shape(val) or [])
        value = self.values[self.node]
        if value and isinstance(value[0], list | type(None)):
            return [v for v in value if v is not None]
        return [value]

    def output(self) -> list[Term]:
        """The axes of the op's (first) output."""
        return self.all_outputs()[0]

    def extra_outputs(self) -> list[list[Term]]:
        """The axes of the op's other outputs (e.g. a norm's mean and rstd)."""
        return self.all_outputs()[1:]

    def set_output(self, terms: Any) -> None:
        """Declare the output's axes to be exactly ``terms`` (views that only reorder axes)."""
        self.values[self.node] = list(terms) if terms is not None else None

    def item(self, arg: Node, index: int) -> Any:
        """Element ``index`` of a multi-output value (``getitem``)."""
        value = self.values.get(arg)
        return None if value is None else value[index]

    # ------------------------------------------------------------------ making axes
    def fresh(self, shape: Sequence[int]) -> list[Term]:
        """New, unconstrained axes of the given sizes."""
        return [self.alg.atom(s) for s in shape]

    def new_axis(self, size: int, fixed: str | None = None) -> Term:
        """One new axis (fixed with ``fixed`` as the reason, if given)."""
        return self.alg.atom(size, fixed=fixed)

    @property
    def unit(self) -> Term:
        """The size-1 axis."""
        return self.alg.unit

    def size(self, term: Term) -> int:
        """Number of indices along an axis."""
        return self.alg.size(term)

    def slice(self, term: Term, start: int, end: int) -> Term:
        """The axis ``term[start:end]`` (refines ``term`` into pieces as needed)."""
        return self.alg.slice(term, start, end)

    # ------------------------------------------------------------------ constraints
    def unify(self, a: Term, b: Term) -> None:
        """The two axes carry the same units in the same order."""
        self.alg.unify(a, b)

    def fix(self, t: Term, reason: str) -> None:
        """The axis may never be permuted (``reason`` is shown to the user)."""
        self.alg.fix(t, reason)

    def fix_all(self, terms: Sequence[Term], reason: str) -> None:
        for t in terms:
            self.fix(t, reason)

    def unify_from_right(self, source: Sequence[Term], target: Sequence[Term]) -> None:
        """Broadcasting: line the two shapes up from the right and unify equal-sized axes."""
        for i in range(1, min(len(source), len(target)) + 1):
            if self.size(source[-i]) == self.size(target[-i]):
                self.unify(source[-i], target[-i])

    def unify_each(self, source: Sequence[Term], target: Sequence[Term]) -> None:
        """Unify axis i of ``source`` with axis i of ``target`` (as far as both go)."""
        for a, b in zip(source, target):
            self.unify(a, b)

    def reshape(self, source: Sequence[Term], target: Sequence[Term]) -> None:
        """A row-major reshape between the two shapes."""
        self.alg.unify_products(list(source), list(target))
