"""PermutationSpec: which (state_dict key, axis) pairs share one permutation — the data.

This module holds the spec as data: members and groups, JSON round trip and validation. What a
permutation *does* to tensors (member layout, apply, invert, random, check) is in
:mod:`permalign.permutation`.

A member usually covers a whole axis. Structured axes are described by three integers:
the permuted block starts at ``offset`` on the axis, repeats ``outer`` times, and each unit
spans ``inner`` consecutive indices. So the axis index of unit ``p`` is
``offset + o * size * inner + p * inner + j`` for ``o < outer`` and ``j < inner``. This covers
conv -> flatten -> linear (``inner = H * W``), concatenation (``offset``), attention heads
(``inner = head_dim``) and the within-head axis (``outer = num_heads``). A member that covers
only part of its axis (one input of a concatenation) says so with ``partial``; any other member
must cover the whole axis, which is what catches a wrong group size.

A member may be *restricted* to one index of other axes of its tensor: ``select = ((0, e),)``
on axis 1 of a ``(experts, inner, hidden)`` tensor means the units are ``tensor[e, :, ...]``'s
axis 1 only (one expert's hidden units, a group of its own). The layout fields then describe
the axis within that slice.

An axis that members select on may itself be permuted by one group, the *carrier* (the experts
axis: the router's rows and every expert tensor's axis 0), when the restricted groups form a
full set of *slots*: one group per index ``e`` of that axis, all alike but for the index, each
member selecting only on an axis the carrier permutes. The carrier then moves whole slices and
slot ``e``'s permutation acts on whatever slice lands at index ``e``: applying a permutation
gathers the carrier's axis first, then permutes within each slot (:func:`~permalign.permutation.
permute_tensor`). :meth:`PermutationSpec.carried` finds these sets and refuses any other mix of
selected and permuted axes.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import SpecError

Permutation = dict[str, torch.Tensor]
StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Member:
    """One (state_dict key, axis) place that a group's permutation acts on."""

    key: str
    axis: int
    offset: int = 0
    outer: int = 1
    inner: int = 1
    partial: bool = False  # covers only part of the axis (e.g. one input of a concatenation)
    select: tuple[tuple[int, int], ...] = ()  # (axis, index): only this slice of the tensor

    def __post_init__(self) -> None:  # one canonical order, so equal members compare equal
        object.__setattr__(self, "select", tuple(sorted((int(a), int(i))
                                                        for a, i in self.select)))

    @property
    def whole_axis(self) -> bool:
        """Covers its whole axis (of its slice, when restricted), one index per unit."""
        return self.offset == 0 and self.outer == 1 and self.inner == 1 and not self.partial

    @property
    def is_plain(self) -> bool:
        """Covers the whole axis of the whole tensor, one index per unit."""
        return self.whole_axis and not self.select

    @property
    def covers_part(self) -> bool:
        """True if other indices of the axis lie outside this member's units."""
        return self.partial or self.offset > 0

    def span(self, size: int) -> int:
        """Number of axis indices this member touches for a group of ``size`` units."""
        return self.outer * size * self.inner

    def to_json(self) -> Any:
        if self.is_plain:
            return [self.key, self.axis]
        out = {"key": self.key, "axis": self.axis, "offset": self.offset,
               "outer": self.outer, "inner": self.inner, "partial": self.partial}
        if self.select:
            out["select"] = [list(pair) for pair in self.select]
        return out

    def describe(self) -> str:
        """``key  axis N`` plus the layout when it is not the whole axis."""
        where = "".join(f"[axis {a} = {i}]" for a, i in self.select)
        if self.whole_axis:
            return f"{self.key}{where}  axis {self.axis}"
        return (f"{self.key}{where}  axis {self.axis} (offset={self.offset}, "
                f"outer={self.outer}, inner={self.inner}{', partial' if self.partial else ''})")

    @staticmethod
    def from_json(obj: Any) -> "Member":
        """``[key, axis]`` or ``{key, axis, offset, outer, inner, partial, select}``
        (``block`` is read as the old name of ``partial``; ``select`` is a list of
        ``[axis, index]`` pairs, absent for a member of the whole tensor)."""
        if isinstance(obj, list | tuple) and len(obj) == 2:
            key, axis = obj
            extra: dict[str, Any] = {}
        elif isinstance(obj, dict) and "key" in obj and "axis" in obj:
            key, axis, extra = obj["key"], obj["axis"], obj
        else:
            raise SpecError(f"spec member {obj!r} is not [key, axis] or {{key, axis, ...}}")
        numbers = {"axis": axis, **{n: extra.get(n, d) for n, d in
                                    (("offset", 0), ("outer", 1), ("inner", 1))}}
        for name, value in numbers.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SpecError(f"spec member {obj!r}: {name} must be a non-negative integer")
        if numbers["outer"] < 1 or numbers["inner"] < 1:
            raise SpecError(f"spec member {obj!r}: outer and inner must be >= 1")
        partial = extra.get("partial", extra.get("block", False))
        if not isinstance(key, str) or not isinstance(partial, bool):
            raise SpecError(f"spec member {obj!r}: key must be a string and partial a boolean")
        select = extra.get("select", [])
        if not isinstance(select, list | tuple) or not all(
                isinstance(pair, list | tuple) and len(pair) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair)
                for pair in select):
            raise SpecError(f"spec member {obj!r}: select must be a list of [axis, index] pairs "
                            "of non-negative integers")
        pairs = tuple(sorted((int(a), int(i)) for a, i in select))
        if len({a for a, _ in pairs}) != len(pairs) or numbers["axis"] in {a for a, _ in pairs}:
            raise SpecError(f"spec member {obj!r}: select names an axis twice or the member's "
                            "own axis")
        return Member(key, numbers["axis"], numbers["offset"], numbers["outer"],
                      numbers["inner"], partial, pairs)


