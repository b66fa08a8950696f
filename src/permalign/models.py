"""Resolve a ``--model`` string into a model, its spec and the inputs it is called with.

Kinds of model string:

- a zoo model, ``mlp:depth=3,width=512`` (hand-written spec);
- a user's factory, ``package.module:function`` (spec inferred);
- ``hf:FOLDER``, a Hugging Face folder (config.json + weights; spec inferred, see
  :mod:`permalign.hf`);
- ``timm:NAME`` / ``torchvision:NAME``, an architecture from those packages, randomly
  initialised (spec inferred; the packages must import).
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import zoo
from .errors import PermalignError, first_line
from .permutation import OutputNameError, check_spec
from .spec import PermutationSpec

LIBRARY_KINDS = ("hf", "timm", "torchvision")


@dataclass
class Example:
    """What a model is called with to trace and check it: ``model(*args, **kwargs)``."""

    args: tuple
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResolvedModel:
    """A model string resolved: the model, its spec (if asked for), its example inputs, and
    for ``hf:`` the folder it came from."""

    model: nn.Module
    spec: PermutationSpec | None
    example: Example
    kind: str  # zoo | factory | hf | timm | torchvision
    folder: Path | None = None


def model_kind(model_string: str) -> str:
    """``zoo``, ``factory``, ``hf``, ``timm`` or ``torchvision``."""
    head = model_string.partition(":")[0].lower()
    if ":" in model_string and head in LIBRARY_KINDS:
        return head
    if is_factory(model_string):
        return "factory"
    return "zoo"


_FACTORY = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


def is_factory(model_string: str) -> bool:
    """``package.module:function`` whose module is not a zoo family or a library prefix
    (``mlp:depth=3`` and ``transformer:depth=2`` are zoo strings: options, not a function)."""
    head = model_string.partition(":")[0].lower()
    return (bool(_FACTORY.fullmatch(model_string.strip())) and head not in zoo.FAMILIES
            and head not in LIBRARY_KINDS)


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
def _import_library(package: str, model_string: str):
    """Import timm or torchvision, or say in one line why ``model_string`` cannot be built."""
    try:
        return importlib.import_module(package)
    except Exception as exc:  # a torchvision built for another torch raises RuntimeError
        first = first_line(exc, 200)
        raise PermalignError(f"--model {model_string} needs the {package} package, which "
                             f"cannot be imported here ({type(exc).__name__}: {first}); "
                             f"install a {package} built for torch {torch.__version__}"
                             ) from None


def build_library_model(model_string: str, input_shape: tuple[int, ...],
                        num_classes: int) -> nn.Module:
    """``timm:NAME`` or ``torchvision:NAME``, randomly initialised for ``num_classes`` classes
    (timm models also take the input's channel count)."""
    kind, _, name = model_string.partition(":")
    kind = kind.lower()
    if not name:
        raise PermalignError(f"--model {model_string}: name a model, e.g. {kind}:resnet18")
    if kind == "timm":
        timm = _import_library("timm", model_string)
        if not timm.is_model(name):
            raise PermalignError(f"timm has no model {name!r} (see timm.list_models())")
        channels = input_shape[0] if input_shape else 3
        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=channels)
    torchvision = _import_library("torchvision", model_string)
    if name not in torchvision.models.list_models():
        raise PermalignError(f"torchvision has no model {name!r} (see "
                             "torchvision.models.list_models())")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def build_model(model_string: str, input_shape: tuple[int, ...], num_classes: int, *,
                seed: int = 0) -> nn.Module:
    """The model alone, its initial weights depending only on ``seed`` (an ``hf:`` model gets
    its folder's weights)."""
    torch.manual_seed(seed)
    kind = model_kind(model_string)
    if kind == "hf":
        from . import hf
        return hf.build_model(hf.folder_of(model_string), seed=seed)
    if kind in ("timm", "torchvision"):
        return build_library_model(model_string, input_shape, num_classes)
    if kind == "factory":
        return load_factory(model_string)
    return zoo.build(model_string, input_shape=input_shape, num_classes=num_classes)[0]


