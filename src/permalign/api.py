"""One call for people with models in hand: align or merge ``nn.Module`` objects directly.

::

    aligned_b, result = permalign.align(model_a, model_b, example_inputs)
    merged = permalign.merge([m1, m2, m3], example_inputs)

The permutation spec is inferred from the model's ``torch.export`` graph and checked (a random
permutation must leave the outputs unchanged) unless one is given. Nothing passed in is
modified: the results are new modules.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .data import Dataset
from .errors import PermalignError
from .infer import infer_spec
from .match import MatchResult
from .merge import merge_many
from .permutation import check_spec
from .spec import PermutationSpec
from .statedict import has_batchnorm
from .workflow import align as align_states

DataLike = Dataset | tuple[torch.Tensor, ...] | torch.Tensor | None


def as_dataset(data: DataLike) -> Dataset | None:
    """A :class:`Dataset` from a Dataset, ``(x, y)`` tensors (class labels), or inputs ``x``
    alone (enough for activation statistics and BatchNorm; labels are then zero). Both splits
    are the given tensors."""
    if data is None or isinstance(data, Dataset):
        return data
    if isinstance(data, torch.Tensor):
        data = (data,)
    if not isinstance(data, tuple) or not data or len(data) > 2:
        raise PermalignError("data must be a permalign Dataset, (inputs, labels) or inputs")
    x = data[0]
    y = data[1] if len(data) == 2 else torch.zeros(len(x), dtype=torch.long, device=x.device)
    classes = int(y.max()) + 1 if y.numel() else 1
    return Dataset("data", x, y, x, y, classes)


def _states(models: Sequence[nn.Module]) -> list[dict[str, torch.Tensor]]:
    """Detached copies of the models' state dicts, checked to share one architecture."""
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise PermalignError(f"model {i} does not have model 0's architecture (state dict "
                                 "names or shapes differ)")
    return states


def _spec(model: nn.Module, example_inputs: Any, example_kwargs: dict[str, Any] | None,
          spec: PermutationSpec | None, check: bool,
          outputs: Sequence[str | int] | None = None) -> PermutationSpec:
    """``spec`` checked against ``model`` (a copy), or one inferred from it; ``outputs``: the
    output entries that must stay unchanged (default all)."""
    if spec is None:
        return infer_spec(model, example_inputs, example_kwargs=example_kwargs, check=check,
                          outputs=outputs)
    spec.validate(model.state_dict())
    if check:
        check_spec(model, spec, example_inputs, example_kwargs=example_kwargs, atol=1e-4,
                   rtol=1e-3, outputs=outputs)
    return spec


def align(model_a: nn.Module, model_b: nn.Module, example_inputs: Any, method: str = "weight",
          data: DataLike = None, *, spec: PermutationSpec | None = None,
          example_kwargs: dict[str, Any] | None = None, seed: int = 0,
          device: torch.device | str = "cpu", check: bool = True,
          outputs: Sequence[str | int] | None = None, **options: Any
          ) -> tuple[nn.Module, MatchResult]:
    """Permute ``model_b``'s hidden units to line up with ``model_a``'s.

    Returns ``(aligned_b, result)``: a new module computing the same function as ``model_b``
    whose weights now sit in ``model_a``'s basin, and the :class:`MatchResult` (``.perm``
    per group, the objective ``.history``). ``method`` is any registered matching method
    (``weight``, ``activation``, ``ste``; the last two need ``data``); ``options`` are its
    options (e.g. ``restarts=3``). ``example_inputs`` (a tensor or tuple, with
    ``example_kwargs``) is what the model is called with, for inferring and checking the spec;
    ``outputs`` names the output entries that must stay unchanged (e.g. ``["logits"]``; default
    all).
    """
    states = _states([model_a, model_b])
    work = copy.deepcopy(model_a)
    spec = _spec(work, example_inputs, example_kwargs, spec, check, outputs)
    state, result = align_states(method, spec, work, states[0], states[1],
                                 data=as_dataset(data), seed=seed, device=device, **options)
    aligned = copy.deepcopy(model_b)
    aligned.load_state_dict(state)
    return aligned, result


def merge(models: Sequence[nn.Module], example_inputs: Any, data: DataLike = None, *,
          spec: PermutationSpec | None = None, example_kwargs: dict[str, Any] | None = None,
          seed: int = 0, device: torch.device | str = "cpu", bn_reset: bool = True,
          check: bool = True, max_rounds: int = 100,
          outputs: Sequence[str | int] | None = None) -> nn.Module:
    """Merge two or more models of one architecture by MergeMany (paper Algorithm 3): align
    each to the mean of the others until nothing changes, then average.

    Returns a new module. A model with BatchNorm needs ``data`` (its inputs) to re-estimate
    the merged statistics, unless ``bn_reset`` is False. ``outputs``: as for :func:`align`.
    """
    if len(models) < 2:
        raise PermalignError("merging needs at least two models")
    states = _states(models)
    work = copy.deepcopy(models[0])
    spec = _spec(work, example_inputs, example_kwargs, spec, check, outputs)
    dataset = as_dataset(data)
    if dataset is None and bn_reset and has_batchnorm(work):
        raise PermalignError("the models have BatchNorm layers: pass data (their inputs) to "
                             "re-estimate the merged statistics, or bn_reset=False")
    result = merge_many(spec, states, seed=seed, max_rounds=max_rounds, device=device,
                        model=work, bn_reset=bn_reset,
                        bn_data=dataset.train_x if dataset is not None else None)
    merged = copy.deepcopy(models[0])
    merged.load_state_dict(result.merged)
    return merged