@dataclass
class Group:
    """Axes that must be permuted together, all of ``size`` units."""

    name: str
    size: int
    members: list[Member] = field(default_factory=list)


@dataclass(frozen=True)
class Carried:
    """Groups moved along with a carrier group's slices: ``slots[e]`` is the group restricted
    to index ``e`` of the carrier's axis (expert ``e``'s units, when the experts permute)."""

    carrier: str
    slots: tuple[str, ...]


def _pattern(member: Member) -> Member:
    """``member`` with its selected indices blanked: slots of one carrier compare equal."""
    return Member(member.key, member.axis, member.offset, member.outer, member.inner,
                  member.partial, tuple((a, 0) for a, _ in member.select))


@dataclass
class PermutationSpec:
    """The permutation symmetries of a model, keyed by state_dict names.

    ``fixed`` records axes deliberately left unpermuted (``"key:axis" -> reason``), for display.
    """

    groups: dict[str, Group] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)

    # ----------------------------------------------------------------- building
    def add_group(self, name: str, size: int, members: list[Member] | None = None) -> Group:
        if name in self.groups:
            raise SpecError(f"spec group {name!r} defined twice")
        group = Group(name, int(size), list(members or []))
        self.groups[name] = group
        return group

    def members_by_key(self) -> dict[str, list[tuple[str, Member]]]:
        """``key -> [(group name, member), ...]`` for every permuted tensor."""
        out: dict[str, list[tuple[str, Member]]] = {}
        for name, group in self.groups.items():
            for m in group.members:
                out.setdefault(m.key, []).append((name, m))
        return out

    def restricted(self, keys: set[str]) -> "PermutationSpec":
        """The same groups with only the members whose key is in ``keys``."""
        return PermutationSpec({n: Group(n, g.size, [m for m in g.members if m.key in keys])
                                for n, g in self.groups.items()}, dict(self.fixed))

    def canonical(self) -> set[frozenset[Member]]:
        """Groups as sets of members, ignoring names: for comparing specs."""
        return {frozenset(g.members) for g in self.groups.values()}

    # ------------------------------------------------------------- validation
    def validate(self, state_dict: StateDict) -> None:
        """Raise SpecError naming the first member that does not fit ``state_dict``."""
        for name, group in self.groups.items():
            if group.size < 1:
                raise SpecError(f"spec group {name!r} has size {group.size}; sizes must be >= 1")
            for m in group.members:
                if m.key not in state_dict:
                    raise SpecError(f"spec group {name!r} names key {m.key!r}, which the state "
                                    "dict does not have; build the spec for this model")
                value = state_dict[m.key]
                if isinstance(value, torch.Tensor) and not value.is_floating_point():
                    raise SpecError(f"spec group {name!r} names {m.key!r}, a {value.dtype} "
                                    "tensor (indices or counts); only floating tensors permute")
                shape = tuple(value.shape)
                if not 0 <= m.axis < len(shape):
                    raise SpecError(f"spec group {name!r}: {m.key!r} has {len(shape)} axes, "
                                    f"no axis {m.axis}")
                self._validate_select(name, m, shape)
                length = shape[m.axis]
                if m.is_plain and length != group.size:
                    raise SpecError(f"spec group {name!r} has size {group.size} but {m.key!r} axis "
                                    f"{m.axis} has length {length} (shape {list(shape)})")
                if not m.covers_part and m.span(group.size) != length:
                    raise SpecError(f"spec group {name!r}: {m.outer}x{group.size}x{m.inner} "
                                    f"units do not cover {m.key!r} axis {m.axis} of length "
                                    f"{length}; mark the member as partial if that is meant")
                if m.offset < 0 or m.offset + m.span(group.size) > length:
                    raise SpecError(f"spec group {name!r}: block of {m.key!r} axis {m.axis} "
                                    f"(offset {m.offset}, {m.outer}x{group.size}x{m.inner}) "
                                    f"exceeds length {length}")
        self._validate_whole_axes()
        self.carried()  # selected and permuted axes fit together

    def _validate_whole_axes(self) -> None:
        """A member covering a whole axis leaves no room on that axis (of that slice) for
        another group: two permutations of one axis compose, and undo, in one order only."""
        places: dict[tuple[str, int, tuple], set[str]] = {}
        for name, group in self.groups.items():
            for m in group.members:
                places.setdefault((m.key, m.axis, m.select), set()).add(name)
        for name, group in self.groups.items():
            for m in group.members:
                if not m.whole_axis:
                    continue
                others = places[(m.key, m.axis, m.select)] - {name}
                if others:
                    raise SpecError(f"spec groups {name!r} and {sorted(others)[0]!r} both "
                                    f"permute {m.key!r} axis {m.axis}, which {name!r} covers "
                                    "whole; an axis belongs to one group (or to structured "
                                    "blocks)")

    @staticmethod
    def _validate_select(name: str, m: Member, shape: tuple[int, ...]) -> None:
        """A restricted member selects in range, on other axes than its own."""
        for axis, index in m.select:
            if axis == m.axis or not 0 <= axis < len(shape):
                raise SpecError(f"spec group {name!r}: {m.key!r} select axis {axis} must be "
                                f"another of its {len(shape)} axes than axis {m.axis}")
            if not 0 <= index < shape[axis]:
                raise SpecError(f"spec group {name!r}: {m.key!r} select index {index} is out "
                                f"of range for axis {axis} of length {shape[axis]}")

    def carried(self) -> dict[str, Carried]:
        """``carrier name -> Carried`` for every group that permutes an axis other groups'
        members select on; SpecError if such an axis does not fit the carrier pattern (a
        single plain carrier on it, one slot group per index, slots alike but for the index,
        every slot member selecting once on an axis of the same carrier)."""
        permuted: dict[tuple[str, int], list[tuple[str, Member]]] = {}
        for name, group in self.groups.items():
            for m in group.members:
                permuted.setdefault((m.key, m.axis), []).append((name, m))
        slots: dict[str, dict[int, str]] = {}
        for name, group in self.groups.items():
            seats = set()
            for m in group.members:
                for axis, index in m.select:
                    movers = permuted.get((m.key, axis), [])
                    if not movers:
                        continue
                    if len(movers) > 1 or not movers[0][1].is_plain or len(m.select) > 1:
                        raise SpecError(
                            f"spec group {name!r}: {m.key!r} axis {axis} is both selected on "
                            "and permuted, but not as one carrier group moving whole slices "
                            "(one plain member per tensor, each slot member selecting once)")
                    seats.add((movers[0][0], index))
            if not seats:
                continue
            carriers = {c for c, _ in seats}
            if len(seats) > 1 or any(not m.select or (m.key, m.select[0][0]) not in permuted
                                     for m in group.members):
                raise SpecError(f"spec group {name!r} is carried by {sorted(carriers)} only in "
                                "part: every member of a slot group must select the same index "
                                "of an axis its carrier permutes")
            (carrier, index), = seats
            if index in slots.setdefault(carrier, {}):
                raise SpecError(f"spec groups {slots[carrier][index]!r} and {name!r} both sit "
                                f"at index {index} of carrier {carrier!r}; one slot per index")
            slots[carrier][index] = name
        out = {}
        for carrier, seated in slots.items():
            size = self.groups[carrier].size
            if len(seated) != size or min(seated) != 0 or max(seated) != size - 1:
                raise SpecError(f"carrier group {carrier!r} moves {size} slices but slot groups "
                                f"sit at indices {sorted(seated)}; give every index a group")
            order = tuple(seated[e] for e in range(size))
            first = self.groups[order[0]]
            shape = (first.size, sorted(map(_pattern, first.members), key=repr))
            for name in order[1:]:
                group = self.groups[name]
                if (group.size, sorted(map(_pattern, group.members), key=repr)) != shape:
                    raise SpecError(f"slot groups {order[0]!r} and {name!r} of carrier "
                                    f"{carrier!r} differ in more than the index they select")
            out[carrier] = Carried(carrier, order)
        return out

    def validate_permutation(self, perm: Mapping[str, torch.Tensor]) -> None:
        """Raise SpecError unless ``perm`` holds one valid permutation per group: integer
        indices, each of ``0..size-1`` exactly once (no duplicates, no short lists)."""
        if not isinstance(perm, Mapping):
            raise SpecError("a permutation must map group names to index tensors")
        for name, group in self.groups.items():
            if name not in perm:
                raise SpecError(f"permutation has no entry for spec group {name!r}")
            p = perm[name]
            if not isinstance(p, torch.Tensor):
                p = torch.as_tensor(p)
            if p.dtype in (torch.bool,) or p.is_floating_point() or p.is_complex():
                raise SpecError(f"permutation for group {name!r} must hold integers, "
                                f"not {p.dtype}")
            if p.shape != (group.size,) or not torch.equal(
                    torch.sort(p.detach().cpu().long()).values, torch.arange(group.size)):
                raise SpecError(f"permutation for group {name!r} is not a permutation of "
                                f"0..{group.size - 1} (each index exactly once)")
        extra = sorted(set(perm) - set(self.groups))
        if extra:
            raise SpecError(f"permutation names groups the spec lacks: {', '.join(extra[:5])}")

    # ------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        return {
            "groups": {n: {"size": g.size, "members": [m.to_json() for m in g.members]}
                       for n, g in self.groups.items()},
            "fixed": dict(self.fixed),
        }

    @staticmethod
    def from_json(obj: Any) -> "PermutationSpec":
        if not isinstance(obj, dict) or not isinstance(obj.get("groups"), dict):
            raise SpecError("spec JSON must be an object with a 'groups' object")
        fixed = obj.get("fixed", {})
        if not isinstance(fixed, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in fixed.items()):
            raise SpecError("spec JSON 'fixed' must map 'key:axis' strings to reasons")
        spec = PermutationSpec(fixed=dict(fixed))
        for name, g in obj["groups"].items():
            if not isinstance(g, dict) or "size" not in g or "members" not in g:
                raise SpecError(f"spec group {name!r} needs 'size' and 'members'")
            size, members = g["size"], g["members"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise SpecError(f"spec group {name!r}: size must be a positive integer")
            if not isinstance(members, list):
                raise SpecError(f"spec group {name!r}: members must be a list")
            spec.add_group(name, size, [Member.from_json(m) for m in members])
        return spec

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_json(), indent=1), force=True)

    @staticmethod
    def load(path: str | Path) -> "PermutationSpec":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SpecError(f"spec {path} is not a UTF-8 text file (expected spec JSON)"
                            ) from None
        except OSError as exc:
            raise SpecError(f"cannot read spec {path}: {exc.strerror or exc}") from None
        try:
            return PermutationSpec.from_json(json.loads(text))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SpecError(f"spec {path} is not valid JSON ({exc})") from None

    def describe(self) -> str:
        """Readable listing of groups (name, size, members) and fixed axes."""
        lines = [f"{len(self.groups)} permutation groups"]
        carried = self.carried()
        for name, g in self.groups.items():
            moves = (f"  (moves whole slices, carrying {len(carried[name].slots)} slot groups "
                     f"{carried[name].slots[0]} ...)" if name in carried else "")
            lines.append(f"  {name}  size={g.size}{moves}")
            lines += [f"      {m.describe()}" for m in g.members]
        if self.fixed:
            lines.append(f"{len(self.fixed)} fixed axes")
            for place, why in self.fixed.items():
                lines.append(f"  {place}: {why}")
        return "\n".join(lines)