def example_input(input_shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A random batch of two inputs, for tracing and checking specs."""
    return torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(seed))


def example_for(model: nn.Module, kind: str, input_shape: tuple[int, ...], seed: int = 0
                ) -> Example:
    """The inputs a model of this kind is traced with: derived from the config for ``hf``,
    else a random batch of ``input_shape``."""
    if kind == "hf":
        from . import hf
        return Example(*hf.example_inputs(model, seed=seed))
    return Example((example_input(input_shape, seed),))


def load_spec_for(path: str | Path, model: nn.Module, example: torch.Tensor | Example, *,
                  check: bool = True, outputs: list[str | int] | None = None
                  ) -> PermutationSpec:
    """A spec from JSON, validated against the model's state dict and, with ``check``, against
    its outputs (a random permutation must leave them unchanged; only those ``outputs``
    names, when given)."""
    if not isinstance(example, Example):
        example = Example((example,))
    spec = PermutationSpec.load(path)
    spec.validate(model.state_dict())
    if check:
        try:
            check_spec(model, spec, example.args, example_kwargs=example.kwargs, atol=1e-4,
                       rtol=1e-3, outputs=outputs)
        except OutputNameError:
            raise  # a typo in --outputs, not a wrong spec
        except PermalignError as exc:
            raise type(exc)(f"--spec {path}: {exc} (pass --no-spec-check to use it anyway)"
                            ) from None
    return spec


@torch.no_grad()
def check_forward(model: nn.Module, model_string: str, example: Example,
                  min_outputs: int = 0) -> None:
    """Run a user's model once on its example; one line if it fails or gives fewer than
    ``min_outputs`` outputs per example."""
    was_training = model.training
    try:
        out = model.eval()(*example.args, **example.kwargs)
    except Exception as exc:  # the user's code may raise anything
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        shape = ",".join(map(str, example.args[0].shape[1:])) if example.args else "?"
        raise PermalignError(f"--model {model_string} fails on an input of shape {shape} "
                             f"({type(exc).__name__}: {first}); give the shape it expects "
                             "with --input-shape") from None
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] < min_outputs:
        raise PermalignError(f"--model {model_string} gives {out.shape[1]} outputs per "
                             f"example, fewer than the {min_outputs} classes (see --num-classes)")


def resolve(model_string: str, input_shape: tuple[int, ...], num_classes: int, *,
            seed: int = 0, infer: bool = False, spec_path: str | Path | None = None,
            check: bool = True, need_spec: bool = True, min_outputs: int = 0,
            outputs: list[str | int] | None = None) -> ResolvedModel:
    """The model (initialised from ``seed``), its example inputs and, with ``need_spec``, its
    spec. A factory model must run on its example and give at least ``min_outputs`` outputs
    per example (one line otherwise).

    The spec is, in order of preference: the JSON file ``spec_path`` (checked against the
    model's outputs unless ``check`` is False), the zoo's hand-written spec unless ``infer``,
    or one inferred from the example inputs (always for the other kinds). ``outputs`` names
    the model outputs that must stay unchanged (default all: see ``infer_spec``).
    """
    kind = model_kind(model_string)
    torch.manual_seed(seed)
    spec: PermutationSpec | None = None
    folder = None
    if kind == "zoo":
        model, spec = zoo.build(model_string, input_shape=input_shape, num_classes=num_classes)
    else:
        model = build_model(model_string, input_shape, num_classes, seed=seed)
    if kind == "hf":
        from . import hf
        folder = hf.folder_of(model_string)
    example = example_for(model, kind, input_shape, seed)
    if kind == "factory":  # a zoo model fits its shape by construction
        check_forward(model, model_string, example, min_outputs)
    if outputs is not None and kind == "zoo" and not infer and spec_path is None \
            and need_spec:
        raise PermalignError("--outputs chooses what an inferred or checked spec must "
                             "preserve, and a zoo model's spec is written by hand; add --infer "
                             "(or give --spec)")
    if not need_spec:
        spec = None
    elif spec_path is not None:
        spec = load_spec_for(spec_path, model, example, check=check, outputs=outputs)
    elif spec is None or infer:
        from .infer import infer_spec
        spec = infer_spec(model, example.args, example_kwargs=example.kwargs, outputs=outputs)
    return ResolvedModel(model, spec, example, kind, folder)


def resolve_model(model_string: str, input_shape: tuple[int, ...], num_classes: int, *,
                  seed: int = 0, infer: bool = False, spec_path: str | Path | None = None,
                  check: bool = True) -> tuple[nn.Module, PermutationSpec]:
    """``(model, spec)`` of :func:`resolve`."""
    resolved = resolve(model_string, input_shape, num_classes, seed=seed, infer=infer,
                       spec_path=spec_path, check=check)
    assert resolved.spec is not None
    return resolved.model, resolved.spec
