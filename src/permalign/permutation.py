"""The permutation algebra of a spec: where a member's units sit on an axis, and permutations.

A *permutation* maps each group name to a LongTensor of the group's size. Applying it to a state
dict makes new unit ``i`` of a group out of old unit ``perm[i]`` on every member.

A member's units sit on its axis as an ``[outer, size, inner]`` block starting at ``offset``
(see :class:`~permalign.spec.Member`). Everything that needs that layout — gather indices for
applying a permutation, one row per unit for weight matching, one column per unit for activation
statistics — goes through :func:`unit_block` / :func:`unit_view` here, nowhere else.

A restricted member (``select``, one expert's units) acts only on its slice of the tensor:
:func:`selected` cuts that slice out, and the layout then applies to the slice.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .errors import SpecError
from .spec import Member, Permutation, PermutationSpec, StateDict


# ------------------------------------------------------------------ member layout
def selected(tensor: torch.Tensor, member: Member) -> tuple[torch.Tensor, Member]:
    """The slice of ``tensor`` a restricted member acts on (a view, selected axes dropped) and
    the member re-expressed on that slice; ``(tensor, member)`` for an unrestricted one."""
    if not member.select:
        return tensor, member
    for axis, index in reversed(member.select):  # highest axis first: lower ones keep place
        tensor = tensor.select(axis, index)
    return tensor, on_slice(member, member.select)


def on_slice(member: Member, select: tuple[tuple[int, int], ...]) -> Member:
    """``member`` re-expressed on the slice that ``select`` cuts out of its tensor (those axes
    dropped, so the axes after them move down), unrestricted."""
    return dataclasses.replace(member, axis=member.axis - sum(1 for a, _ in select
                                                              if a < member.axis), select=())


def unit_block(tensor: torch.Tensor, member: Member, size: int, axis: int) -> torch.Tensor:
    """``tensor`` with ``axis`` moved first and cut to the member's units: (outer, size, inner, *rest)."""
    t = tensor.movedim(axis, 0)  # (L, *rest)
    block = t[member.offset:member.offset + member.span(size)]
    return block.reshape(member.outer, size, member.inner, *t.shape[1:])


def unit_view(tensor: torch.Tensor, member: Member, size: int, axis: int | None = None
              ) -> torch.Tensor:
    """``tensor`` as ``(size, rest)``: one row per unit of the member's group.

    ``axis`` defaults to the member's own axis; activation statistics pass the feature axis of
    an activation instead (every other position then counts as a sample). A restricted member
    (``select``) has rows only in its own tensor's slice, not in activations.
    """
    if member.select:
        if axis is not None:
            raise SpecError(f"{member.describe()} is restricted to one slice of its tensor; "
                            "its units cannot be read off an activation")
        tensor, member = selected(tensor, member)
    axis = member.axis if axis is None else axis
    if member.is_plain:
        return tensor.movedim(axis, 0).reshape(size, -1)
    return unit_block(tensor, member, size, axis).movedim(1, 0).reshape(size, -1)


def member_index(member: Member, length: int, perm: torch.Tensor) -> torch.Tensor:
    """Full-length gather index for one axis of length ``length``: ``new[i] = old[index[i]]``.

    For a restricted member this is the index within its slice (see :func:`permute_tensor`).
    """
    if member.is_plain:
        return perm
    size = perm.numel()
    index = torch.arange(length, device=perm.device)
    positions = unit_block(index, member, size, 0)  # (outer, size, inner)
    index[member.offset:member.offset + member.span(size)] = positions[:, perm, :].reshape(-1)
    return index


# ------------------------------------------------------------------ permutations
def identity_permutation(spec: PermutationSpec) -> Permutation:
    """Every group in its original order."""
    return {n: torch.arange(g.size) for n, g in spec.groups.items()}


def random_permutation(spec: PermutationSpec, generator: torch.Generator | None = None
                       ) -> Permutation:
    """A uniformly random permutation for every group."""
    return {n: torch.randperm(g.size, generator=generator) for n, g in spec.groups.items()}


