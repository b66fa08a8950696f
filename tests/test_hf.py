"""Hugging Face folders in and out (``--model hf:FOLDER``) and language-model evaluation
(``--dataset text:FILE``), on tiny random models saved locally with ``save_pretrained``."""
from __future__ import annotations

import json

import pytest
import torch

from permalign import hf
from permalign.cli import main
from permalign.data import BYTE_VOCAB, load_text
from permalign.errors import DataError, PermalignError
from permalign.evaluate import evaluate
from permalign.infer import infer_spec
from permalign.permutation import apply_permutation, random_permutation

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it "
        "was the age of foolishness, it was the epoch of belief, it was the epoch of "
        "incredulity. ") * 12


def configs():
    """Tiny configs of three families: a GPT-2 and a Llama (grouped-query attention) causal
    LM with a 256-token vocabulary, and a ViT classifier for 1x8x8 digits."""
    return {
        "gpt2": transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=BYTE_VOCAB,
                                        n_positions=32, bos_token_id=0, eos_token_id=0),
        "llama": transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          intermediate_size=64, vocab_size=BYTE_VOCAB,
                                          max_position_embeddings=32, bos_token_id=0,
                                          eos_token_id=0),
        "mixtral": transformers.MixtralConfig(num_hidden_layers=2, hidden_size=32,
                                              num_attention_heads=4, num_key_value_heads=2,
                                              intermediate_size=32, num_local_experts=4,
                                              num_experts_per_tok=2, vocab_size=BYTE_VOCAB,
                                              max_position_embeddings=32, bos_token_id=0,
                                              eos_token_id=0),
        "vit": transformers.ViTConfig(num_hidden_layers=2, hidden_size=32,
                                      num_attention_heads=4, intermediate_size=64,
                                      image_size=8, patch_size=4, num_channels=1,
                                      num_labels=10),
    }


CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
           "mixtral": "MixtralForCausalLM", "vit": "ViTForImageClassification"}


def save_random(folder, name: str, seed: int):
    torch.manual_seed(seed)
    model = getattr(transformers, CLASSES[name])(configs()[name]).eval()
    model.save_pretrained(folder)
    return model


def load(folder):
    """A folder loaded the way a user would: from_pretrained of its architecture."""
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(folder).eval()


def call(model, name: str):
    g = torch.Generator().manual_seed(5)
    if name == "vit":
        return model(torch.randn(3, 1, 8, 8, generator=g)).logits
    return model(torch.randint(0, BYTE_VOCAB, (3, 12), generator=g)).logits


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``folders(name)`` -> (A folder, B folder): two random models from seeds 0 and 1."""
    root = tmp_path_factory.mktemp("hf")
    made = {}

    def get(name):
        if name not in made:
            made[name] = (root / f"{name}-a", root / f"{name}-b")
            for seed, folder in enumerate(made[name]):
                save_random(folder, name, seed)
        return made[name]
    return get


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", ["gpt2", "llama", "mixtral", "vit"])
def test_align_writes_a_folder_that_from_pretrained_loads(folders, tmp_path, capsys, name):
    """align A B --model hf:A writes a complete folder; loaded with from_pretrained it gives
    B's outputs (a permutation changes no function) with weights moved towards A's."""
    a, b = folders(name)
    out = tmp_path / "aligned"
    code = main(["align", str(a), str(b), "--model", f"hf:{a}", "--out", str(out),
                 "--perm-out", str(tmp_path / "perm.json"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "README.md", "model.safetensors.index.json"} <= files
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) <= files
    assert json.loads((out / "config.json").read_text()) == \
        json.loads((a / "config.json").read_text())
    card = (out / "README.md").read_text()
    assert "weight matching" in card and str(b) in card and '"command"' in card
    model_a, model_b, aligned = load(a), load(b), load(out)
    with torch.no_grad():
        torch.testing.assert_close(call(aligned, name), call(model_b, name), atol=1e-5,
                                   rtol=1e-4)
    wa, wb, wc = flat(model_a), flat(model_b), flat(aligned)
    assert not torch.equal(wb, wc)  # the units did move
    assert torch.dot(wa, wc) > torch.dot(wa, wb)  # towards A: the objective grew
    assert len(json.loads((tmp_path / "perm.json").read_text())["perm"]) >= 5


def test_sharded_and_bin_folders_read_the_same_tensors(folders, tmp_path):
    """Sharded safetensors (index) and pytorch_model.bin folders yield the model's tensors;
    without --model the first checkpoint's folder is the model."""
    a, b = folders("gpt2")
    model = load(a)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert len(hf.weight_files(sharded)) > 2
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_bytes((a / "config.json").read_bytes())
    torch.save(dict(hf.iter_tensors(a)), binary / "pytorch_model.bin")
    stored = dict(hf.iter_tensors(a))
    for folder in (sharded, binary):
        got = dict(hf.iter_tensors(folder))
        assert got.keys() == stored.keys()
        assert all(torch.equal(got[k], stored[k]) for k in stored)
    # the tied head is not stored but is filled in from the embedding
    state = hf.load_state(binary, model)
    assert "lm_head.weight" not in stored and torch.equal(state["lm_head.weight"],
                                                          stored["transformer.wte.weight"])
    out = tmp_path / "out"
    assert main(["align", str(sharded), str(binary), "--out", str(out), "--quiet"]) == 0
    assert torch.equal(flat(load(out)), flat(model))  # A aligned to itself stays A


