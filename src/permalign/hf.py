"""Hugging Face model folders in and out (``--model hf:FOLDER``), without a network.

A folder holds ``config.json`` and its weights: ``model.safetensors``, sharded safetensors
with ``model.safetensors.index.json``, or ``pytorch_model.bin`` (optionally sharded, read with
weights-only loading). Weights are read one tensor at a time by name: :func:`iter_tensors`
for every format, and lazily (:class:`~permalign.lazy.LazyStateDict`: headers first, a
tensor when it is asked for) from safetensors.

- :func:`build_model`: the class named in ``config.architectures``, built by transformers
  from the config alone (seeded random weights), then :func:`fill_model` copies in the
  folder's weights.
- :func:`lazy_state` / :func:`open_lazy`: the folder's weights as a lazy state dict
  (:mod:`permalign.lazy`), each tensor read when asked for.
- :func:`example_inputs`: ``(args, kwargs)`` derived from the config (token ids, pixel
  values, audio features) for spec inference and checks.
- :func:`tokenizer`: the folder's tokenizer as a ``text -> ids`` function, if it has one.
- :func:`save_folder`: a complete folder that ``from_pretrained`` loads: the config and
  tokenizer files copied, sharded safetensors with the standard index, and a model card.

Where transformers stores a model's tensors split or fused (:func:`converts`: Mixtral and
other mixture-of-experts models keep one tensor per expert on disk, stacked in the model),
the folder is read through ``from_pretrained`` (safetensors only) and written from
:func:`stored_state`, the layout ``save_pretrained`` writes; such folders are not read lazily.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, PermalignError, first_line
from . import distributed, output
from .io import check_state_dict, load_state_dict
from .lazy import LazyStateDict, shape_of, stubs

PREFIX = "hf:"
CONFIG = "config.json"
SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
# files copied from the source folder into a written folder (if present)
COPIED_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                "vocab.txt", "tokenizer.model", "spiece.model", "preprocessor_config.json",
                "chat_template.jinja")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "tokenizer.model", "spiece.model")
WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)"
                         r"(\.index\.json)?$")
DEFAULT_SHARD_BYTES = 2 * 1024 ** 3
EXAMPLE_LENGTH = 8  # tokens (or decoder tokens) in an example input


# ------------------------------------------------------------------ the folder
def is_folder(path: str | Path) -> bool:
    """A directory holding ``config.json``."""
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def folder_of(model_string: str) -> Path:
    """The folder of ``hf:FOLDER``, checked to hold a config."""
    folder = Path(model_string[len(PREFIX):] if model_string.startswith(PREFIX)
                  else model_string)
    if not folder.is_dir():
        raise PermalignError(f"--model {model_string}: {folder} is not a folder")
    if not (folder / CONFIG).is_file():
        raise PermalignError(f"--model {model_string}: {folder} has no {CONFIG} (a Hugging "
                             "Face model folder holds config.json and its weights)")
    return folder


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise PermalignError(f"Hugging Face folders need the transformers package, which "
                             f"cannot be imported here ({exc}); pip install transformers"
                             ) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # ("Loading weights" bars)
    return transformers


def load_config(folder: str | Path):
    """The folder's ``PretrainedConfig`` (read locally, never from a hub)."""
    transformers = _transformers()
    try:
        return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        first = first_line(exc)
        raise PermalignError(f"cannot read {Path(folder) / CONFIG}: {first}") from None


