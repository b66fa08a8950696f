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
