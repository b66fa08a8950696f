"""Axis algebra for spec inference: a union-find over atoms with structured refinements.

Every axis of every tensor in the graph is a *term*:

- an atom (an int): a set of units that must share one permutation (union-find classes);
- ``Prod(parts)``: the axis is the row-major product of its parts (a flatten, or heads x dim);
- ``Cat(parts)``: the axis is the concatenation of its parts (a cat, or a split's pieces).

Unifying two terms says "these axes carry the same units in the same order". An atom that meets
a structured term is *refined*: its class now means that structure. Atoms can be *fixed* (never
permuted) with a reason, e.g. because they touch the model's inputs or outputs. Fixing is always
safe, so where two structures cannot be reconciled both are fixed rather than guessed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Prod:
    parts: tuple


@dataclass(frozen=True)
class Cat:
    parts: tuple


Term = Union[int, Prod, Cat]


class InferenceError(Exception):
    """Internal inconsistency while propagating axes (a rule is wrong for an op)."""


class AxisAlgebra:
    """Atoms, their union-find classes, refinements and fixed flags."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.atom_size: list[int] = []
        self.fixed: dict[int, str] = {}  # root -> reason
        self.refined: dict[int, Term] = {}  # root -> structure
        self.unit = self.atom(1)

    # ------------------------------------------------------------------ atoms
    def atom(self, size: int, fixed: str | None = None) -> int:
        idx = len(self.parent)
        self.parent.append(idx)
        self.atom_size.append(int(size))
        if fixed:
            self.fixed[idx] = fixed
        return idx

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def size(self, t: Term) -> int:
        if isinstance(t, int):
            return self.atom_size[t]
        sizes = [self.size(p) for p in t.parts]
        return math.prod(sizes) if isinstance(t, Prod) else sum(sizes)

    # ------------------------------------------------------------------ normal form
    def normalize(self, t: Term) -> Term:
        """Resolve refined atoms, flatten nested Prod/Cat, drop trivial parts."""
        if isinstance(t, int):
            root = self.find(t)
            if root in self.refined:
                return self.normalize(self.refined[root])
            return root
        kind = type(t)
        parts: list[Term] = []
        for p in t.parts:
            p = self.normalize(p)
            if isinstance(p, kind):
                parts.extend(p.parts)
            elif kind is Prod and self.size(p) == 1:
                continue
            elif kind is Cat and self.size(p) == 0:
                continue
            else:
                parts.append(p)
        if not parts:
            return self.unit
        if len(parts) == 1:
            return parts[0]
        return kind(tuple(parts))

    def leaves(self, t: Term) -> list[int]:
        t = self.normalize(t)
        if isinstance(t, int):
            return [t]
        return [leaf for p in t.parts for leaf in self.leaves(p)]

    # ------------------------------------------------------------------ constraints
    def fix(self, t: Term, reason: str) -> None:
        for leaf in self.leaves(t):
            self.fixed.setdefault(self.find(leaf), reason)

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.atom_size[ra] != self.atom_size[rb]:
            raise InferenceError(f"axis sizes {self.atom_size[ra]} and {self.atom_size[rb]} "
                                 "were unified")
        self.parent[rb] = ra
        if rb in self.fixed:
            self.fixed.setdefault(ra, self.fixed.pop(rb))

    def _refine(self, a: int, structure: Term) -> None:
        root = self.find(a)
        reason = self.fixed.get(root)
        self.refined[root] = structure
        if reason:
            self.fix(structure, reason)

    def unify(self, t1: Term, t2: Term) -> None:
        """Say that two axes carry the same units in the same order."""
        t1, t2 = self.normalize(t1), self.normalize(t2)
        if self.size(t1) != self.size(t2):
            raise InferenceError(f"axes of sizes {self.size(t1)} and {self.size(t2)} were "
                                 "unified")
        if t1 == t2 or self.size(t1) <= 1:
            return
        if isinstance(t1, int) and isinstance(t2, int):
            self._union(t1, t2)
        elif isinstance(t1, int):
            self._refine(t1, t2)
        elif isinstance(t2, int):
            self._refine(t2, t1)
        elif isinstance(t1, Prod) and isinstance(t2, Prod):
            self.unify_products(list(t1.parts), list(t2.parts))
        elif isinstance(t1, Cat) and isinstance(t2, Cat) and [self.size(p) for p in t1.parts] \
                == [self.size(p) for p in t2.parts]:
            for p, q in zip(t1.parts, t2.parts):
                self.unify(p, q)
        else:
            self.fix(t1, "structure conflict (concatenation vs product)")
            self.fix(t2, "structure conflict (concatenation vs product)")

    def unify_products(self, left: list[Term], right: list[Term]) -> None:
        """Unify two row-major products (a reshape), splitting atoms where the sizes require.

        Leading parts of equal size are unified; a larger leading atom is split into
        (smaller size) x (rest) first, as row-major order dictates; a concatenation of k
        equal parts meeting a leading factor k (a channel shuffle) shares one permutation
        among its parts. Where none of that applies (e.g. (6, 4) -> (4, 6)), only the
        segment up to the next common boundary of both sides is fixed: row-major indices
        factor there, so the parts after it are unified exactly.
        """
        lhs = [p for p in (self.normalize(t) for t in left) if self.size(p) != 1]
        rhs = [p for p in (self.normalize(t) for t in right) if self.size(p) != 1]
        lhs = [q for p in lhs for q in (p.parts if isinstance(p, Prod) else (p,))]
        rhs = [q for p in rhs for q in (p.parts if isinstance(p, Prod) else (p,))]
        while lhs and rhs:
            x, y = lhs.pop(0), rhs.pop(0)
            sx, sy = self.size(x), self.size(y)
            if sx == sy:
                self.unify(x, y)
                continue
            small, big, big_side = (x, y, rhs) if sx < sy else (y, x, lhs)
            s_small, s_big = min(sx, sy), max(sx, sy)
            big = self.normalize(big)
            if s_big % s_small == 0 and isinstance(big, int):
                head, tail = self.atom(s_small), self.atom(s_big // s_small)
                self._refine(big, Prod((head, tail)))
                self.unify(small, head)
                big_side.insert(0, tail)
                continue
            if isinstance(big, Cat) and len(big.parts) == s_small and all(
                    self.size(p) * s_small == s_big for p in big.parts):
                # (part 1 | ... | part k) viewed as (k, n): the k factor says which part, so
                # it is fixed, and all parts share the n factor's permutation
                tail = self.atom(s_big // s_small)
                self.fix(small, "concatenated parts regrouped (channel shuffle)")
                for part in big.parts:
                    self.unify(part, tail)
                big_side.insert(0, tail)
                continue
            self._fix_segment([x], [y], lhs, rhs)
        if any(self.size(t) != 1 for t in lhs + rhs):
            raise InferenceError("products of different sizes were unified")

    def _fix_segment(self, seg_l: list[Term], seg_r: list[Term], lhs: list[Term],
                     rhs: list[Term]) -> None:
        """Fix the parts up to the next boundary where both sides' products agree, taking
        them off the fronts of ``lhs`` and ``rhs``."""
        size_l = math.prod(self.size(t) for t in seg_l)
        size_r = math.prod(self.size(t) for t in seg_r)
        while size_l != size_r and (lhs if size_l < size_r else rhs):
            if size_l < size_r:
                seg_l.append(lhs.pop(0))
                size_l *= self.size(seg_l[-1])
            else:
                seg_r.append(rhs.pop(0))
                size_r *= self.size(seg_r[-1])
        for t in seg_l + seg_r:
            self.fix(t, "reshape regroups axes in a way that cannot be tracked")

    # ------------------------------------------------------------------ slicing
    def strided(self, t: Term, start: int, end: int, step: int) -> Term:
        """The term of ``axis[start:end:step]``.

        Taking one index in every ``step`` across the whole axis (interleaved gate and up
        projections, ``x[..., 0::2]`` and ``x[..., 1::2]``) reads the axis as ``(units,
        step)`` row-major and keeps component ``start`` of the second factor: the result's
        units are the first factor's, in order. Any other strided slice is fixed.
        """
        n = self.size(t)
        units = n // step if step > 0 else 0
        if step < 1 or n % step or not 0 <= start < step or len(range(start, end, step)) != units:
            self.fix(t, "strided slice")
            return self.atom(len(range(start, end, max(step, 1))), fixed="strided slice")
        unit, component = self.atom(units), self.atom(step)
        self.unify(t, Prod((unit, component)))
        return self.normalize(Prod((unit, self.slice(component, start, start + 1))))

    def slice(self, t: Term, start: int, end: int) -> Term:
        """The term of ``axis[start:end]``; refines atoms into concatenations as needed."""
        t = self.normalize(t)
        n = self.size(t)
        if start <= 0 and end >= n:
            return t
        if end <= start:
            return self.atom(0)
        if isinstance(t, int):
            pieces = [self.atom(s) for s in (start, end - start, n - end) if s > 0]
            middle = pieces[1] if start > 0 else pieces[0]
            self._refine(t, Cat(tuple(pieces)))
            return middle
        if isinstance(t, Cat):
            taken, offset = [], 0
            for part in t.parts:
                size = self.size(part)
                lo, hi = max(start, offset), min(end, offset + size)
                if lo < hi:
                    taken.append(self.slice(part, lo - offset, hi - offset))
                offset += size
            return self.normalize(Cat(tuple(taken)))
        head, rest = t.parts[0], t.parts[1:]
        stride = n // self.size(head)
        if start % stride == 0 and end % stride == 0:
            return self.normalize(Prod((self.slice(head, start // stride, end // stride),)
                                       + tuple(rest)))
        self.fix(t, "sliced across a flattened axis")
        return self.atom(end - start, fixed="sliced across a flattened axis")
