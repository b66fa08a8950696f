"""Resolve a command's inputs — device, data, model, spec, checkpoints — once, into one object,
and write its model outputs in the form the model came in (a state-dict file, or a Hugging Face
folder for ``hf:`` models)."""
from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed, hf, output
from ..data import (DATASET_SHAPES, DEFAULT_BLOCK, Dataset, canonical_name, is_text,
                    load_dataset, load_text)
from ..errors import PermalignError, SpecError
from ..io import check_input_file, check_state_dict, load_checkpoint_for, save_state_dict
from ..lazy import LazyStateDict, stubs
from ..models import Example, ResolvedModel, model_kind, resolve
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
    states: list[Mapping[str, torch.Tensor]] = field(default_factory=list)
    example: Example | None = None
    folder: Path | None = None  # the Hugging Face folder of an hf: model

    def save(self, state: Mapping[str, torch.Tensor], out: str | Path, *, force: bool,
             title: str, summary: str, details: Mapping[str, Any],
             provenance: Mapping[str, Any] | None = None) -> Path:
        """Write a model's state as the model came: a Hugging Face folder (with a model card
        made of ``title``, ``summary``, ``details`` and ``provenance``) for an hf: model, else
        a state-dict file (``.safetensors`` or ``.pt`` by suffix)."""
        if self.folder is not None:
            card = hf.model_card(title=title, summary=summary, details=details,
                                 provenance=provenance)
            if hf.converts(self.model):  # experts stored one tensor each, say
                return hf.save_folder(out, hf.stored_state(self.model, state), self.folder,
                                      card=card, force=force)
            return hf.save_folder(out, state, self.folder, card=card, force=force,
                                  names=hf.stored_names(self.model))
        return save_state_dict(state, out, force=force)


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


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint argument as a path: ``hf:FOLDER`` names the folder."""
    text = str(path)
    return Path(text[len(hf.PREFIX):] if text.startswith(hf.PREFIX) else text)


def model_string(args: argparse.Namespace, checkpoints: Sequence[str | Path] = ()) -> str:
    """``--model``, or ``hf:A`` when it is left out and the first checkpoint A is a Hugging
    Face folder."""
    given = getattr(args, "model", None)
    if given:
        return given
    if checkpoints and hf.is_folder(checkpoint_path(checkpoints[0])):
        return f"{hf.PREFIX}{checkpoint_path(checkpoints[0])}"
    raise PermalignError("--model is required (a zoo string, package.module:function, "
                         "hf:FOLDER, timm:NAME or torchvision:NAME)")


def check_output(args: argparse.Namespace, out: str | Path,
                 checkpoints: Sequence[str | Path] = ()) -> None:
    """Refuse an existing output unless ``--force``: a folder for hf: models, else a file.
    Under a process group rank 0 checks and every rank gets its verdict."""
    if model_kind(model_string(args, checkpoints)) == "hf":
        distributed.on_main(hf.check_folder_writable, out, force=args.force)
    else:
        output.declare(out, "--out")


def model_io(args: argparse.Namespace, data: Dataset | None) -> tuple[tuple[int, ...], int]:
    """Input shape and class count: ``--input-shape``/``--num-classes``, else the data's
    (digits' when there is no named data set)."""
    if data is not None:
        shape, classes = data.input_shape, data.num_classes
    else:
        name = args.dataset if args.dataset and not is_text(args.dataset) else "digits"
        shape, classes = DATASET_SHAPES[canonical_name(name)]
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


def text_data(args: argparse.Namespace, resolved: ResolvedModel) -> Dataset:
    """``--dataset text:FILE`` for a language model: tokenised with the model folder's
    tokenizer when it has one (else byte-level), in windows of at most 128 tokens."""
    if resolved.folder is None:
        raise PermalignError(f"--dataset {args.dataset} needs a language model given as "
                             "--model hf:FOLDER")
    config = resolved.model.config
    positions = hf.max_positions(config)
    block = min(DEFAULT_BLOCK, positions) if positions else DEFAULT_BLOCK
    return load_text(args.dataset, tokenize=hf.tokenizer(resolved.folder),
                     vocab_size=hf.vocab_size(config), block_size=block)


# --low-memory is on by itself when the two checkpoints hold more safetensors weights than this
LOW_MEMORY_BYTES = 4 * 1024 ** 3


def load_checkpoint(path: str | Path, model: nn.Module, *, lazy: bool = False
                    ) -> Mapping[str, torch.Tensor]:
    """A checkpoint file, or a Hugging Face folder's weights, checked against ``model``;
    with ``lazy`` a :class:`~permalign.lazy.LazyStateDict` (safetensors only) whose keys,
    shapes and dtypes are checked from the file headers, each tensor read when asked for."""
    path = checkpoint_path(path)
    if path.is_dir():
        if not hf.is_folder(path):
            raise PermalignError(f"checkpoint {path} is a folder without {hf.CONFIG}; give a "
                                 "state-dict file or a Hugging Face model folder")
        return hf.lazy_state(path, model) if lazy else hf.load_state(path, model)
    if not lazy:
        return load_checkpoint_for(path, model.state_dict())
    if path.suffix != ".safetensors":
        raise PermalignError(f"--low-memory reads safetensors checkpoints only; {path} is not "
                             "one (convert it, or leave out --low-memory)")
    reference = model.state_dict()
    state = LazyStateDict([check_input_file(path)],
                          cast={k: v.dtype for k, v in reference.items()})
    check_state_dict(stubs(state), reference, name=str(path))
    return state


def safetensors_bytes(paths: Sequence[str | Path]) -> int | None:
    """Bytes of safetensors weights in ``paths`` (files or Hugging Face folders), or None if
    one of them holds another format."""
    total = 0
    for path in map(checkpoint_path, paths):
        try:
            files = hf.weight_files(path) if path.is_dir() else [path]
        except PermalignError:
            return None
        if any(f.suffix != ".safetensors" or not f.is_file() for f in files):
            return None
        total += sum(f.stat().st_size for f in files)
    return total


def wants_low_memory(given: bool | None, checkpoints: Sequence[str | Path]) -> bool | str:
    """``--low-memory`` as given, or (left out) ``"auto"`` if the checkpoints are safetensors
    holding more than :data:`LOW_MEMORY_BYTES` together (lazy where the model allows it:
    :func:`resolve_inputs`), else False."""
    if given is not None:
        return given
    size = safetensors_bytes(checkpoints)
    return "auto" if size is not None and size > LOW_MEMORY_BYTES else False


def resolve_inputs(args: argparse.Namespace, *, checkpoints: Sequence[str | Path] = (),
                   need_data: bool | Callable[[nn.Module], bool] = False,
                   need_spec: bool = True, model_seed: int = 0, lazy: bool | str = False
                   ) -> Inputs:
    """Device, data (if needed), model and spec (if needed), and the checkpoints, checked
    against the model.

    ``need_data`` may be a predicate on the built model (e.g. "has BatchNorm layers").
    The model's initial weights come from ``model_seed`` (an hf: model has its folder's).
    Checkpoints are state-dict files or Hugging Face folders; without ``--model``, the first
    checkpoint's folder is the model. ``lazy``: read them lazily (:func:`load_checkpoint`);
    ``"auto"`` (chosen by size, not asked for) only where the model's folder layout allows.
    """
    device = parse_device(args.device)
    name = model_string(args, checkpoints)
    text = is_text(getattr(args, "dataset", None))
    data = load_data(args) if need_data is True and not text else None
    shape, classes = model_io(args, data)
    spec_path = getattr(args, "spec", None)
    if spec_path is not None:
        check_input_file(spec_path, "--spec", SpecError)
    with library_output(getattr(args, "verbose", False)), memory_errors(name):
        resolved = resolve(name, shape, classes, seed=model_seed,
                           infer=getattr(args, "infer", False), spec_path=spec_path,
                           check=not getattr(args, "no_spec_check", False),
                           need_spec=need_spec, min_outputs=classes if need_data is True else 0,
                           outputs=getattr(args, "outputs", None))
    model = resolved.model
    wanted = need_data is True or (callable(need_data) and need_data(model))
    if wanted and text:
        data = text_data(args, resolved)
    elif wanted and data is None:
        data = load_data(args)
        model_io(args, data)  # the data must fit the model built from --dataset's shape
    if lazy == "auto":  # chosen by size: not where transformers converts the layout
        lazy = not (resolved.folder is not None and hf.converts(model))
    states = [load_checkpoint(path, model, lazy=bool(lazy)) for path in checkpoints]
    return Inputs(device, shape, classes, model, resolved.spec, data, states,
                  resolved.example, resolved.folder)