def test_save_folder_shards_and_keeps_stored_names_and_dtypes(folders, tmp_path):
    a, _ = folders("llama")
    model = hf.build_model(a)
    spec = infer_spec(model, *hf.example_inputs(model)[:1],
                      example_kwargs=hf.example_inputs(model)[1])
    perm = random_permutation(spec, torch.Generator().manual_seed(0))
    state = apply_permutation(spec, perm, model.state_dict())
    layout = {k: torch.float16 if k.endswith("norm.weight") else dtype
              for k, dtype in hf.stored_layout(a).items()}
    names = hf.stored_names(model)
    out = hf.save_folder(tmp_path / "out", state, a, card="# test\n", max_shard_bytes=8_000,
                         layout=layout, names=names)
    files = hf.weight_files(out)
    assert len(files) > 3 and all(f.name.startswith("model-000") for f in files)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    stored = dict(hf.iter_tensors(out))
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in stored.values())
    assert list(stored) == list(layout)
    assert all(stored[k].dtype == dtype for k, dtype in layout.items())
    with torch.no_grad():
        torch.testing.assert_close(call(load(out).float(), "llama"), call(model, "llama"),
                                   atol=2e-3, rtol=1e-2)  # float16 norms: not bit-exact
    with pytest.raises(PermalignError, match="--force"):
        hf.save_folder(tmp_path / "out", state, a, card="", names=names)
    # --force replaces the folder; stale shards of the earlier, more sharded run go
    hf.save_folder(tmp_path / "out", state, a, card="", names=names, force=True)
    assert [f.name for f in hf.weight_files(out)] == ["model-00001-of-00001.safetensors"]
    assert not any(p.name.startswith("model-0000") and "of-00001" not in p.name
                   for p in out.iterdir())