def model_class(config) -> type:
    """The transformers class named first in ``config.architectures``."""
    transformers = _transformers()
    names = getattr(config, "architectures", None) or []
    if not names:
        raise PermalignError("config.json names no 'architectures'; add the model class "
                             "(e.g. \"architectures\": [\"GPT2LMHeadModel\"])")
    cls = getattr(transformers, names[0], None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PermalignError(f"config.json names architecture {names[0]!r}, which this "
                             f"transformers ({transformers.__version__}) does not have")
    return cls


def build_model(folder: str | Path, *, seed: int = 0, load_weights: bool = True) -> nn.Module:
    """The folder's model in eval mode: built from its config (weights seeded by ``seed``),
    then, with ``load_weights``, given the folder's weights."""
    config = load_config(folder)
    cls = model_class(config)
    torch.manual_seed(seed)
    try:
        model = cls(config)
    except Exception as exc:  # transformers raises many types for a bad config
        first = first_line(exc)
        raise PermalignError(f"cannot build {cls.__name__} from {Path(folder) / CONFIG}: "
                             f"{first}") from None
    model.eval()
    if load_weights:
        fill_model(model, folder)
    return model


def fill_model(model: nn.Module, folder: str | Path) -> None:
    """Copy the folder's weights into ``model``: from safetensors one tensor at a time
    (:func:`lazy_state`; nothing but the model and one tensor in memory), from ``.bin`` files
    and layouts that transformers converts (:func:`converts`) through :func:`load_state` and
    ``load_state_dict``."""
    if converts(model) or any(path.suffix != ".safetensors" for path in weight_files(folder)):
        model.load_state_dict(load_state(folder, model))
        return
    state = lazy_state(folder, model)
    with torch.no_grad():
        for key, target in model.state_dict().items():  # views of the model's tensors
            target.copy_(state[key])


# ------------------------------------------------------------------ reading weights
def _index_files(folder: Path, index: str) -> list[Path]:
    path = folder / index
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            AttributeError) as exc:
        raise CheckpointError(f"{path} is not a weight index ({type(exc).__name__})") from None
    for name in names:
        if not isinstance(name, str) or Path(name).name != name:
            raise CheckpointError(f"{path} names shard {name!r} outside its folder")
        if not (folder / name).is_file():
            raise CheckpointError(f"{path} names shard {name}, which is missing")
    return [folder / n for n in names]


def weight_files(folder: str | Path) -> list[Path]:
    """The folder's weight files in order: safetensors (indexed or single) preferred, then
    ``pytorch_model.bin`` (indexed or single)."""
    folder = Path(folder)
    for index, single in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        if (folder / index).is_file():
            return _index_files(folder, index)
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(f"{folder} holds no weights ({SAFE_SINGLE}, {SAFE_INDEX}, "
                          f"{BIN_SINGLE} or {BIN_INDEX})")


