"""Read-only state dicts that load a tensor only when it is asked for.

:class:`LazyStateDict` is a ``Mapping[str, Tensor]`` over one or more safetensors files (a
sharded folder's shards): its keys, shapes and dtypes come from the files' headers, and each
``state[key]`` opens the file with ``safetensors.safe_open``, reads that one tensor and closes
the file again — nothing is cached, so holding the mapping costs no tensor memory and a tensor
lives only as long as its caller keeps it. Hugging Face folders (``hf:FOLDER``) are opened with
:func:`permalign.hf.lazy_state`.

:class:`LazyView` is the same kind of mapping over a function (``key -> tensor``): a permuted
or interpolated state dict computed one tensor at a time (:mod:`permalign.statedict`). Code
that wants a tensor's shape without loading it asks :func:`shape_of`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch

from .errors import CheckpointError, first_line

# safetensors' dtype names -> torch dtypes
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class LazyMapping(Mapping[str, torch.Tensor]):
    """A read-only state dict whose tensors are made when asked (never cached); shapes and
    dtypes are known without making them."""

    device = torch.device("cpu")  # where its tensors are made

    def __init__(self, shapes: Mapping[str, tuple[int, ...]],
                 dtypes: Mapping[str, torch.dtype]) -> None:
        self._shapes = dict(shapes)
        self._dtypes = dict(dtypes)

    def load(self, key: str) -> torch.Tensor:  # pragma: no cover - subclasses
        raise NotImplementedError

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._shapes:
            raise KeyError(key)
        return self.load(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def __contains__(self, key: object) -> bool:
        return key in self._shapes

    def shape(self, key: str) -> torch.Size:
        """The tensor's shape, without loading it."""
        return torch.Size(self._shapes[key])

    def dtype(self, key: str) -> torch.dtype:
        """The tensor's dtype (as loaded), without loading it."""
        return self._dtypes[key]

    def nbytes(self, key: str) -> int:
        """Bytes of the tensor as loaded."""
        return self.shape(key).numel() * self.dtype(key).itemsize

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} tensors)"


class LazyStateDict(LazyMapping):
    """Tensors stored in safetensors files, loaded one at a time on access.

    ``entries`` maps each key to ``(file, name stored in it)`` (default: every tensor of
    ``files`` under its own name); ``cast`` optionally maps keys to the dtype a tensor is
    converted to when loaded (as a model's ``load_state_dict`` would).
    """

    def __init__(self, files: list[str | Path], *,
                 entries: Mapping[str, tuple[Path, str]] | None = None,
                 cast: Mapping[str, torch.dtype] | None = None) -> None:
        self.files = [Path(f) for f in files]
        stored: dict[tuple[Path, str], tuple[tuple[int, ...], torch.dtype]] = {}
        for path in self.files:
            with _open(path) as handle:
                for name in handle.keys():
                    part = handle.get_slice(name)
                    kind = part.get_dtype()
                    if kind not in DTYPES:
                        raise CheckpointError(f"{path}: {name!r} has dtype {kind}, which "
                                              "permalign does not read")
                    stored[(path, name)] = (tuple(part.get_shape()), DTYPES[kind])
        if entries is None:
            entries = {name: (path, name) for path, name in stored}
        missing = [k for k, where in entries.items() if where not in stored]
        if missing:
            raise CheckpointError(f"the safetensors files lack {', '.join(missing[:3])}")
        self.entries = dict(entries)
        self.cast = dict(cast or {})
        super().__init__({k: stored[w][0] for k, w in self.entries.items()},
                         {k: self.cast.get(k, stored[w][1]) for k, w in self.entries.items()})

    def load(self, key: str) -> torch.Tensor:
        path, name = self.entries[key]
        with _open(path) as handle:
            tensor = handle.get_tensor(name)
        dtype = self.cast.get(key)
        return tensor if dtype is None else tensor.to(dtype)


class LazyView(LazyMapping):
    """A state dict computed one tensor at a time: ``view[key] = make(key)``."""

    def __init__(self, make: Callable[[str], torch.Tensor],
                 shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, torch.dtype],
                 device: torch.device | str = "cpu") -> None:
        super().__init__(shapes, dtypes)
        self._make = make
        self.device = torch.device(device)

    def load(self, key: str) -> torch.Tensor:
        return self._make(key)


def _open(path: Path):
    from safetensors import safe_open
    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises several unrelated types
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"({first_line(exc, None)})") from None


def is_lazy(state: object) -> bool:
    """True for a mapping that loads its tensors on access."""
    return isinstance(state, LazyMapping)


def shape_of(state: Mapping[str, torch.Tensor], key: str) -> torch.Size:
    """``state[key].shape``, without loading a lazy tensor."""
    return state.shape(key) if isinstance(state, LazyMapping) else state[key].shape


def dtype_of(state: Mapping[str, torch.Tensor], key: str) -> torch.dtype:
    """``state[key].dtype``, without loading a lazy tensor."""
    return state.dtype(key) if isinstance(state, LazyMapping) else state[key].dtype


def stubs(state: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None
          ) -> dict[str, torch.Tensor]:
    """``{key: tensor}`` for code that reads only shapes, dtypes and devices (e.g.
    ``permutation.axis_indices``, ``spec.validate``): a lazy state's tensors are zero-dim
    zeros expanded to their shapes (no memory, nothing loaded); an eager state's are its own."""
    keys = state.keys() if keys is None else keys
    if not isinstance(state, LazyMapping):
        return {k: state[k] for k in keys}
    return {k: torch.zeros((), dtype=state.dtype(k), device=state.device).expand(state.shape(k))
            for k in keys}


def float_view(state: Mapping[str, torch.Tensor], keys: Iterable[str],
               device: torch.device | str, dtype: torch.dtype = torch.float32) -> LazyView:
    """``state``'s ``keys`` in ``dtype`` on ``device``, each converted when asked for."""
    keys = list(keys)
    return LazyView(lambda k: state[k].detach().to(device=device, dtype=dtype),
                    {k: shape_of(state, k) for k in keys}, dict.fromkeys(keys, dtype), device)


def view_like(state: Mapping[str, torch.Tensor], make: Callable[[str], torch.Tensor]
              ) -> LazyView:
    """A :class:`LazyView` with ``state``'s keys, shapes and dtypes (read without loading)
    whose tensors ``make(key)`` computes when asked."""
    return LazyView(make, {k: shape_of(state, k) for k in state},
                    {k: dtype_of(state, k) for k in state})