def test_merge_of_permuted_copies_gives_the_model_back(folders, tmp_path, capsys):
    """merge A pi(A) --model hf:A writes a folder computing A's function."""
    a, _ = folders("gpt2")
    model = hf.build_model(a)
    args, kwargs = hf.example_inputs(model)
    spec = infer_spec(model, args, example_kwargs=kwargs)
    shuffled = apply_permutation(spec, random_permutation(spec, torch.Generator().manual_seed(1)),
                                 model.state_dict())
    copy = hf.save_folder(tmp_path / "shuffled", shuffled, a, card="",
                          names=hf.stored_names(model))
    out = tmp_path / "merged"
    code = main(["merge", str(a), str(copy), "--model", f"hf:{a}", "--out", str(out),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "2 models merged" in (out / "README.md").read_text()
    with torch.no_grad():
        torch.testing.assert_close(call(load(out), "gpt2"), call(load(a), "gpt2"), atol=1e-4,
                                   rtol=1e-3)


def test_mixture_of_experts_folder_in_its_stored_layout(folders, tmp_path, capsys):
    """Mixtral stores one tensor per expert (``block_sparse_moe.experts.N.w1``) where the
    model stacks them: the folder is read through transformers' conversion and written back in
    the stored layout. A copy with its experts shuffled (a carrier group) merges with the
    original into the original's function; --low-memory refuses the layout in one line."""
    a, _ = folders("mixtral")
    model = hf.build_model(a)
    assert hf.converts(model)
    args, kwargs = hf.example_inputs(model)
    spec = infer_spec(model, args, example_kwargs=kwargs)
    assert len(spec.carried()) == 2  # the experts of both layers move with their routers
    planted = random_permutation(spec, torch.Generator().manual_seed(1))
    for carrier in spec.carried():
        planted[carrier] = torch.roll(planted[carrier], 1)  # surely moved
    shuffled = apply_permutation(spec, planted, model.state_dict())
    copy = hf.save_folder(tmp_path / "shuffled", hf.stored_state(model, shuffled), a, card="")
    stored = set(hf.stored_layout(a))
    assert stored == set(hf.stored_layout(copy))
    assert any(".experts.3.w1." in name for name in stored)
    with torch.no_grad():
        torch.testing.assert_close(call(load(copy), "mixtral"), call(load(a), "mixtral"),
                                   atol=1e-5, rtol=1e-4)
    out = tmp_path / "merged"
    code = main(["merge", str(a), str(copy), "--model", f"hf:{a}", "--out", str(out),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    with torch.no_grad():  # (the merge may keep either model's unit order)
        torch.testing.assert_close(call(load(out), "mixtral"), call(load(a), "mixtral"),
                                   atol=1e-5, rtol=1e-4)
    code = main(["align", str(a), str(copy), "--model", f"hf:{a}", "--out",
                 str(tmp_path / "lazy"), "--low-memory", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--low-memory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lazy").exists()
    import permalign.cli.inputs as cli_inputs  # chosen by size, not asked for: read eagerly
    saved, cli_inputs.LOW_MEMORY_BYTES = cli_inputs.LOW_MEMORY_BYTES, 0
    try:
        code = main(["align", str(a), str(copy), "--model", f"hf:{a}", "--out",
                     str(tmp_path / "auto"), "--quiet"])
    finally:
        cli_inputs.LOW_MEMORY_BYTES = saved
    assert code == 0, capsys.readouterr().err
    with torch.no_grad():
        torch.testing.assert_close(call(load(tmp_path / "auto"), "mixtral"),
                                   call(load(a), "mixtral"), atol=1e-5, rtol=1e-4)


def test_example_inputs_follow_the_config(folders):
    for name, key in (("gpt2", "input_ids"), ("vit", "pixel_values")):
        a, _ = folders(name)
        model = hf.build_model(a)
        args, kwargs = hf.example_inputs(model)
        assert args == () and key in kwargs
        if key == "input_ids":
            assert kwargs[key].max() < BYTE_VOCAB and kwargs["use_cache"] is False
        else:
            assert kwargs[key].shape == (2, 1, 8, 8)
        with torch.no_grad():
            model(*args, **kwargs)


def test_audio_example_inputs():
    """Whisper (input features, encoder-decoder) and Wav2Vec2 (raw audio) example inputs run."""
    torch.manual_seed(0)
    whisper = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
        max_source_positions=16, max_target_positions=16, vocab_size=64, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)).eval()
    args, kwargs = hf.example_inputs(whisper)
    assert kwargs["input_features"].shape == (2, 8, 32)
    assert kwargs["decoder_input_ids"][:, 0].eq(whisper.config.decoder_start_token_id).all()
    wav = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2, vocab_size=12)).eval()
    wav_args, wav_kwargs = hf.example_inputs(wav)
    with torch.no_grad():
        whisper(*args, **kwargs)
        assert wav(*wav_args, **wav_kwargs).logits.shape[0] == 2


# ------------------------------------------------------------------ text:FILE
@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "tale.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_text_loss_is_next_token_cross_entropy(folders, text_file, tmp_path, capsys):
    """interpolate on text:FILE: the endpoint's test loss is the next-token cross-entropy of
    the file's last windows (built here from its bytes), and agrees with the loss transformers
    computes itself (labels = inputs, which scores all but the last position)."""
    a, b = folders("gpt2")
    out = tmp_path / "curve.json"
    code = main(["interpolate", str(a), str(b), "--model", f"hf:{a}", "--dataset",
                 f"text:{text_file}", "--points", "3", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    curve = json.loads(out.read_text())["curve"]
    stream = torch.tensor(list(TEXT.encode("utf-8")))
    windows = stream[:len(stream) // 33 * 33].view(-1, 33)  # byte-level: no tokenizer in a
    test = windows[len(windows) - round(len(windows) * 0.1):]  # the last 10%
    model = load(a)
    with torch.no_grad():
        logits = model(test[:, :-1]).logits  # (n, 32, 256)
        per_position = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), test[:, 1:], reduction="none")  # (n, 32)
        own = model(test[:, :-1], labels=test[:, :-1]).loss.item()
    assert own == pytest.approx(per_position[:, :-1].mean().item(), rel=1e-5)
    assert curve["test_loss"][0] == pytest.approx(per_position.mean().item(), rel=1e-5)
    accuracy = (logits.argmax(-1) == test[:, 1:]).float().mean().item()
    assert curve["test_acc"][0] == pytest.approx(accuracy)
    assert len(curve["lambdas"]) == 3


def test_text_uses_the_folders_tokenizer(folders, text_file, tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    a, _ = folders("gpt2")
    folder = tmp_path / "with-tokenizer"
    load(a).save_pretrained(folder)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT], tokenizers.trainers.WordLevelTrainer(
        special_tokens=["[UNK]"]))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]"
                                         ).save_pretrained(folder)
    tokenize = hf.tokenizer(folder)
    ids = tokenize(TEXT)
    assert len(ids) < len(TEXT.encode()) / 3  # words, not bytes
    data = load_text(f"text:{text_file}", tokenize=tokenize, vocab_size=BYTE_VOCAB,
                     block_size=16)
    assert data.train_x[0].tolist() == ids[:16] and data.train_y[0].tolist() == ids[1:17]
    assert data.task == "next-token" and data.num_classes == BYTE_VOCAB
    loss, acc = evaluate(load(folder), data.test_x, data.test_y, task=data.task)
    assert 0 < loss < 10 and 0 <= acc <= 1


