"""PermutationSpec: which (state_dict key, axis) pairs share one permutation.

A *permutation* is a mapping ``group name -> LongTensor`` of that group's size. Applying it
to a state dict makes new unit ``i`` of a group out of old unit ``perm[i]`` on every member.

A member usually covers a whole axis. Structured axes are described by three integers:
the permuted block starts at ``offset`` on the axis, repeats ``outer`` times, and each unit
spans ``inner`` consecutive indices. So the axis index of unit ``p`` is
``offset + o * size * inner + p * inner + j`` for ``o < outer`` and ``j < inner``. This covers
conv -> flatten -> linear (``inner = H * W``), concatenation (``offset``), attention heads
(``inner = head_dim``) and the within-head axis (``outer = num_heads``).
"""
from __future__ import annotations

import copy
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
    block: bool = False  # True: covers part of the axis (e.g. one input of a concatenation)

    @property
    def is_plain(self) -> bool:
        """Covers the whole axis, one index per unit."""
        return self.offset == 0 and self.outer == 1 and self.inner == 1 and not self.block

    def span(self, size: int) -> int:
        """Number of axis indices this member touches for a group of ``size`` units."""
        return self.outer * size * self.inner

    def to_json(self) -> Any:
        if self.is_plain:
            return [self.key, self.axis]
        return {"key": self.key, "axis": self.axis, "offset": self.offset,
                "outer": self.outer, "inner": self.inner, "block": self.block}

    @staticmethod
    def from_json(obj: Any) -> "Member":
        if isinstance(obj, list | tuple) and len(obj) == 2:
            return Member(str(obj[0]), int(obj[1]))
        if isinstance(obj, dict) and "key" in obj and "axis" in obj:
            return Member(str(obj["key"]), int(obj["axis"]), int(obj.get("offset", 0)),
                          int(obj.get("outer", 1)), int(obj.get("inner", 1)),
                          bool(obj.get("block", False)))
        raise SpecError(f"spec member {obj!r} is not [key, axis] or {{key, axis, ...}}")


@dataclass
class Group:
    """Axes that must be permuted together, all of ``size`` units."""

    name: str
    size: int
    members: list[Member] = field(default_factory=list)


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
                shape = tuple(state_dict[m.key].shape)
                if not 0 <= m.axis < len(shape):
                    raise SpecError(f"spec group {name!r}: {m.key!r} has {len(shape)} axes, "
                                    f"no axis {m.axis}")
                length = shape[m.axis]
                if m.is_plain and length != group.size:
                    raise SpecError(f"spec group {name!r} has size {group.size} but {m.key!r} axis "
                                    f"{m.axis} has length {length} (shape {list(shape)})")
                if not m.block and m.offset == 0 and m.span(group.size) != length:
                    raise SpecError(f"spec group {name!r}: {m.outer}x{group.size}x{m.inner} "
                                    f"units do not cover {m.key!r} axis {m.axis} of length "
                                    f"{length}; mark the member as a block if that is meant")
                if m.offset < 0 or m.offset + m.span(group.size) > length:
                    raise SpecError(f"spec group {name!r}: block of {m.key!r} axis {m.axis} "
                                    f"(offset {m.offset}, {m.outer}x{group.size}x{m.inner}) "
                                    f"exceeds length {length}")

    def validate_permutation(self, perm: Mapping[str, torch.Tensor]) -> None:
        """Raise SpecError unless ``perm`` holds one valid permutation per group."""
        for name, group in self.groups.items():
            if name not in perm:
                raise SpecError(f"permutation has no entry for spec group {name!r}")
            p = torch.as_tensor(perm[name])
            if p.shape != (group.size,) or not torch.equal(
                    torch.sort(p.cpu()).values, torch.arange(group.size)):
                raise SpecError(f"permutation for group {name!r} is not a permutation of "
                                f"0..{group.size - 1}")
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
        spec = PermutationSpec(fixed=dict(obj.get("fixed", {})))
        for name, g in obj["groups"].items():
            if not isinstance(g, dict) or "size" not in g or "members" not in g:
                raise SpecError(f"spec group {name!r} needs 'size' and 'members'")
            spec.add_group(name, int(g["size"]), [Member.from_json(m) for m in g["members"]])
        return spec

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_json(), indent=1), force=True)

    @staticmethod
    def load(path: str | Path) -> "PermutationSpec":
        try:
            return PermutationSpec.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"cannot read spec {path}: {exc}") from None

    def describe(self) -> str:
        """Readable listing of groups (name, size, members) and fixed axes."""
        lines = [f"{len(self.groups)} permutation groups"]
        for name, g in self.groups.items():
            lines.append(f"  {name}  size={g.size}")
            for m in g.members:
                extra = "" if m.is_plain else (f" (offset={m.offset}, outer={m.outer}, "
                                               f"inner={m.inner})")
                lines.append(f"      {m.key}  axis {m.axis}{extra}")
        if self.fixed:
            lines.append(f"{len(self.fixed)} fixed axes")
            for place, why in self.fixed.items():
                lines.append(f"  {place}: {why}")
        return "\n".join(lines)


