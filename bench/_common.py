"""Shared pieces of the benchmark scripts: trained weights, machine description, tables."""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from permalign.data import load_digits  # noqa: E402
from permalign.train import TrainConfig  # noqa: E402
from permalign.models import resolve_model  # noqa: E402
from permalign.workflow import train_from_seed  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {torch.get_num_threads()} torch threads{gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def trained_pair(model_string: str, epochs: int = 2, train: int | None = None):
    """(model, spec, state_a, state_b): two models trained briefly on the bundled digits."""
    data = load_digits()
    if train:
        data = data.subset(train=train)
    states = [train_from_seed(model_string, data, TrainConfig(epochs=epochs, seed=s),
                              progress=False) for s in (0, 1)]
    model, spec = resolve_model(model_string, data.input_shape, data.num_classes)
    return model, spec, states[0], states[1]


def table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(x: object) -> str:
        return f"{x:.3g}" if isinstance(x, float) else str(x)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(text: str, out: str | None) -> None:
    """Print the report, and write it to ``out`` when given."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


CACHE = Path(__file__).resolve().parent / ".cache"  # git-ignored: trained checkpoints


def fmnist_mlp_pair(model_string: str = "mlp:depth=3,width=512", epochs: int = 5,
                    train: int | None = None):
    """(model, spec, state_a, state_b, data): two models (seeds 0, 1) trained on Fashion-MNIST
    (its first ``train`` examples of a seeded shuffle, all by default), cached."""
    from permalign.data import load_dataset
    from permalign.io import load_state_dict, save_state_dict
    data = load_dataset("fashion-mnist")
    if train:
        data = data.subset(train=train)
    model, spec = resolve_model(model_string, data.input_shape, data.num_classes)
    states = []
    for seed in (0, 1):
        stem = model_string.replace(":", "-").replace(",", "-").replace("=", "")
        subset = f"-n{train}" if train else ""
        path = CACHE / f"{stem}-fmnist{subset}-e{epochs}-s{seed}.pt"
        if not path.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            state = train_from_seed(model_string, data, TrainConfig(epochs=epochs, seed=seed),
                                    progress=False)
            save_state_dict(state, path, force=True)
        states.append(load_state_dict(path))
    return model, spec, states[0], states[1], data


def random_pair(model_string: str, input_shape=(3, 32, 32), num_classes: int = 10):
    """(model, spec, state_a, state_b): two random initialisations (seeds 0 and 1)."""
    model, spec = resolve_model(model_string, input_shape, num_classes, seed=0)
    other, _ = resolve_model(model_string, input_shape, num_classes, seed=1)
    return model, spec, dict(model.state_dict()), dict(other.state_dict())


def load_note() -> str:
    """The machine's load averages and CPU count, for results files."""
    import os
    one, five, fifteen = os.getloadavg()
    return (f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on "
            f"{os.cpu_count()} CPUs")