def moving_permutation(spec: PermutationSpec, generator: torch.Generator | None = None
                       ) -> Permutation:
    """A random permutation in which every group of two or more units moves (redrawn while it
    is the identity), so that a check with it cannot pass by leaving a group in place."""
    out = {}
    for name, group in spec.groups.items():
        perm = torch.randperm(group.size, generator=generator)
        while group.size > 1 and torch.equal(perm, torch.arange(group.size)):
            perm = torch.randperm(group.size, generator=generator)
        out[name] = perm
    return out


def invert(perm: Mapping[str, torch.Tensor], spec: PermutationSpec | None = None
           ) -> Permutation:
    """The inverse permutation: ``apply(invert(p, spec), apply(p, sd)) == sd``.

    Without carriers (:meth:`PermutationSpec.carried`) every group inverts on its own and
    ``spec`` may be omitted. A carried slot's permutation acts on the slice that lands in it,
    so the inverse's slot ``j`` undoes the slot that slice ``j`` was moved to: it needs
    ``spec``.
    """
    out = {n: torch.argsort(torch.as_tensor(p)) for n, p in perm.items()}
    for carrier, carried in (spec.carried() if spec is not None else {}).items():
        back = out[carrier]  # slice j went to slot back[j]
        for j, name in enumerate(carried.slots):
            out[name] = torch.argsort(torch.as_tensor(perm[carried.slots[int(back[j])]]))
    return out


