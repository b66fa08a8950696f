"""Data loaders: bundled digits, IDX files, CIFAR pickles, and a real Fashion-MNIST run."""
from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from permalign.data import DEFAULT_ROOT, load_dataset, load_digits, read_idx
from permalign.errors import DataError, PermalignError


def test_digits_split_is_fixed():
    a, b = load_digits(), load_digits()
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train_x) + len(a.test_x) == 1797
    assert torch.equal(a.test_y, b.test_y)
    assert abs(float(a.train_x.mean())) < 1e-4


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                     for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_dataset_from_directory(tmp_path, compress):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 255, (20, 28, 28)),
              compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, 20), compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 255, (5, 28, 28)),
              compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", rng.integers(0, 10, 5), compress)
    data = load_dataset("mnist", tmp_path)
    assert data.train_x.shape == (20, 1, 28, 28) and data.test_y.shape == (5,)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((4, 3, 3)), False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr("permalign.data.DEFAULT_ROOT", tmp_path / "share")
    monkeypatch.delenv("PERMALIGN_DATA", raising=False)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path / "nothing")
    with pytest.raises(PermalignError, match="unknown dataset"):
        load_dataset("imagenet")


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, 4))}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar10", tmp_path)
    assert data.train_x.shape == (20, 3, 32, 32) and data.num_classes == 10


def test_cifar_pickle_with_code_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", tmp_path)


FASHION = DEFAULT_ROOT / "fashion-mnist"


@pytest.mark.skipif(not FASHION.exists(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_demo(tmp_path):
    """Real data: MLP 3x512 on Fashion-MNIST, naive barrier >= 1.0, weight-matched <= 0.1."""
    from permalign.cli import main
    assert main(["demo", "--dataset", "fashion-mnist", "--out", str(tmp_path), "--quiet",
                 "--points", "9"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["methods"]
    assert results["naive"]["barrier"]["test_loss"] >= 1.0
    assert results["weight"]["barrier"]["test_loss"] <= 0.1
