"""Resolve a ``--model`` string: a zoo model (hand-written spec) or a user's factory (inferred)."""
from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

from . import zoo
from .errors import PermalignError
from .permutation import check_spec
from .spec import PermutationSpec


_FACTORY = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


def is_factory(model_string: str) -> bool:
    """``package.module:function`` whose module is not a zoo family (``mlp:depth=3`` and
    ``transformer:depth=2`` are zoo strings: options, not a function name)."""
    head = model_string.partition(":")[0].lower()
    return bool(_FACTORY.fullmatch(model_string.strip())) and head not in zoo.FAMILIES


def load_factory(model_string: str) -> nn.Module:
    """Import ``module:function`` (the current directory is searched too) and call it."""
    module_name, _, function_name = model_string.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PermalignError(f"cannot import {module_name!r} for --model {model_string!r} "
                             f"({_one_line(exc)})") from None
    except Exception as exc:  # the user's module may raise anything while it loads
        raise PermalignError(f"importing {module_name!r} for --model {model_string!r} failed: "
                             f"{type(exc).__name__}: {_one_line(exc)}") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise PermalignError(f"{module_name} has no function {function_name!r}")
    try:
        model = factory()
    except PermalignError:
        raise
    except Exception as exc:
        raise PermalignError(f"--model {model_string}: {function_name}() raised "
                             f"{type(exc).__name__}: {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise PermalignError(f"{model_string} returned {type(model).__name__}, not a "
                             "torch.nn.Module")
    return model


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def build_model(model_string: str, input_shape: tuple[int, ...], num_classes: int, *,
                seed: int = 0) -> nn.Module:
    """The model alone, its initial weights depending only on ``seed``."""
    torch.manual_seed(seed)
    if is_factory(model_string):
        return load_factory(model_string)
    return zoo.build(model_string, input_shape=input_shape, num_classes=num_classes)[0]


def example_input(input_shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A random batch of two inputs, for tracing and checking specs."""
    return torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(seed))


def load_spec_for(path: str | Path, model: nn.Module, example: torch.Tensor, *,
                  check: bool = True) -> PermutationSpec:
    """A spec from JSON, validated against the model's state dict and, with ``check``, against
    its outputs (a random permutation must leave them unchanged)."""
    spec = PermutationSpec.load(path)
    spec.validate(model.state_dict())
    if check:
        try:
            check_spec(model, spec, example, atol=1e-4, rtol=1e-3)
        except PermalignError as exc:
            raise type(exc)(f"--spec {path}: {exc} (pass --no-spec-check to use it anyway)"
                            ) from None
    return spec


def resolve_model(model_string: str, input_shape: tuple[int, ...], num_classes: int, *,
                  seed: int = 0, infer: bool = False, spec_path: str | Path | None = None,
                  check: bool = True) -> tuple[nn.Module, PermutationSpec]:
    """The model (initialised from ``seed``) and its spec.

    The spec is, in order of preference: the JSON file ``spec_path`` (checked against the
    model's outputs unless ``check`` is False), the zoo's hand-written spec unless ``infer``,
    or one inferred from a random example input of ``input_shape`` (always for factories).
    """
    torch.manual_seed(seed)
    spec: PermutationSpec | None = None
    if is_factory(model_string):
        model = load_factory(model_string)
    else:
        model, spec = zoo.build(model_string, input_shape=input_shape, num_classes=num_classes)
    example = example_input(input_shape, seed)
    if spec_path is not None:
        return model, load_spec_for(spec_path, model, example, check=check)
    if spec is None or infer:
        from .infer import infer_spec
        spec = infer_spec(model, example)
    return model, spec
