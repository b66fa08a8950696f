"""Safe checkpoint loading and atomic file output."""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .errors import CheckpointError, PermalignError

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


# ------------------------------------------------------------------ atomic output
def check_writable(path: str | Path, *, force: bool) -> Path:
    """Refuse to overwrite an existing file unless ``force``; the directory must exist."""
    path = Path(path)
    if path.exists() and not force:
        raise PermalignError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.exists():
        raise PermalignError(f"directory {path.parent} does not exist; create it first")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None], *, force: bool) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    Nothing is left at ``path`` if ``write`` fails or is interrupted.
    """
    path = check_writable(path, force=force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give normal permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, force: bool) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text), force=force)


# ------------------------------------------------------------------ checkpoints
def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | Path, *,
                    force: bool = False) -> Path:
    """Save a plain state dict as ``.safetensors`` (by suffix) or a weights-only ``.pt``."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp)), force=force)
    return atomic_write(path, lambda tmp: torch.save(tensors, tmp), force=force)


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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            obj: object = load_file(str(path))
        except Exception as exc:  # safetensors raises several unrelated types
            raise CheckpointError(f"{path} is not a readable safetensors file "
                                  f"({_one_line(exc)})") from None
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{name} has NaN or Inf values in {k!r}; it cannot be aligned")


def _first(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_checkpoint_for(path: str | Path, reference: Mapping[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
    """Load ``path`` and check it fits ``reference`` (the model's own state dict)."""
    state = load_state_dict(path)
    check_state_dict(state, reference, name=str(path))
    return {k: state[k].to(reference[k].dtype) for k in reference}

