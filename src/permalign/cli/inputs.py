"""Resolve a command's inputs — device, data, model, spec, checkpoints — once, into one object."""
from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data import DATASET_SHAPES, Dataset, canonical_name, load_dataset
from ..errors import PermalignError, SpecError
from ..io import check_input_file, load_checkpoint_for
from ..models import build_model, example_input, is_factory, resolve_model
from ..spec import PermutationSpec


@dataclass
class Inputs:
    """Everything a command works on, resolved from its arguments in one place."""

    device: torch.device
    input_shape: tuple[int, ...]
    num_classes: int
    model: nn.Module
    spec: PermutationSpec | None = None
    data: Dataset | None = None
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)


def parse_device(name: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PermalignError(f"unknown device {name!r}; use cpu, cuda or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise PermalignError(f"device {name!r} is not supported; use cpu, cuda or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PermalignError("--device cuda given but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise PermalignError(f"--device {name}: there are only {torch.cuda.device_count()} "
                             "CUDA devices (cuda:0 ...)")
    return device


def load_data(args: argparse.Namespace) -> Dataset:
    """The data set named by ``--dataset`` (from ``--data-dir`` or the default places)."""
    return load_dataset(args.dataset, getattr(args, "data_dir", None))


def model_io(args: argparse.Namespace, data: Dataset | None) -> tuple[tuple[int, ...], int]:
    """Input shape and class count: ``--input-shape``/``--num-classes``, else the data's."""
    if data is not None:
        shape, classes = data.input_shape, data.num_classes
    else:
        shape, classes = DATASET_SHAPES[canonical_name(args.dataset)]
    if getattr(args, "num_classes", None) is not None:
        if args.num_classes < 1:
            raise PermalignError("--num-classes must be >= 1")
        if data is not None and args.num_classes < data.num_classes:
            raise PermalignError(f"--num-classes {args.num_classes} is fewer than the "
                                 f"{data.num_classes} classes of {data.name}")
        classes = args.num_classes
    given = getattr(args, "input_shape", None)
    if given is not None:
        if data is not None and tuple(given) != shape and not (
                len(given) == 1 and given[0] == data.train_x[0].numel()):
            raise PermalignError(f"--input-shape {','.join(map(str, given))} does not match "
                                 f"{data.name}'s {','.join(map(str, shape))}")
        shape = tuple(given)
    return shape, classes


@contextlib.contextmanager
def library_output(verbose: bool) -> Iterator[None]:
    """Without ``verbose``, what libraries print to stderr while a model is built and traced
    (torch.export prints partial graphs on failure) is dropped: our error says what failed."""
    if verbose:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def memory_errors(model_string: str) -> Iterator[None]:
    """Out of memory while building a model: one line instead of a traceback."""
    try:
        yield
    except MemoryError:
        raise PermalignError(f"not enough memory to build --model {model_string}") from None
    except RuntimeError as exc:
        if "alloc" not in str(exc).lower():
            raise
        raise PermalignError(f"not enough memory to build --model {model_string} "
                             f"({str(exc).splitlines()[0][:200]})") from None


@torch.no_grad()
def check_forward(model: nn.Module, model_string: str, shape: tuple[int, ...],
                  classes: int) -> None:
    """Run a user's model once on a batch of two inputs of ``shape``; one line if it fails or
    gives fewer than ``classes`` outputs per example."""
    example = example_input(shape)
    was_training = model.training
    try:
        out = model.eval()(example)
    except Exception as exc:  # the user's code may raise anything
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise PermalignError(f"--model {model_string} fails on an input of shape "
                             f"{','.join(map(str, shape))} ({type(exc).__name__}: {first}); "
                             "give the shape it expects with --input-shape") from None
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] < classes:
        raise PermalignError(f"--model {model_string} gives {out.shape[1]} outputs per "
                             f"example, fewer than the {classes} classes (see --num-classes)")


def resolve_inputs(args: argparse.Namespace, *, checkpoints: Sequence[str | Path] = (),
                   need_data: bool | Callable[[nn.Module], bool] = False,
                   need_spec: bool = True, model_seed: int = 0) -> Inputs:
    """Device, data (if needed), model and spec (if needed), and the checkpoints, checked
    against the model.

    ``need_data`` may be a predicate on the built model (e.g. "has BatchNorm layers").
    The model's initial weights come from ``model_seed``.
    """
    device = parse_device(args.device)
    data = load_data(args) if need_data is True else None
    shape, classes = model_io(args, data)
    spec_path = getattr(args, "spec", None)
    if spec_path is not None:
        check_input_file(spec_path, "--spec", SpecError)
    spec = None
    with library_output(getattr(args, "verbose", False)), memory_errors(args.model):
        model = None
        if is_factory(args.model) or not need_spec:
            model = build_model(args.model, shape, classes, seed=model_seed)
        if is_factory(args.model):  # a zoo model fits its shape by construction
            check_forward(model, args.model, shape, classes if need_data is True else 0)
        if need_spec:
            model, spec = resolve_model(args.model, shape, classes, seed=model_seed,
                                        infer=getattr(args, "infer", False),
                                        spec_path=spec_path,
                                        check=not getattr(args, "no_spec_check", False))
    if callable(need_data) and need_data(model):
        data = load_data(args)
        model_io(args, data)  # the data must fit the model built from --dataset's shape
    reference = model.state_dict()
    states = [load_checkpoint_for(path, reference) for path in checkpoints]
    return Inputs(device, shape, classes, model, spec, data, states)