def iter_tensors(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor stored in the folder, as ``(name, tensor)``, one at a time.

    Safetensors files are read per tensor with ``safe_open``; ``.bin`` files with weights-only
    ``torch.load`` (no code from the file runs).
    """
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # safetensors raises several unrelated types
                first = first_line(exc, None)
                raise CheckpointError(f"{path} is not a readable safetensors file ({first})"
                                      ) from None
            with handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
        else:
            yield from load_state_dict(path).items()


def _reverted(model: nn.Module, state: Mapping[str, torch.Tensor]
              ) -> dict[str, torch.Tensor] | None:
    """``state`` as ``save_pretrained`` would store it (transformers 5's weight conversion
    reverted), or None where transformers keeps every weight under its module's name."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4 stores weights under the modules' names
        return None
    return revert_weight_conversion(model, dict(state))


def converts(model: nn.Module) -> bool:
    """Whether transformers stores some of ``model``'s tensors split or fused (Mixtral's
    stacked experts as ``experts.N.w1``...): such a folder is read through transformers'
    own loading and written through :func:`stored_state`, not one tensor per name."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    reverted = _reverted(model, state)
    if reverted is None:
        return False
    ids = {id(v) for v in state.values()}
    return any(id(tensor) not in ids for tensor in reverted.values())


def stored_state(model: nn.Module, state: Mapping[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """``state`` (``model``'s keys) under the names and in the layout its folder stores
    (experts split back into one tensor each...), as ``save_pretrained`` writes it."""
    reverted = _reverted(model, {k: state[k] for k in model.state_dict()})
    return dict(state) if reverted is None else reverted


def stored_names(model: nn.Module) -> dict[str, str]:
    """``state-dict key -> name in a saved folder`` for ``model``.

    transformers 5 keeps some models' weights under other names than their modules use (a
    ViT's ``encoder.layer.0.attention.attention.query`` is ``layers.0.attention.q_proj``) and
    translates when saving and loading; this asks it for that translation (the one
    ``save_pretrained`` applies). Only one-to-one renamings are supported: a layout that
    splits or fuses tensors is refused.
    """
    state = {k: v.detach() for k, v in model.state_dict().items()}  # one object per key
    reverted = _reverted(model, state)
    if reverted is None:
        return {k: k for k in state}
    by_id = {id(v): k for k, v in state.items()}
    names: dict[str, str] = {}
    for stored, tensor in reverted.items():
        key = by_id.get(id(tensor))
        if key is None:
            raise PermalignError(f"{type(model).__name__} saves {stored!r} by converting "
                                 "tensors, which cannot be read one tensor at a time; leave "
                                 "out --low-memory")
        names[key] = stored
    return {k: names.get(k, k) for k in state}


def _sources(model: nn.Module, stored: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """``(state-dict key -> stored name it is read from, stored names the model does not
    take)`` for the names ``stored`` in a folder (see :func:`load_state`)."""
    stored = list(stored)
    available = set(stored)
    reference = model.state_dict(keep_vars=True)
    names = stored_names(model)
    by_tensor: dict[int, list[str]] = {}
    for key, value in reference.items():
        by_tensor.setdefault(id(value), []).append(key)
    sources: dict[str, str] = {}
    for key, value in reference.items():
        source = next((names[k] for k in by_tensor[id(value)] if names[k] in available), None)
        if source is not None:
            sources[key] = source
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected",
                                              None) or []]
    known = set(names.values())
    extra = [k for k in stored if k not in known and not any(p.search(k) for p in ignored)]
    return sources, extra


def load_state(folder: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The folder's weights as a complete state dict of ``model`` (its keys).

    Stored names are translated as transformers does (:func:`stored_names`). Weights the
    folder leaves out because they are tied (a language model's head sharing the embedding)
    are filled from the tensor they are tied to. Names the model does not have are an error,
    except those transformers itself ignores for this class. Tensors are cast to the model's
    dtypes (:func:`save_folder` writes them back in their stored dtypes).
    """
    reference = model.state_dict()
    if converts(model):
        return _converted_state(folder, model)
    loaded = dict(iter_tensors(folder))
    sources, extra = _sources(model, loaded)
    state = {key: loaded[source] for key, source in sources.items()}
    check_state_dict({**state, **{k: loaded[k] for k in extra}}, reference, name=str(folder))
    return {k: state[k].to(reference[k].dtype) for k in reference}


def _converted_state(folder: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The folder's weights as ``model``'s state dict, read by transformers'
    ``from_pretrained`` (local files only), which converts split or fused tensors; safetensors
    only (no pickle is loaded). Missing or unexpected weights are an error."""
    if any(path.suffix != ".safetensors" for path in weight_files(folder)):
        raise PermalignError(f"{folder} stores {type(model).__name__} as pytorch_model.bin in "
                             "a layout transformers converts on loading; save it as "
                             "safetensors first")
    reference = model.state_dict()
    try:
        loaded, info = type(model).from_pretrained(
            str(folder), config=model.config, local_files_only=True, use_safetensors=True,
            output_loading_info=True)
    except Exception as exc:  # transformers raises many types for a bad folder
        raise CheckpointError(f"cannot read {folder}: {first_line(exc)}") from None
    problems = [f"{what} {', '.join(sorted(names)[:3])}" for what, names in
                (("missing", info.get("missing_keys", ())),
                 ("unexpected", info.get("unexpected_keys", ())),
                 ("mismatched", [k[0] if isinstance(k, tuple) else k
                                 for k in info.get("mismatched_keys", ())]))
                if names]
    if problems:
        raise CheckpointError(f"{folder} does not fit {type(model).__name__}: "
                              f"{'; '.join(problems)}")
    state = loaded.state_dict()
    check_state_dict(state, reference, name=str(folder))
    return {k: state[k].detach().to(reference[k].dtype) for k in reference}


def lazy_state(folder: str | Path, model: nn.Module) -> LazyStateDict:
    """:func:`load_state` without loading: a :class:`~permalign.lazy.LazyStateDict` with the
    model's keys over the folder's safetensors shards, each tensor read (and cast to the
    model's dtype) only when asked for.

    Keys, shapes and dtypes are checked as :func:`load_state` does, from the files' headers;
    the check for NaN and Inf values is left out (it would read every tensor).
    """
    files = weight_files(folder)
    if any(path.suffix != ".safetensors" for path in files):
        raise PermalignError(f"{folder} stores its weights as pytorch_model.bin, which cannot "
                             "be read lazily; save it as safetensors (or leave out "
                             "--low-memory)")
    stored = LazyStateDict(files)
    reference = model.state_dict()
    sources, extra = _sources(model, stored)
    shapes = stubs(stored, list(dict.fromkeys([*sources.values(), *extra])))
    check_state_dict({**{key: shapes[source] for key, source in sources.items()},
                      **{k: shapes[k] for k in extra}}, reference, name=str(folder))
    return LazyStateDict(files, entries={k: stored.entries[sources[k]] for k in reference},
                         cast={k: v.dtype for k, v in reference.items()})


def open_lazy(path: str | Path) -> LazyStateDict:
    """Every tensor of a ``.safetensors`` file, or of a folder's safetensors weights
    (``model.safetensors`` or sharded with ``model.safetensors.index.json``; ``hf:FOLDER``
    too), under its stored name, loaded only when asked for."""
    text = str(path)
    path = Path(text[len(PREFIX):] if text.startswith(PREFIX) else text)
    files = weight_files(path) if path.is_dir() else [path]
    if any(f.suffix != ".safetensors" for f in files):
        raise PermalignError(f"{path}: only safetensors weights can be read lazily")
    return LazyStateDict(files)


def stored_layout(folder: str | Path) -> dict[str, torch.dtype]:
    """``name -> dtype`` of every tensor stored in the folder, in storage order (read from
    the safetensors headers without loading, where the folder has them)."""
    files = weight_files(folder)
    if all(path.suffix == ".safetensors" for path in files):
        stored = LazyStateDict(files)
        return {name: stored.dtype(name) for name in stored}
    return {name: tensor.dtype for name, tensor in iter_tensors(folder)}


# ------------------------------------------------------------------ inputs and tokens
def _first_attr(config, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def max_positions(config) -> int | None:
    """The longest token sequence the model takes, if its config says."""
    return _first_attr(config, "max_position_embeddings", "n_positions", "n_ctx",
                       "max_sequence_length")


def vocab_size(config) -> int:
    size = _first_attr(config, "vocab_size")
    if size is None:
        raise PermalignError(f"{type(config).__name__} has no vocab_size: not a language model")
    return int(size)


def _token_ids(config, length: int, batch: int, g: torch.Generator) -> torch.Tensor:
    positions = max_positions(config)
    length = min(length, positions) if positions else length
    return torch.randint(0, vocab_size(config), (batch, length), generator=g)


def _image_size(config) -> tuple[int, int]:
    size = _first_attr(config, "image_size", "img_size") or 224
    if isinstance(size, list | tuple):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def example_inputs(model: nn.Module, *, seed: int = 0, batch: int = 2
                   ) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` to call ``model`` with, derived from its config.

    By the model's main input: ``input_ids`` (random tokens, at most 8 and no more than the
    model's positions), ``pixel_values`` (``num_channels`` x ``image_size``),
    ``input_features`` (``num_mel_bins`` x ``2 * max_source_positions`` frames, as Whisper
    wants) or ``input_values`` (1,600 raw audio samples). Encoder-decoder models also get
    ``decoder_input_ids``; the key-value cache is switched off.
    """
    config = model.config
    g = torch.Generator().manual_seed(seed)
    name = getattr(model, "main_input_name", "input_ids")
    kwargs: dict[str, Any] = {}
    if name == "input_ids":
        kwargs[name] = _token_ids(config, EXAMPLE_LENGTH, batch, g)
    elif name == "pixel_values":
        channels = int(_first_attr(config, "num_channels", "in_chans") or 3)
        kwargs[name] = torch.randn(batch, channels, *_image_size(config), generator=g)
    elif name == "input_features":
        mels = int(_first_attr(config, "num_mel_bins", "input_feat_per_channel",
                               "feature_size") or 80)
        frames = 2 * int(_first_attr(config, "max_source_positions") or 1500)
        kwargs[name] = torch.randn(batch, mels, frames, generator=g)
    elif name == "input_values":
        kwargs[name] = torch.randn(batch, 1600, generator=g)
    else:
        raise PermalignError(f"cannot make an example input {name!r} for "
                             f"{type(model).__name__}; infer its spec from Python with "
                             "permalign.infer_spec(model, args, example_kwargs)")
    if getattr(config, "is_encoder_decoder", False):
        start = _first_attr(config, "decoder_start_token_id", "bos_token_id", "pad_token_id")
        ids = _token_ids(config, EXAMPLE_LENGTH // 2, batch, g)
        if start is not None:
            ids[:, 0] = int(start)
        kwargs["decoder_input_ids"] = ids
    if getattr(config, "use_cache", None) is not None:
        kwargs["use_cache"] = False
    return (), kwargs


def tokenizer(folder: str | Path) -> Callable[[str], list[int]] | None:
    """The folder's tokenizer as ``text -> token ids`` (no special tokens added), or None if
    the folder has no tokenizer files."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    transformers = _transformers()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        first = first_line(exc)
        raise PermalignError(f"cannot load the tokenizer in {folder}: {first}") from None
    return lambda text: list(tok(text, add_special_tokens=False)["input_ids"])


# ------------------------------------------------------------------ writing a folder
def check_folder_writable(out: str | Path, *, force: bool) -> Path:
    """Refuse an output folder that exists and is not empty unless ``force``; its parent must
    exist, and a file in its place is refused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PermalignError(f"{out} exists and is not a folder; a Hugging Face model is "
                             "written as a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PermalignError(f"{out} already exists; pass --force to overwrite it")
    if not out.parent.exists():
        raise PermalignError(f"directory {out.parent} does not exist; create it first")
    return out


def commit_folder(out: str | Path, files: Mapping[str, Callable[[Path], None]], *,
                  force: bool) -> Path:
    """Write ``files`` (name -> ``write(tmp_path)``) into the folder ``out``, each file
    atomically and in the given order, then remove weight files of an earlier run that the new
    set does not have. The one place a folder is committed."""
    if not distributed.is_main():  # rank 0 checks and writes (as output.write_file)
        return Path(out)
    out = check_folder_writable(out, force=force)
    with output.transaction(force=True) as txn:  # joins the command's own transaction
        txn.make_dir(out)
        for name, write in files.items():
            txn.stage(out / name, write)
        for old in out.iterdir():
            if old.is_file() and WEIGHT_FILE.match(old.name) and old.name not in files:
                txn.remove_on_commit(old)
    return out


def plan_shards(sizes: Mapping[str, int], max_bytes: int) -> list[list[str]]:
    """Names in order, cut into shards of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def model_card(*, title: str, summary: str, details: Mapping[str, Any],
               provenance: Mapping[str, Any] | None = None) -> str:
    """A short README.md: what was done, the details as a table, and the provenance."""
    lines = ["---", "library_name: transformers", "tags:", "- permalign", "- git-re-basin",
             "---", "", f"# {title}", "", summary, "", "## How it was made", "",
             "| | |", "|---|---|"]
    for key, value in details.items():
        lines.append(f"| {key} | {str(value).replace('|', '/')} |")
    if provenance:
        lines += ["", "## Provenance", "", "```json",
                  json.dumps(provenance, indent=1, default=str), "```"]
    lines += ["", "Written by permalign (Git Re-Basin: Ainsworth, Hayase, Srinivasa, ICLR "
              "2023). Load it with the class named in `config.json`, e.g. "
              "`AutoModelForCausalLM.from_pretrained(folder)`.", ""]
    return "\n".join(lines)


def save_folder(out: str | Path, state: Mapping[str, torch.Tensor], source: str | Path, *,
                card: str, names: Mapping[str, str] | None = None, force: bool = False,
                max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                layout: Mapping[str, torch.dtype] | None = None) -> Path:
    """Write ``state`` (a model's state dict) as a Hugging Face folder with ``source``'s
    config.

    ``names`` maps state-dict keys to stored names (:func:`stored_names` of the model; default:
    the same names). The tensors written are those stored in ``source`` (``layout``: stored
    name -> dtype, default :func:`stored_layout` of ``source``), each in its stored dtype, as
    ``model-0000i-of-0000n.safetensors`` shards of at most ``max_shard_bytes`` with
    ``model.safetensors.index.json``; ``config.json`` and the tokenizer and generation files
    are copied; ``card`` becomes ``README.md``. ``config.json`` is written last, so a folder
    left half-written by a crash does not load.

    Each shard's tensors are made only while that shard is written, so with a lazy ``state``
    (:mod:`permalign.lazy`: loaded or computed on access) at most one shard is in memory.
    """
    source = Path(source)
    layout = dict(layout if layout is not None else stored_layout(source))
    key_of = {stored: key for key, stored in (names or {k: k for k in state}).items()}
    missing = [k for k in layout if key_of.get(k) not in state]
    if missing:
        raise PermalignError(f"cannot write {out}: the state lacks {', '.join(missing[:3])}")
    sizes = {k: shape_of(state, key_of[k]).numel() * dtype.itemsize
             for k, dtype in layout.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    files: dict[str, Callable[[Path], None]] = {}
    weight_map: dict[str, str] = {}
    for i, names in enumerate(shards):
        file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        files[file_name] = _shard_writer(state, {k: (key_of[k], layout[k]) for k in names})
        weight_map.update(dict.fromkeys(names, file_name))
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    files[SAFE_INDEX] = _text_writer(json.dumps(index, indent=2))
    for name in COPIED_FILES:
        if (source / name).is_file():
            files[name] = _copy_writer(source / name)
    files["README.md"] = _text_writer(card)
    files[CONFIG] = _copy_writer(source / CONFIG)
    return commit_folder(out, files, force=force)


def _shard_writer(state: Mapping[str, torch.Tensor],
                  part: Mapping[str, tuple[str, torch.dtype]]) -> Callable[[Path], None]:
    """Write one shard: ``stored name -> (state key, dtype)``; its tensors are made (for a
    lazy ``state``: loaded or computed) only while the shard is written."""
    def write(tmp: Path) -> None:
        from safetensors.torch import save_file
        tensors = {name: state[key].detach().to(device="cpu", dtype=dtype).contiguous()
                   for name, (key, dtype) in part.items()}
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return write


def _text_writer(text: str) -> Callable[[Path], None]:
    return lambda tmp: tmp.write_text(text, encoding="utf-8")


def _copy_writer(path: Path) -> Callable[[Path], None]:
    return lambda tmp: tmp.write_bytes(path.read_bytes())
