"""Resolve a ``--model`` string: a zoo model (hand-written spec) or a user's factory (inferred)."""
from __future__ import annotations

import importlib
import os
import sys

import torch
from torch import nn

from . import zoo
from .errors import PermalignError
from .spec import PermutationSpec


def is_factory(model_string: str) -> bool:
    """``package.module:function`` (anything whose part before ':' is not a zoo family)."""
    head = model_string.partition(":")[0].lower()
    return ":" in model_string and head not in zoo.FAMILIES and "=" not in head


def load_factory(model_string: str) -> nn.Module:
    """Import ``module:function`` (the current directory is searched too) and call it."""
    module_name, _, function_name = model_string.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PermalignError(f"cannot import {module_name!r} for --model {model_string!r} "
                             f"({exc})") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise PermalignError(f"{module_name} has no function {function_name!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise PermalignError(f"{model_string} returned {type(model).__name__}, not a "
                             "torch.nn.Module")
    return model


def build_model(model_string: str, input_shape: tuple[int, ...], num_classes: int, *,
                seed: int = 0) -> nn.Module:
    """The model alone, its initial weights depending only on ``seed``."""
    torch.manual_seed(seed)
    if is_factory(model_string):
        return load_factory(model_string)
    return zoo.build(model_string, input_shape=input_shape, num_classes=num_classes)[0]


def resolve_model(model_string: str, input_shape: tuple[int, ...], num_classes: int, *,
                  seed: int = 0, infer: bool = False) -> tuple[nn.Module, PermutationSpec]:
    """The model (initialised from ``seed``) and its spec.

    Zoo models use their hand-written spec unless ``infer``; factories always infer it from a
    random example input of ``input_shape`` (batch of 2).
    """
    torch.manual_seed(seed)
    if is_factory(model_string):
        model = load_factory(model_string)
        infer = True
    else:
        model, spec = zoo.build(model_string, input_shape=input_shape, num_classes=num_classes)
    if infer:
        from .infer import infer_spec
        example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(seed))
        spec = infer_spec(model, example)
    return model, spec
