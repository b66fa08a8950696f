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
TEXT_FILE = Path(__file__).resolve().parent / "data" / "vim-user-manual.txt"  # see data/README


def cached_state(name: str, train) -> dict[str, torch.Tensor]:
    """The state dict cached as ``bench/.cache/<name>.pt``, made by ``train()`` when absent."""
    from permalign.io import load_state_dict, save_state_dict
    path = CACHE / f"{name}.pt"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        save_state_dict(train(), path, force=True)
    return load_state_dict(path)


def fmnist_pair(model_string: str, epochs: int = 5, train: int | None = None,
                recipe: str = "quick-adam"):
    """(model, spec, state_a, state_b, data): two models (seeds 0, 1) trained with ``recipe``
    on Fashion-MNIST (its first ``train`` examples of a seeded shuffle, all by default),
    cached. ``data`` is the training data used."""
    from permalign.data import load_dataset
    from permalign.recipes import recipe_config
    data = load_dataset("fashion-mnist")
    if train:
        data = data.subset(train=train)
    model, spec = resolve_model(model_string, data.input_shape, data.num_classes)
    stem = model_string.replace(":", "-").replace(",", "-").replace("=", "")
    subset = f"-n{train}" if train else ""
    tag = "" if recipe == "quick-adam" else f"-{recipe}"  # quick-adam: the original names
    states = [cached_state(f"{stem}-fmnist{subset}{tag}-e{epochs}-s{seed}", lambda: train_from_seed(
        model_string, data, recipe_config(recipe, dataset="fashion-mnist", epochs=epochs,
                                          seed=seed), progress=False))
        for seed in (0, 1)]
    return model, spec, states[0], states[1], data


def fmnist_mlp_pair(model_string: str = "mlp:depth=3,width=512", epochs: int = 5,
                    train: int | None = None):
    """:func:`fmnist_pair` with the quick-adam recipe (the MLP 3x512 pair of the benchmarks)."""
    return fmnist_pair(model_string, epochs, train)


def tiny_gpt2(layers: int = 2, heads: int = 4, width: int = 128, positions: int = 128,
              seed: int = 0) -> torch.nn.Module:
    """A small GPT-2 causal LM (transformers' ``GPT2LMHeadModel``) over byte tokens (vocabulary
    256), randomly initialised from ``seed``."""
    import transformers
    from permalign.data import BYTE_VOCAB
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_layer=layers, n_head=heads, n_embd=width,
                                     n_positions=positions, vocab_size=BYTE_VOCAB,
                                     bos_token_id=0, eos_token_id=0, use_cache=False)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


def text_pair(path: str | Path = TEXT_FILE, epochs: int = 10, block: int = 128,
              recipe: str = "quick-adam", batch_size: int = 16, **sizes: int):
    """(model, spec, state_a, state_b, data): two :func:`tiny_gpt2` (``sizes``) trained from
    seeds 0 and 1 on next-byte prediction of the text file ``path`` (``text:FILE``, windows of
    ``block`` tokens; ``recipe`` with ``batch_size`` windows a step), cached. The spec is inferred from the model's graph (``infer_spec``)."""
    from permalign.data import load_text
    from permalign.infer import infer_spec
    from permalign.recipes import recipe_config
    from permalign.train import train_run
    data = load_text(f"text:{path}", block_size=block)
    sizes = {"positions": block, **sizes}

    def train(seed: int) -> dict[str, torch.Tensor]:
        cfg = recipe_config(recipe, epochs=epochs, batch_size=batch_size, seed=seed)
        return train_run(tiny_gpt2(seed=seed, **sizes), data, cfg, progress=False).state

    label = "-".join(f"{k}{v}" for k, v in sorted(sizes.items()))
    states = [cached_state(f"gpt2-{label}-{Path(path).stem}-b{block}-{recipe}-bs{batch_size}-e{epochs}-s{seed}",
                           lambda: train(seed)) for seed in (0, 1)]
    model = tiny_gpt2(**sizes).eval()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    spec = infer_spec(model, (ids,))
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
