"""Each expert's units as a group of its own, in mixture-of-experts layers.

A grouped matrix product ``x (M, K) @ W (E, K, N) -> (M, N)`` with rows cut by ``offs`` uses
``W[e]`` for the rows of expert ``e`` (transformers' ``grouped_mm`` experts); so does a batched
product with weights picked per row, ``bmm(W[ids], x[..., None])`` (its ``batched_mm``). The op rules (``rules/linalg.py``) give its N axis and
the K axis of a later grouped product one class shared by all experts, which is sound but too
strict: the rows of expert ``e`` only ever meet ``W[e]``, so each expert's units may move on
their own. This tracker proves when that holds and lets ``graph._build_spec`` split such a class
into one group per expert, with members restricted to one index of the expert axis
(``Member.select``).

It follows two kinds of values through the graph:

- *weights*: a parameter and its views that keep every axis (transpose, ``to``, alias), with
  which parameter axis each value axis is;
- *picked weights*: ``W[ids]`` for a 1-D integer ``ids``: row ``s`` is expert ``ids[s]``'s;
- *expert rows*: the output of a row-cut grouped product or of a batched product with a picked
  weight, and of point-wise ops (silu, mul of two such values cut the same way, chunk along a
  feature axis, unsqueeze/squeeze of a feature axis) applied to it.

A product with a tracked 3-D (or picked) weight records the weight's output axis, and its
contraction axis when the input is expert rows cut the same way (same ``offs`` or ``ids``
node), as *candidates*. Any
other use of a tracked value *poisons* the classes of its axes (an op that mixes rows, a weight
used outside grouped products, an input that is not expert rows). A class is split only if it
is not poisoned, every parameter axis in it is a candidate, and all candidates share one
cut; anything else keeps today's shared class.

Experts written as a loop over a parameter's slices (``self.w[e]``, ``aten.select`` with a
constant index) are handled before the rules: each slice gets axes of its own instead of the
parameter's (:meth:`ExpertTracker.select`). After the walk, a parameter axis whose slices
ended in pairwise different classes, of a parameter used only through such slices, becomes one
restricted member per slice; otherwise the slices' axes are unified with the parameter's, which
is exactly what the ``select`` rule does (:meth:`ExpertTracker.reconcile`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.fx import Node

from .axes import AxisAlgebra, Term
from .rules.elementwise import ELEMENTWISE

# point-wise ops: the output's row r depends only on the inputs' row r, unit by unit
POINTWISE = {f"aten.{n}" for n in ELEMENTWISE} - {
    f"aten.{n}" for n in ("softmax _softmax log_softmax _log_softmax _safe_softmax glu_jvp "
                          "bucketize zeros_like ones_like full_like empty_like rand_like "
                          "randn_like fill copy where masked_fill").split()}
PASSTHROUGH = {"aten.to", "aten._to_copy", "aten.alias", "aten.clone", "aten.contiguous",
               "aten.detach", "aten.lift_fresh_copy"}
GROUPED_MM = {"aten._grouped_mm", "aten.grouped_mm", "transformers.grouped_mm_fallback"}


@dataclass(frozen=True)
class Weight:
    """A parameter seen through a view: value axis i is parameter axis ``axes[i]``."""

    param: Node
    axes: tuple[int, ...]


@dataclass(frozen=True)
class Picked:
    """``param[ids]``: value axis 0 is ``ids``' rows, value axis i > 0 is parameter axis
    ``axes[i - 1]``, and row ``s`` holds index ``ids[s]`` of parameter axis ``expert_axis``."""

    param: Node
    axes: tuple[int, ...]
    expert_axis: int
    ids: Node


@dataclass(frozen=True)
class Rows:
    """Rows (axis 0) belonging to experts: cut into consecutive groups by the offsets ``by``
    (``kind="offs"``) or row ``s`` to expert ``by[s]`` (``kind="ids"``)."""

    by: Node
    kind: str


@dataclass(frozen=True)
class Candidate:
    """A parameter axis whose units expert ``e``'s rows meet only at index ``e`` of
    ``expert_axis``, rows being assigned to experts by ``cut``."""

    expert_axis: int
    experts: int
    cut: Rows


class ExpertTracker:
    """Tracks weights and expert rows through the graph (see the module docstring)."""

    def __init__(self) -> None:
        self.values: dict[Node, Weight | Picked | Rows | list] = {}
        self.candidates: dict[tuple[Node, int], set[Candidate]] = {}
        self.poisoned: list[Term] = []
        self.whole: set[Node] = set()  # parameters used other than through constant slices
        # (parameter, selected axis) -> index -> parameter axis -> that slice's axis
        self.slices: dict[tuple[Node, int], dict[int, dict[int, Term]]] = {}

    def select(self, ctx, node: Node, op: str, args: dict[str, Any]) -> bool:
        """``param[..., e, ...]`` with a constant ``e``: the rule's work, but the result's axes
        are the slice's own (shared by every use of the same slice). False if not that op."""
        w = self.values.get(args.get("self"))
        if op not in ("aten.select", "aten.select_copy") or not isinstance(w, Weight) or not (
                isinstance(args.get("dim"), int) and isinstance(args.get("index"), int)):
            return False
        x, out = ctx.terms(args["self"]), ctx.output()
        d = args["dim"] % len(x)
        index = args["index"] % ctx.size(x[d])
        ctx.slice(x[d], index, index + 1)  # as the select rule: that index is a piece of its own
        rest = [a for i, a in enumerate(w.axes) if i != d]  # parameter axis of each result axis
        axes = self.slices.setdefault((w.param, w.axes[d]), {}).setdefault(index, {})
        for term, axis in zip(out, rest):
            if axis in axes:
                ctx.unify(axes[axis], term)
            else:
                axes[axis] = term
        return True

    def reconcile(self, ctx) -> dict[tuple[Node, int], list[tuple[tuple[int, int], Term]]]:
        """Per parameter axis to split: ``((selected axis, index), slice axis)`` for each
        slice. Every other slice axis is unified with its parameter's axis."""
        out: dict[tuple[Node, int], list[tuple[tuple[int, int], Term]]] = {}
        alg = ctx.alg
        for (param, chosen), by_index in self.slices.items():
            own = ctx.terms(param)
            for axis in {a for axes in by_index.values() for a in axes}:
                pieces = [((chosen, i), axes[axis]) for i, axes in sorted(by_index.items())
                          if axis in axes]
                roots = [{alg.find(leaf) for leaf in alg.leaves(t)} for _, t in pieces]
                apart = all(not (r & q) for i, r in enumerate(roots) for q in roots[:i])
                every = len(pieces) == ctx.size(own[chosen]) > 1  # no unused slice left over
                if param not in self.whole and every and apart:
                    out[(param, axis)] = pieces
                else:  # the slices' uses are not followed: no expert split may rely on them
                    for _, term in pieces:
                        ctx.unify(own[axis], term)
                        self.poisoned.append(term)
        return out

    def tied(self, first: Node, other: Node, terms) -> None:
        """``other`` is another placeholder of ``first``'s tensor; its uses are not followed,
        so ``first`` is read whole and its axes split for no expert."""
        self.whole.add(first)
        self.poison(first, terms)

    def parameter(self, node: Node, ndim: int) -> None:
        """A floating parameter placeholder: a weight with its own axes."""
        self.values[node] = Weight(node, tuple(range(ndim)))

    def step(self, node: Node, op: str, args: dict[str, Any], terms) -> None:
        """After ``node``'s rule ran: propagate tracked values, record candidates, poison."""
        tracked = [a for a in _nodes(args) if a in self.values]
        if not tracked:
            return
        info = [self.values[a] for a in tracked]
        if not (len(tracked) == 1 and isinstance(info[0], Weight)
                and _view_axes(op, args, info[0].axes) is not None):
            self.whole.update(i.param for i in info if isinstance(i, Weight | Picked))
        if op in GROUPED_MM and self._grouped_mm(node, args, terms):
            return
        if op == "aten.bmm" and self._bmm(node, args, terms):
            return
        if op == "getitem" and isinstance(self.values.get(args["self"]), list):
            self.values[node] = self.values[args["self"]][args["index"]]
            return
        first = info[0]
        if isinstance(first, Weight) and len(tracked) == 1:
            axes = _view_axes(op, args, first.axes)
            if axes is not None:
                self.values[node] = Weight(first.param, axes)
                return
            picked = _picked(op, args, first)
            if picked is not None:
                self.values[node] = picked
                return
        if isinstance(first, Rows) and all(i == first for i in info) and self._rowwise(
                node, op, args, tracked):
            return
        for a in tracked:
            self.poison(a, terms)

    def poison(self, node: Node, terms) -> None:
        """Every axis of ``node``'s value (or of its pieces) keeps one class for all experts."""
        value = terms(node)
        if value is None:
            return
        for piece in (value if value and isinstance(value[0], list | type(None)) else [value]):
            self.poisoned.extend(piece or [])

    def _rowwise(self, node: Node, op: str, args: dict[str, Any], tracked: list[Node]) -> bool:
        """Point-wise ops on same-shaped expert rows, chunks of a feature axis, and adding or
        removing a size-1 feature axis."""
        shapes = {tuple(a.meta["val"].shape) for a in tracked}
        if len(shapes) != 1 or len(next(iter(shapes))) < 2:
            return False
        ndim = len(next(iter(shapes)))
        rows = self.values[tracked[0]]
        if op in POINTWISE or op in PASSTHROUGH:
            others = [a for a in _nodes(args) if a not in tracked]
            out = node.meta.get("val")
            if others or getattr(out, "shape", None) is None or tuple(out.shape) not in shapes:
                return False
            self.values[node] = rows
            return True
        if len(tracked) != 1 or not isinstance(args.get("dim"), int):
            return False
        if op in ("aten.chunk", "aten.split", "aten.split_with_sizes"):
            if args["dim"] % ndim == 0:
                return False
            self.values[node] = [rows] * len(node.meta["val"])
            return True
        if op in ("aten.unsqueeze", "aten.squeeze"):  # a size-1 axis other than the rows
            if args["dim"] % (ndim + (op == "aten.unsqueeze")) == 0:
                return False
            self.values[node] = rows
            return True
        return False

    def _grouped_mm(self, node: Node, args: dict[str, Any], terms) -> bool:
        a_node = args["self"] if "self" in args else args["input"]
        b_node = args["mat2"] if "mat2" in args else args["weight"]
        offs = args.get("offs")
        b = self.values.get(b_node)
        a_terms, b_terms = terms(a_node), terms(b_node)
        if not (isinstance(b, Weight) and len(b.axes) == 3 and len(a_terms or []) == 2
                and isinstance(offs, Node) and args.get("bias") is None):
            return False
        rows = Rows(offs, "offs")
        self._product(b.param, b.axes[0], int(b_node.meta["val"].shape[0]), rows,
                      b.axes[2], b.axes[1], b_terms[1], a_node, terms)
        self.values[node] = rows
        return True

    def _bmm(self, node: Node, args: dict[str, Any], terms) -> bool:
        """``bmm(W[ids], x (S, K, 1))`` or ``bmm(x (S, 1, K), W[ids])``."""
        a_node, b_node = args["self"], args["mat2"]
        a, b = self.values.get(a_node), self.values.get(b_node)
        if isinstance(a, Picked) and not isinstance(b, Picked):  # (S, N, K) @ (S, K, 1)
            w, w_node, x_node, out_axis, in_axis = a, a_node, b_node, 0, 1
        elif isinstance(b, Picked) and not isinstance(a, Picked):  # (S, 1, K) @ (S, K, N)
            w, w_node, x_node, out_axis, in_axis = b, b_node, a_node, 1, 0
        else:
            return False
        rows = Rows(w.ids, "ids")
        self._product(w.param, w.expert_axis, int(w.param.meta["val"].shape[w.expert_axis]),
                      rows, w.axes[out_axis], w.axes[in_axis], terms(w_node)[1 + in_axis],
                      x_node, terms)
        self.values[node] = rows
        return True

    def _product(self, param: Node, expert_axis: int, experts: int, rows: Rows, out_axis: int,
                 in_axis: int, in_term: Term, x_node: Node, terms) -> None:
        """Expert ``e``'s rows meet ``param`` at index ``e`` of ``expert_axis``: its output
        axis is a candidate, its contraction axis too if the input rows are cut alike."""
        cut = Candidate(expert_axis, experts, rows)
        self.candidates.setdefault((param, out_axis), set()).add(cut)
        if self.values.get(x_node) == rows:
            self.candidates.setdefault((param, in_axis), set()).add(cut)
        else:  # one input row meets every expert: its features keep one class
            self.poisoned.append(in_term)
            if x_node in self.values:
                self.poison(x_node, terms)

    def split_classes(self, alg: AxisAlgebra, placed: dict[tuple[Node, int], list[int]]
                      ) -> dict[int, Candidate]:
        """Roots of the classes to split into one group per expert, with how.

        ``placed`` maps every parameter (placeholder, axis) to the roots of its leaves.
        """
        poisoned = {alg.find(leaf) for t in self.poisoned for leaf in alg.leaves(t)}
        owners: dict[int, list[tuple[Node, int]]] = {}
        for place, roots in placed.items():
            for root in roots:
                owners.setdefault(root, []).append(place)
        out: dict[int, Candidate] = {}
        for root, places in owners.items():
            if root in poisoned or root in alg.fixed:
                continue
            cuts = set().union(*(self.candidates.get(p, set()) for p in places))
            if len(cuts) == 1 and all(p in self.candidates for p in places):
                out[root] = next(iter(cuts))
        return out