def test_byte_level_fallback_and_its_limits(text_file, tmp_path):
    data = load_text(f"text:{text_file}", block_size=10, test_fraction=0.25)
    stream = list(TEXT.encode("utf-8"))
    assert data.train_x[1].tolist() == stream[11:21] and data.train_y[1].tolist() == stream[12:22]
    windows = len(stream) // 11
    assert len(data.train_x) + len(data.test_x) == windows
    assert len(data.test_x) == round(windows * 0.25)
    assert data.input_shape == (10,) and data.num_classes == BYTE_VOCAB
    with pytest.raises(DataError, match="vocabulary of 256"):
        load_text(f"text:{text_file}", vocab_size=100)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(DataError, match="at least"):
        load_text(f"text:{short}")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="UTF-8"):
        load_text(f"text:{binary}")


def test_bad_folders_are_one_line_errors(folders, tmp_path, capsys):
    a, b = folders("gpt2")
    vit, _ = folders("vit")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((a / "config.json").read_bytes())
    cases = [
        (["spec", "--model", f"hf:{empty}"], "has no config.json"),
        (["align", str(a), str(no_weights), "--out", str(tmp_path / "o")], "holds no weights"),
        (["align", str(a), str(vit), "--out", str(tmp_path / "o")], "does not fit the model"),
        (["align", str(empty), str(b), "--out", str(tmp_path / "o")], "--model is required"),
        (["interpolate", str(vit), str(vit), "--dataset", f"text:{tmp_path}/none.txt"],
         "not a language model"),
        (["interpolate", str(a), str(a), "--dataset", f"text:{tmp_path}/none.txt"],
         "cannot read text file"),
        (["interpolate", "x.pt", "y.pt", "--model", "mlp", "--dataset", "text:t.txt"],
         "needs a language model"),
    ]
    for argv, message in cases:
        assert main(argv + ["--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # an existing output folder is refused before any work
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["align", str(a), str(b), "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