def perm_to_json(perm: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """``{group: [index, ...]}``, the JSON form of a permutation."""
    return {n: [int(i) for i in torch.as_tensor(p).tolist()] for n, p in perm.items()}


def perm_from_json(obj: Any, spec: PermutationSpec | None = None) -> Permutation:
    """Read a permutation from its JSON form, or from a record holding it under ``"perm"``
    (as written by ``permalign align --perm-out``). Validated against ``spec`` when given."""
    if isinstance(obj, dict) and isinstance(obj.get("perm"), dict):
        obj = obj["perm"]
    if not isinstance(obj, dict):
        raise SpecError("permutation JSON must be an object of group name -> index list")
    perm = {}
    for name, values in obj.items():
        if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise SpecError(f"permutation for group {name!r} must be a list of integers")
        perm[str(name)] = torch.tensor(values, dtype=torch.long)
    if spec is not None:
        spec.validate_permutation(perm)
    return perm


def _tensor_indices(tensor: torch.Tensor, entries: Iterable[tuple[str, Member]],
                    perm: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``axis -> gather index`` combining every unrestricted entry acting on that axis."""
    out: dict[int, torch.Tensor] = {}
    for name, m in entries:
        if m.select:
            continue
        idx = member_index(m, tensor.shape[m.axis],
                           torch.as_tensor(perm[name]).to(tensor.device))
        prev = out.get(m.axis)
        out[m.axis] = idx if prev is None else prev[idx]
    return out


def axis_indices(spec: PermutationSpec, perm: Mapping[str, torch.Tensor],
                 state_dict: StateDict) -> dict[str, dict[int, torch.Tensor]]:
    """``key -> axis -> gather index`` combining every group acting on that axis (restricted
    members, which act on one slice only, are not included: see :func:`permute_tensor`)."""
    return {key: _tensor_indices(state_dict[key], entries, perm)
            for key, entries in spec.members_by_key().items()}


def permute_tensor(tensor: torch.Tensor, entries: Iterable[tuple[str, Member]],
                   perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``tensor`` with the permutations of ``entries`` (``(group, member)`` pairs acting on
    it) applied; ``tensor`` itself is not modified. Whole-axis members gather along their
    axes first; then a restricted member gathers within its slice, the slice now at its index
    (a carried slot acts on whichever slice its carrier moved there)."""
    entries = list(entries)
    for axis, idx in _tensor_indices(tensor, entries, perm).items():
        tensor = torch.index_select(tensor, axis, idx)
    restricted = [(name, m) for name, m in entries if m.select]
    if restricted:
        tensor = tensor.clone()
        for name, m in restricted:
            part, inside = selected(tensor, m)  # a view into ``tensor``
            p = torch.as_tensor(perm[name]).to(tensor.device)
            part.copy_(torch.index_select(part, inside.axis,
                                          member_index(inside, part.shape[inside.axis], p)))
    return tensor


def apply_permutation(spec: PermutationSpec, perm: Mapping[str, torch.Tensor],
                      state_dict: StateDict) -> dict[str, torch.Tensor]:
    """A new state dict with every group's permutation applied (inputs are not modified).

    ``perm`` is validated (one permutation of the right size per group). The state dict's
    ``_metadata`` (module versions that ``load_state_dict`` reads) is carried over.
    """
    spec.validate_permutation(perm)
    by_key = spec.members_by_key()
    out = {key: permute_tensor(value, by_key[key], perm) if key in by_key else value
           for key, value in state_dict.items()}
    return keep_metadata(out, state_dict)


class _StateDict(dict):
    """A plain dict that can carry ``_metadata`` like ``nn.Module.state_dict()``'s result."""

    _metadata: Any


def keep_metadata(state: dict[str, torch.Tensor], source: Mapping[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """``state`` carrying ``source``'s ``_metadata`` (module versions that ``load_state_dict``
    reads, e.g. MNASNet's), when ``source`` has one."""
    metadata = getattr(source, "_metadata", None)
    if metadata is None:
        return state
    out = _StateDict(state)
    out._metadata = copy.deepcopy(metadata)
    return out


# ------------------------------------------------------------------ checking
class OutputNameError(SpecError):
    """``outputs`` names something the model's output does not have (a typo, not a wrong
    spec)."""


def output_keys(available: Sequence[Any], outputs: Any) -> list[Any]:
    """The entries of ``available`` (a model output's keys, or positions ``0..n-1``) that
    ``outputs`` names: a name or a list of names, each a key, or a position given as an int
    or a string of ASCII digits. OutputNameError (one line) for anything else, for an empty
    list, or for a name the output lacks."""
    names = [outputs] if isinstance(outputs, str | int) else outputs
    if not isinstance(names, list | tuple) or not names:
        raise OutputNameError("outputs must name at least one output (e.g. ['logits'])")
    chosen = []
    for name in names:
        if isinstance(name, bool) or not isinstance(name, str | int):
            raise OutputNameError(f"output name {name!r} is neither a key nor a position")
        digits = isinstance(name, str) and name.isascii() and name.isdecimal()
        for key in (name, int(name) if digits else None, str(name) if isinstance(name, int)
                    else None):
            if key is not None and key in available:
                chosen.append(key)
                break
        else:
            raise OutputNameError(f"the model's output has no {name!r}; it has "
                                  f"{', '.join(repr(k) for k in available)}")
    return chosen


def select_outputs(out: Any, outputs: Any) -> Any:
    """The entries ``outputs`` names of a model's output (keys of a Hugging Face ModelOutput
    or a dict, positions of a tuple or list, :func:`output_keys`); all of it when None.
    OutputNameError for a name the output lacks or an entry that holds no tensor."""
    if outputs is None:
        return out
    if isinstance(out, Mapping):  # ModelOutput is an OrderedDict
        keys, entries = list(out.keys()), out
    elif isinstance(out, tuple | list):
        keys, entries = list(range(len(out))), out
    else:
        raise OutputNameError("the model returns one tensor, so there are no outputs to "
                              "choose; leave out --outputs (outputs=None)")
    from torch.utils._pytree import tree_leaves
    chosen = output_keys(keys, outputs)
    for key in chosen:
        if not any(isinstance(t, torch.Tensor) for t in tree_leaves(entries[key])):
            raise OutputNameError(f"output {key!r} holds no tensor, so it cannot be preserved;"
                                  " name an output that does")
    return tuple(entries[key] for key in chosen)


def _flat_outputs(out: Any, outputs: Sequence[str | int] | None = None) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten
    out = select_outputs(out, outputs)
    if hasattr(out, "to_tuple"):  # Hugging Face ModelOutput
        out = out.to_tuple()
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` (tensors, or tuples/lists/dicts of them) with floating tensors in ``dtype``."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple | list):
        return type(value)(cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    return value


def _eval_copy(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """A fresh eval-mode copy of ``model``, in ``dtype`` if given."""
    copy_ = copy.deepcopy(model).eval()
    return copy_.to(dtype) if dtype is not None else copy_


def _reference_outputs(model: torch.nn.Module, dtype: torch.dtype | None, inputs: tuple,
                       kwargs: dict[str, Any], outputs: Sequence[str | int] | None = None
                       ) -> list[torch.Tensor] | None:
    """The outputs of a fresh copy of ``model`` in ``dtype``; None if it does not run in
    ``dtype`` or casts back down inside (then compare at the model's own precision)."""
    reference = _eval_copy(model, dtype)
    try:
        result = reference(*inputs, **kwargs)
    except Exception:  # noqa: BLE001 - ops without float64 kernels raise anything
        if dtype is None:
            raise
        return None
    flat = _flat_outputs(result, outputs)
    if dtype is not None and any(o.dtype != dtype for o in flat):
        return None
    return flat


def permute_in_place(model: torch.nn.Module, spec: PermutationSpec,
                     perm: Mapping[str, torch.Tensor]) -> None:
    """Apply ``perm`` to ``model``'s parameters and buffers in place, one tensor at a time (no
    second state dict). Tensors tied under several keys are permuted once."""
    state = model.state_dict(keep_vars=True)
    done: set[int] = set()
    with torch.no_grad():
        for key, entries in spec.members_by_key().items():
            tensor = state[key]
            if tensor.data_ptr() in done:
                continue
            done.add(tensor.data_ptr())
            tensor.copy_(permute_tensor(tensor.detach(), entries, perm))


@torch.no_grad()
def check_spec(model: torch.nn.Module, spec: PermutationSpec, example_inputs: Any, *,
               example_kwargs: dict[str, Any] | None = None, atol: float = 1e-5,
               rtol: float = 1e-4, generator: torch.Generator | None = None,
               trials: int = 1, float64: bool = True, relative: float = 1e-6,
               permutations: Iterable[Mapping[str, torch.Tensor]] | None = None,
               outputs: Sequence[str | int] | None = None) -> float:
    """Permute every group at random (each group of two or more units moved) and raise
    SpecError if the model's outputs change.

    With ``float64`` (default) the check runs on a float64 copy of the model and inputs where
    the model allows it, and every output must agree to ``relative`` times its largest
    magnitude: float32 round-off (~1e-6 relative) would hide small real changes (a permuted
    position-index buffer). Where the model does not run in float64 the comparison is in its
    own dtype with ``atol``/``rtol``; ``atol=math.inf`` only measures (never raises).
    ``permutations``, when given, are checked instead of ``trials`` random ones.
    ``outputs`` names the output entries that must be preserved (:func:`select_outputs`;
    default all). Returns
    the largest absolute output difference seen; ``model`` itself is not modified.

    Every forward runs on a fresh copy (some models cache tensors derived from their weights
    in eval mode), made only after the previous copy is released and permuted in place, so
    memory holds one copy at a time: in float64 about twice the model besides ``model``.
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    kwargs = example_kwargs or {}
    spec.validate(model.state_dict())
    dtype = None
    reference = None
    if float64:
        inputs64, kwargs64 = (cast_floats(example_inputs, torch.float64),
                              cast_floats(kwargs, torch.float64))
        reference = _reference_outputs(model, torch.float64, inputs64, kwargs64, outputs)
        if reference is not None:
            dtype, example_inputs, kwargs = torch.float64, inputs64, kwargs64
    exact = reference is not None
    if not exact:
        reference = _reference_outputs(model, None, example_inputs, kwargs, outputs)
    worst = 0.0
    if permutations is None:  # every group moves: none can pass by staying in place
        permutations = (moving_permutation(spec, generator) for _ in range(trials))
    for perm in permutations:
        work = _eval_copy(model, dtype)
        permute_in_place(work, spec, perm)
        permuted = _flat_outputs(work(*example_inputs, **kwargs), outputs)
        del work
        for ref, got in zip(reference, permuted, strict=True):
            diff = (ref - got).abs().max().item() if ref.numel() else 0.0
            worst = max(worst, diff)
            if exact:
                bound = relative * max(ref.abs().max().item() if ref.numel() else 0.0, 1e-6)
                ok = diff <= bound or math.isinf(atol)
                limit = f"{relative:g} of the output's scale (float64)"
            else:
                ok = torch.allclose(ref, got, atol=atol, rtol=rtol)
                limit = f"atol {atol}"
            if not ok:
                raise SpecError(f"outputs changed under the spec's permutation (max abs diff "
                                f"{diff:.3g} > {limit}); the spec is wrong for this model")
    return worst
