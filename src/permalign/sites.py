"""Where a permutation group's units show up as activations inside a model.

A group's units are *consumed* by every Linear or Conv layer whose weight's in-axis (axis 1)
is a member of the group: that layer's input carries the group's axis. For an MLP hidden layer
this is the post-ReLU activation, for a residual stream the stream itself. REPAIR's *sites* are
the modules producing a group's channels just before the nonlinearity: the norm layers if the
model has them, else the Linear/Conv layers.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import SpecError
from .spec import Member, PermutationSpec

LINEAR_LIKE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def feature_dim(module: nn.Module) -> int:
    """The axis of a module's input/output that holds features (channels)."""
    return -1 if isinstance(module, nn.Linear | nn.LayerNorm) else 1



def _module_of(key: str, model: nn.Module) -> tuple[str, nn.Module] | None:
    prefix, _, leaf = key.rpartition(".")
    if leaf != "weight":
        return None
    try:
        return prefix, model.get_submodule(prefix)
    except AttributeError:
        return None


def consumer_sites(model: nn.Module, spec: PermutationSpec, *, strict: bool = True
                   ) -> dict[str, list[tuple[str, Member]]]:
    """For each group, the (module name, member) pairs whose input carries the group's axis;
    a group that no Linear/Conv consumes raises SpecError, or with ``strict=False`` is left
    out (its units may still be observed elsewhere: :mod:`permalign.match.observe`)."""
    sites: dict[str, list[tuple[str, Member]]] = {}
    for name, group in spec.groups.items():
        found = []
        for m in group.members:
            owner = _module_of(m.key, model)
            if owner and m.axis == 1 and not m.select and isinstance(
                    owner[1], LINEAR_LIKE) and getattr(owner[1], "groups", 1) == 1:
                found.append((owner[0], m))
        if not found and not strict:
            continue
        if not found:
            raise SpecError(f"group {name!r} has no Linear/Conv layer consuming it, so its "
                            "activations cannot be observed; use weight matching for it")
        sites[name] = found
    return sites


def first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A Linear/Conv call's input, passed by position or by keyword (``input=``)."""
    if args:
        return args[0]
    return kwargs.get("input", next((v for v in kwargs.values()
                                     if isinstance(v, torch.Tensor)), None))


@contextmanager
def record_inputs(model: nn.Module, names: set[str]
                  ) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While active, ``store[name]`` lists the inputs of each named module in call order
    (a module called more than once per forward, as with layers shared across depth, gets one
    entry per call; consumers pop them from the front)."""
    store: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name in names:
        def hook(_module, args, kwargs, _name=name):
            store.setdefault(_name, []).append(first_input(args, kwargs))
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook,
                                                                          with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def repair_sites(model: nn.Module, spec: PermutationSpec) -> list[tuple[str, nn.Module]]:
    """Modules whose per-channel outputs REPAIR rescales, in the model's module order."""
    spec_keys = {m.key for g in spec.groups.values() for m in g.members if m.axis == 0}
    norms = [(n, mod) for n, mod in model.named_modules()
             if isinstance(mod, NORMS + (_channel_norm_type(),)) and f"{n}.weight" in spec_keys]
    if norms:
        return norms
    return [(n, mod) for n, mod in model.named_modules()
            if isinstance(mod, LINEAR_LIKE) and f"{n}.weight" in spec_keys
            and mod.bias is not None]


def _channel_norm_type() -> type:
    from .zoo.norms import ChannelLayerNorm
    return ChannelLayerNorm
