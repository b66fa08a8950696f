"""Data sets as in-memory tensors: bundled digits, IDX (MNIST-style) files, CIFAR pickles.

Every loader returns a :class:`Dataset` of standardised float tensors. Where files are
missing the error says where it looked and how to get them.
"""
from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, PermalignError

DEFAULT_ROOT = Path("/usr/share/datasets")


@dataclass
class Dataset:
    """Train and test tensors: ``x`` is (N, *input_shape) float32, ``y`` is (N,) int64.

    ``task`` names how predictions are scored (see :mod:`permalign.tasks`): ``classification``,
    or ``next-token`` for text, where ``x`` holds (N, T) token ids, ``y`` the (N, T) tokens
    that follow them, and ``num_classes`` is the vocabulary size.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    task: str = "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0
               ) -> "Dataset":
        """A seeded random subset of the train and/or test split."""
        g = torch.Generator().manual_seed(seed)

        def pick(x: torch.Tensor, y: torch.Tensor, n: int | None):
            if n is None or n >= len(x):
                return x, y
            idx = torch.randperm(len(x), generator=g)[:n]
            return x[idx], y[idx]

        tx, ty = pick(self.train_x, self.train_y, train)
        vx, vy = pick(self.test_x, self.test_y, test)
        return replace(self, train_x=tx, train_y=ty, test_x=vx, test_y=vy)

    def biased_halves(self, fraction: float = 0.2, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Two disjoint training sets (paper §5.4): the first sees ``fraction`` of the images of
        the lower half of the labels and ``1 - fraction`` of the upper half; the second the rest.
        Both keep the full test set."""
        g = torch.Generator().manual_seed(seed)
        first, second = [], []
        for label in range(self.num_classes):
            idx = (self.train_y == label).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            share = fraction if label < self.num_classes // 2 else 1 - fraction
            cut = int(round(share * len(idx)))
            first.append(idx[:cut])
            second.append(idx[cut:])
        return tuple(replace(self, train_x=self.train_x[torch.cat(i)],
                             train_y=self.train_y[torch.cat(i)])
                     for i in (first, second))  # type: ignore[return-value]

    def downsampled(self, factor: int) -> "Dataset":
        """Images average-pooled by ``factor`` x ``factor`` (e.g. 28x28 -> 14x14 for 2), then
        re-standardised with the training split's per-channel statistics."""
        if factor < 1 or len(self.input_shape) != 3:
            raise PermalignError("downsampling needs image data (C, H, W) and a factor >= 1")
        if factor == 1:
            return self
        pool = torch.nn.functional.avg_pool2d
        train_x, test_x = _standardise(pool(self.train_x, factor), pool(self.test_x, factor))
        return Dataset(self.name, train_x, self.train_y, test_x, self.test_y, self.num_classes)

    def to(self, device: torch.device | str) -> "Dataset":
        return replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                       test_x=self.test_x.to(device), test_y=self.test_y.to(device))


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None, drop_last: bool = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of in-memory tensors (optionally shuffled with ``generator``)."""
    n = len(x)
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel standardisation with the training set's statistics."""
    dims = [0] + list(range(2, train.dim()))
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1,797 bundled 8x8 digits, as (1, 8, 8) images, fixed seeded split."""
    from sklearn.datasets import load_digits as sk_digits
    bunch = sk_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    train_x, test_x = _standardise(x[train], x[test])
    return Dataset("digits", train_x, y[train], test_x, y[test], 10)


# ------------------------------------------------------------------ IDX files
IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, "
                        f"found {data.size}")
    return data.reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def candidate_dirs(name: str, data_dir: str | Path | None) -> list[Path]:
    """Where a data set is looked for: --data-dir, $PERMALIGN_DATA/<name>,
    /usr/share/datasets/<name>."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / name]
    env = os.environ.get("PERMALIGN_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    dirs.append(DEFAULT_ROOT / name)
    return dirs


HOW_TO_GET = {
    "fashion-mnist": "install Debian's package dataset-fashion-mnist (apt-get install "
                     "dataset-fashion-mnist) or put the four IDX files in --data-dir",
    "mnist": "put the four MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in --data-dir",
    "cifar10": "extract cifar-10-python.tar.gz and pass its cifar-10-batches-py folder as "
               "--data-dir",
    "cifar100": "extract cifar-100-python.tar.gz and pass its cifar-100-python folder as "
                "--data-dir",
}


def load_idx_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """MNIST or Fashion-MNIST from the four standard IDX files."""
    dirs = candidate_dirs(name, data_dir)
    for directory in dirs:
        paths = {k: _find(directory, stem) for k, stem in IDX_FILES.items()}
        if all(paths.values()):
            arrays = {k: read_idx(p) for k, p in paths.items()}  # type: ignore[arg-type]
            train_x = torch.tensor(arrays["train_x"], dtype=torch.float32).unsqueeze(1) / 255
            test_x = torch.tensor(arrays["test_x"], dtype=torch.float32).unsqueeze(1) / 255
            train_y = torch.tensor(arrays["train_y"], dtype=torch.long).reshape(-1)
            test_y = torch.tensor(arrays["test_y"], dtype=torch.long).reshape(-1)
            if len(train_x) != len(train_y) or len(test_x) != len(test_y) or train_x.dim() != 4:
                raise DataError(f"the IDX files in {directory} do not match: images "
                                f"{tuple(train_x.shape)}, {tuple(test_x.shape)} vs labels "
                                f"{len(train_y)}, {len(test_y)}")
            _check_labels(directory, train_y, test_y, 10)
            train_x, test_x = _standardise(train_x, test_x)
            return Dataset(name, train_x, train_y, test_x, test_y, 10)
    raise DataError(f"{name} not found (looked in {', '.join(map(str, dirs))}); "
                    f"{HOW_TO_GET[name]}")


def load_cifar(name: str, data_dir: str | Path | None = None) -> Dataset:
    """CIFAR-10/100 from the standard python pickle batches (plain arrays, no code)."""
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    dirs = candidate_dirs(name, data_dir)
    dirs += [d / folder for d in list(dirs)]
    if name == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = ["test_batch"], b"labels"
    else:
        train_files, test_files, label_key = ["train"], ["test"], b"fine_labels"
    for directory in dirs:
        if all((directory / f).is_file() for f in train_files + test_files):
            def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
                xs, ys = [], []
                for f in files:
                    x, y = _read_cifar_batch(directory / f, label_key)
                    xs.append(x)
                    ys.append(y)
                return (torch.tensor(np.concatenate(xs), dtype=torch.float32) / 255,
                        torch.tensor(np.concatenate(ys)))
            (tx, ty), (vx, vy) = read(train_files), read(test_files)
            classes = 10 if name == "cifar10" else 100
            _check_labels(directory, ty, vy, classes)
            tx, vx = _standardise(tx, vx)
            return Dataset(name, tx, ty, vx, vy, classes)
    raise DataError(f"{name} not found (looked in {', '.join(map(str, dirs))}); "
                    f"{HOW_TO_GET[name]}")


def _check_labels(directory: Path, train_y: torch.Tensor, test_y: torch.Tensor,
                  classes: int) -> None:
    for y in (train_y, test_y):
        if len(y) == 0 or int(y.min()) < 0 or int(y.max()) >= classes:
            raise DataError(f"the labels in {directory} are not all in 0..{classes - 1} "
                            "(or a split is empty); the files are damaged")


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) of one CIFAR pickle batch, or a DataError."""
    try:
        with open(path, "rb") as fh:
            batch = _RestrictedUnpickler(fh).load()
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # a damaged pickle raises almost anything
        raise DataError(f"{path} is not a CIFAR python batch ({type(exc).__name__}); "
                        "extract the data set again") from None
    if len(x) != len(y):
        raise DataError(f"{path} holds {len(x)} images but {len(y)} labels")
    return x, y


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: CIFAR batches hold nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def __init__(self, fh) -> None:
        super().__init__(fh, encoding="bytes")

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name} from a CIFAR batch file")


# ------------------------------------------------------------------ text
TEXT_PREFIX = "text:"
BYTE_VOCAB = 256  # the byte-level fallback's vocabulary: token id = UTF-8 byte value
DEFAULT_BLOCK = 128


def is_text(name: str | None) -> bool:
    """``text:FILE`` names a local UTF-8 text file for language-model evaluation."""
    return bool(name) and str(name).lower().startswith(TEXT_PREFIX)


def byte_tokens(text: str) -> list[int]:
    """The byte-level fallback tokeniser: one token per UTF-8 byte, ids 0..255."""
    return list(text.encode("utf-8"))


def load_text(name: str, *, tokenize: Callable[[str], list[int]] | None = None,
              vocab_size: int | None = None, block_size: int = DEFAULT_BLOCK,
              test_fraction: float = 0.1) -> Dataset:
    """A next-token data set from ``text:FILE``.

    The file is tokenised with ``tokenize`` (a model's tokenizer) or, without one, byte by
    byte (:func:`byte_tokens`, vocabulary 256). The token stream is cut into consecutive,
    non-overlapping windows of ``block_size + 1`` tokens (the tail is dropped); each window
    gives inputs ``x = w[:-1]`` and targets ``y = w[1:]``. The last ``test_fraction`` of the
    windows (at least one) is the test split, the others the training split.
    """
    path = Path(str(name)[len(TEXT_PREFIX):] if is_text(name) else name)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a UTF-8 text file (--dataset text:FILE)") from None
    except OSError as exc:
        raise DataError(f"cannot read text file {path}: {exc.strerror or exc}") from None
    ids = tokenize(text) if tokenize is not None else byte_tokens(text)
    vocab = vocab_size if vocab_size is not None else BYTE_VOCAB
    if tokenize is None and vocab < BYTE_VOCAB:
        raise DataError(f"the byte-level tokens of {path} need a vocabulary of {BYTE_VOCAB}, "
                        f"the model has {vocab}; give the model folder a tokenizer")
    if ids and max(ids) >= vocab:
        raise DataError(f"{path} tokenises to id {max(ids)}, outside the model's vocabulary "
                        f"of {vocab}")
    if block_size < 1:
        raise PermalignError("the text block size must be >= 1")
    windows = len(ids) // (block_size + 1)
    if windows < 2:
        raise DataError(f"{path} has {len(ids)} tokens; text evaluation needs at least "
                        f"{2 * (block_size + 1)} (two windows of {block_size + 1})")
    stream = torch.tensor(ids[:windows * (block_size + 1)], dtype=torch.long)
    stream = stream.view(windows, block_size + 1)  # (windows, T + 1)
    n_test = max(1, int(round(windows * test_fraction)))
    train, test = stream[:windows - n_test], stream[windows - n_test:]
    return Dataset(f"text:{path.name}", train[:, :-1], train[:, 1:], test[:, :-1],
                   test[:, 1:], vocab, task="next-token")


DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "text:FILE")


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load a data set by name: digits (bundled), fashion-mnist, mnist, cifar10, cifar100, or
    ``text:FILE`` (byte-level tokens; :func:`load_text` takes a model's tokenizer)."""
    if is_text(name):
        return load_text(name)
    key = canonical_name(name)
    if key == "digits":
        return load_digits()
    if key in ("fashion-mnist", "mnist"):
        return load_idx_dataset(key, data_dir)
    return load_cifar(key, data_dir)


# (input shape, classes) of each named data set, known without loading it
DATASET_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10), "fashion-mnist": ((1, 28, 28), 10), "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100),
}


def canonical_name(name: str) -> str:
    """The registry name of a named data set (``text:FILE`` is not one)."""
    if is_text(name):
        raise PermalignError(f"{name} is a text file, not a named data set; its shape comes "
                             "from the model")
    key = name.lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100"}.get(key, key)
    if key not in DATASET_SHAPES:
        raise PermalignError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    return key