def _nodes(args: dict[str, Any]) -> list[Node]:
    found: list[Node] = []
    for value in args.values():
        for item in (value if isinstance(value, list | tuple) else [value]):
            if isinstance(item, Node) and item not in found:
                found.append(item)
    return found


def _picked(op: str, args: dict[str, Any], weight: Weight) -> Picked | None:
    """``weight[ids]`` with one 1-D integer index tensor on the first axis, else None."""
    indices = args.get("indices")
    if op != "aten.index" or not isinstance(indices, list | tuple) or len(indices) != 1:
        return None
    ids = indices[0]
    val = ids.meta.get("val") if isinstance(ids, Node) else None
    if val is None or val.dim() != 1 or val.is_floating_point() or len(weight.axes) < 2:
        return None
    return Picked(weight.param, weight.axes[1:], weight.axes[0], ids)


def _view_axes(op: str, args: dict[str, Any], axes: tuple[int, ...]) -> tuple[int, ...] | None:
    """A weight view's axes after ``op``, or None if the op is not a pure axis reordering."""
    if op in PASSTHROUGH:
        return axes
    n = len(axes)
    if op in ("aten.transpose", "aten.swapaxes", "aten.swapdims"):
        i, j = (args.get(k) for k in ("dim0", "dim1"))
        if not isinstance(i, int) or not isinstance(j, int):
            return None
        i, j = i % n, j % n
        out = list(axes)
        out[i], out[j] = out[j], out[i]
        return tuple(out)
    if op == "aten.permute":
        order = args.get("dims")
        if not isinstance(order, list | tuple):
            return None
        return tuple(axes[d % n] for d in order)
    return None