# ------------------------------------------------------------------ permutations
def identity_permutation(spec: PermutationSpec) -> Permutation:
    return {n: torch.arange(g.size) for n, g in spec.groups.items()}


def random_permutation(spec: PermutationSpec, generator: torch.Generator | None = None
                       ) -> Permutation:
    """A uniformly random permutation for every group."""
    return {n: torch.randperm(g.size, generator=generator) for n, g in spec.groups.items()}


def invert(perm: Mapping[str, torch.Tensor]) -> Permutation:
    """The inverse permutation: ``apply(invert(p), apply(p, sd)) == sd``."""
    return {n: torch.argsort(torch.as_tensor(p)) for n, p in perm.items()}


def perm_to_json(perm: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    return {n: [int(i) for i in torch.as_tensor(p).tolist()] for n, p in perm.items()}


def perm_from_json(obj: Any) -> Permutation:
    if not isinstance(obj, dict):
        raise SpecError("permutation JSON must be an object of group name -> index list")
    return {n: torch.as_tensor(v, dtype=torch.long) for n, v in obj.items()}


def member_index(member: Member, length: int, perm: torch.Tensor) -> torch.Tensor:
    """Full-length gather index for one axis: ``new[i] = old[index[i]]``."""
    size = perm.numel()
    index = torch.arange(length, device=perm.device)
    if member.is_plain:
        return perm
    # [outer, size, inner] block of the axis, permuted along the middle dimension
    base = torch.arange(member.span(size), device=perm.device).view(member.outer, size,
                                                                  member.inner)
    index[member.offset:member.offset + member.span(size)] = (
        base[:, perm, :].reshape(-1) + member.offset)
    return index


def axis_indices(spec: PermutationSpec, perm: Mapping[str, torch.Tensor],
                 state_dict: StateDict) -> dict[str, dict[int, torch.Tensor]]:
    """``key -> axis -> gather index`` combining every group acting on that axis."""
    out: dict[str, dict[int, torch.Tensor]] = {}
    for key, entries in spec.members_by_key().items():
        shape = state_dict[key].shape
        for name, m in entries:
            p = torch.as_tensor(perm[name]).to(state_dict[key].device)
            idx = member_index(m, shape[m.axis], p)
            prev = out.setdefault(key, {}).get(m.axis)
            out[key][m.axis] = idx if prev is None else prev[idx]
    return out


def apply_permutation(spec: PermutationSpec, perm: Mapping[str, torch.Tensor],
                      state_dict: StateDict) -> dict[str, torch.Tensor]:
    """A new state dict with every group's permutation applied (inputs are not modified)."""
    indices = axis_indices(spec, perm, state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for axis, idx in indices.get(key, {}).items():
            value = torch.index_select(value, axis, idx)
        out[key] = value
    return out


# ------------------------------------------------------------------ checking
def _flat_outputs(out: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten
    if hasattr(out, "to_tuple"):  # Hugging Face ModelOutput
        out = out.to_tuple()
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


@torch.no_grad()
def check_spec(model: torch.nn.Module, spec: PermutationSpec, example_inputs: Any, *,
               example_kwargs: dict[str, Any] | None = None, atol: float = 1e-5,
               rtol: float = 1e-4, generator: torch.Generator | None = None,
               trials: int = 1) -> float:
    """Permute every group at random and raise SpecError if the model's outputs change.

    Returns the largest absolute output difference seen. The model is run in eval mode on a copy;
    ``model`` itself is not modified.
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    kwargs = example_kwargs or {}
    state = model.state_dict()
    spec.validate(state)
    work = copy.deepcopy(model).eval()
    reference = _flat_outputs(work(*example_inputs, **kwargs))
    worst = 0.0
    for _ in range(trials):
        perm = random_permutation(spec, generator)
        work.load_state_dict(apply_permutation(spec, perm, state))
        permuted = _flat_outputs(work(*example_inputs, **kwargs))
        for ref, got in zip(reference, permuted, strict=True):
            diff = (ref - got).abs().max().item() if ref.numel() else 0.0
            worst = max(worst, diff)
            if not torch.allclose(ref, got, atol=atol, rtol=rtol):
                raise SpecError(f"outputs changed under the spec's permutation (max abs diff "
                                f"{diff:.3g} > atol {atol}); the spec is wrong for this model")
    return worst
