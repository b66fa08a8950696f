"""Safe checkpoint loading; checkpoint and text output through :mod:`permalign.output`."""
from __future__ import annotations

import os
import pickle
import re
import stat
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from . import output
from .errors import CheckpointError, PermalignError, first_line

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


# ------------------------------------------------------------------ output (see output.py)
def check_writable(path: str | Path, *, force: bool) -> Path:
    """Raise PermalignError unless ``path`` can be written as a regular file (an existing one
    only with ``force``); the directory must exist."""
    output.check_target(path, force=force)
    return Path(path)


def atomic_write(path: str | Path, write: Callable[[Path], None], *, force: bool,
                 now: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path`` and move it into place.

    Inside an output transaction (every CLI command runs in one) the file joins the command's
    other outputs and appears with them; ``now`` writes it at once (caches read back later).
    Nothing is left at ``path`` or beside it if ``write`` fails or is interrupted.
    """
    return output.write_file(path, write, force=force, now=now)


def atomic_write_text(path: str | Path, text: str, *, force: bool, now: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), force=force,
                        now=now)


def check_input_file(path: str | Path, what: str = "checkpoint",
                     error: type[PermalignError] = CheckpointError) -> Path:
    """Raise ``error`` unless ``path`` is a regular file we may read (never opens it, so a
    FIFO or device cannot block or flood us)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(output.os_error_message(path, exc, f"read {what}")) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is {output.file_kind(st.st_mode)}, not a regular file")
    if not os.access(path, os.R_OK):
        raise error(f"cannot read {what} {path}: permission denied")
    return path


# ------------------------------------------------------------------ checkpoints
def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | Path, *,
                    force: bool = False, now: bool = False) -> Path:
    """Save a plain state dict as ``.safetensors`` (by suffix) or a weights-only ``.pt``.

    ``now``: write at once even inside an output transaction (see :func:`atomic_write`).
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp)), force=force,
                            now=now)
    return atomic_write(path, lambda tmp: _torch_save(tensors, tmp), force=force, now=now)


def _torch_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """torch.save through a Python file, so a full disk is an OSError with its errno."""
    with open(path, "wb") as fh:
        torch.save(tensors, fh)


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap ``{'state_dict': ...}``-style nesting and DataParallel ``module.`` prefixes."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor)
                                                     for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            nested = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
            if nested is not None:
                obj = nested
                continue
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)")
    else:
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint without running code from it (weights-only pickle or safetensors)."""
    path = check_input_file(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            obj: object = load_file(str(path))
        except Exception as exc:  # safetensors raises several unrelated types
            raise CheckpointError(f"{path} is not a readable safetensors file "
                                  f"({first_line(exc, None)})") from None
    else:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols; we decide
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL (\S+)", str(exc))
            if found:
                raise CheckpointError(
                    f"{path} was refused: it holds Python objects that need code to load "
                    f"({found.group(1)}); save a plain state dict "
                    "(torch.save(model.state_dict(), path)) or a .safetensors file") from None
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (unreadable pickle "
                                  "data); expected a .pt state dict or a .safetensors file"
                                  ) from None
        except Exception as exc:  # noqa: BLE001 - torch.load on arbitrary bytes raises many types
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load could not "
                                  f"read it: {type(exc).__name__}); expected a .pt state dict "
                                  "or a .safetensors file") from None
    return _find_state_dict(obj, path)


def check_state_dict(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                     *, name: str) -> None:
    """Raise CheckpointError unless ``state`` has the reference's keys and shapes and is finite."""
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    wrong = [f"{k} {list(state[k].shape)} vs {list(reference[k].shape)}" for k in reference
             if k in state and state[k].shape != reference[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_first(wrong)}")
    if problems:
        raise CheckpointError(f"{name} does not fit the model: {'; '.join(problems)} "
                              "(check --model and the checkpoint)")
    for k in reference:
        _check_kind(state[k], reference[k], name=name, key=k)
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{name} has NaN or Inf values in {k!r}; it cannot be aligned")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_kind(value: torch.Tensor, reference: torch.Tensor, *, name: str, key: str) -> None:
    """Refuse tensors that would be converted silently and wrongly: sparse or quantized
    layouts, tensors without data, and dtypes other than the float types (for float
    parameters) or integers (for integer buffers)."""
    if value.layout != torch.strided:
        raise CheckpointError(f"{name}: {key!r} is a sparse tensor ({str(value.layout)[6:]}); "
                              "save dense tensors (tensor.to_dense())")
    if value.is_quantized:
        raise CheckpointError(f"{name}: {key!r} is a quantized tensor ({_dtype(value)}); "
                              "dequantize the model before saving it")
    if value.device.type == "meta":
        raise CheckpointError(f"{name}: {key!r} is a meta tensor (it holds no values)")
    if reference.is_floating_point():
        ok = value.dtype in FLOAT_DTYPES
        allowed = "float16, bfloat16, float32 or float64"
    else:
        ok = value.dtype == reference.dtype or not (
            value.is_floating_point() or value.is_complex() or value.dtype == torch.bool
            or reference.dtype == torch.bool)
        allowed = _dtype(reference)
    if not ok:
        raise CheckpointError(f"{name}: {key!r} is {_dtype(value)} where the model has "
                              f"{_dtype(reference)}; permalign reads it only as {allowed}")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _first(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_checkpoint_for(path: str | Path, reference: Mapping[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
    """Load ``path`` and check it fits ``reference`` (the model's own state dict)."""
    state = load_state_dict(path)
    check_state_dict(state, reference, name=str(path))
    return {k: state[k].to(reference[k].dtype) for k in reference}

