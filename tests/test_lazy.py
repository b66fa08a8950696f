"""Large models within memory: lazy state dicts, bounded-memory weight matching, streaming
permute/lerp/write, and ``align --low-memory`` giving the eager path's bits."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from permalign import hf, lazy
from permalign.cli import inputs as cli_inputs
from permalign.cli import main
from permalign.infer import infer_spec
from permalign.lazy import LazyStateDict, LazyView, shape_of
from permalign.match.weight import matching_objective, weight_matching
from permalign.permutation import apply_permutation, random_permutation
from permalign.statedict import lerp_state, lerp_view, permuted_view
from permalign.zoo import build

from test_hf import save_random

transformers = pytest.importorskip("transformers")

ZOO = [("mlp:depth=3,width=32", (1, 8, 8)), ("vgg11:width=0.125,norm=ln", (1, 8, 8)),
       ("resnet20:width=1,norm=bn", (1, 8, 8))]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``folders(name)`` -> (A folder, B folder): test_hf's tiny random models, seeds 0, 1."""
    root = tmp_path_factory.mktemp("lazy-hf")

    def get(name):
        made = (root / f"{name}-a", root / f"{name}-b")
        if not made[0].exists():
            for seed, folder in enumerate(made):
                save_random(folder, name, seed)
        return made
    return get


def pair(name, shape):
    torch.manual_seed(0)
    model, spec = build(name, input_shape=shape, num_classes=10)
    torch.manual_seed(1)
    other, _ = build(name, input_shape=shape, num_classes=10)
    return spec, model.state_dict(), other.state_dict()


def to_file(state, path) -> LazyStateDict:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return LazyStateDict([path])


class Counting(LazyStateDict):
    """Counts the tensors it loads."""

    loads = 0

    def load(self, key):
        Counting.loads += 1
        return super().load(key)


def test_lazy_state_dict_knows_shapes_without_loading_and_caches_nothing(tmp_path):
    state = {"w": torch.randn(3, 4), "b": torch.arange(5), "h": torch.randn(2).half()}
    save_file(state, str(tmp_path / "m.safetensors"))
    Counting.loads = 0
    view = Counting([tmp_path / "m.safetensors"])
    assert set(view) == set(state) and len(view) == 3 and "w" in view and "x" not in view
    assert view.shape("w") == (3, 4) and view.dtype("b") == torch.int64
    assert view.dtype("h") == torch.float16 and view.nbytes("w") == 48
    assert shape_of(view, "w") == (3, 4) and lazy.stubs(view)["w"].shape == (3, 4)
    assert Counting.loads == 0  # nothing read so far
    first, second = view["w"], view["w"]
    assert Counting.loads == 2 and first is not second  # read on every access, not kept
    assert all(torch.equal(view[k], state[k]) for k in state)
    with pytest.raises(KeyError):
        view["x"]
    cast = LazyStateDict([tmp_path / "m.safetensors"], cast={"h": torch.float32})
    assert cast.dtype("h") == torch.float32 and cast["h"].dtype == torch.float32


def test_open_lazy_reads_sharded_folders_like_iter_tensors(folders, tmp_path):
    a, _ = folders("gpt2")
    sharded = tmp_path / "sharded"
    hf.build_model(a).save_pretrained(sharded, max_shard_size="20KB")
    assert len(hf.weight_files(sharded)) > 2
    stored = dict(hf.iter_tensors(a))
    for source in (sharded, f"hf:{sharded}", a / "model.safetensors"):
        view = hf.open_lazy(source)
        assert set(view) == set(stored)
        assert all(torch.equal(view[k], stored[k]) for k in stored)
    model = hf.build_model(a)
    eager, lazy_state = hf.load_state(sharded, model), hf.lazy_state(sharded, model)
    assert list(lazy_state) == list(eager)  # the model's keys, the tied head filled in
    assert all(torch.equal(lazy_state[k], eager[k]) for k in eager)


@pytest.mark.parametrize("name,shape", ZOO)
def test_bounded_matching_gives_the_cached_permutation(name, shape, tmp_path):
    spec, a, b = pair(name, shape)
    cached = weight_matching(spec, a, b, init=None, memory="cached")
    bounded = weight_matching(spec, a, b, init=None, memory="bounded")
    lazy_a, lazy_b = to_file(a, tmp_path / "a.safetensors"), to_file(b, tmp_path / "b.safetensors")
    auto = weight_matching(spec, lazy_a, lazy_b, init="auto")  # lazy inputs: bounded
    eager_auto = weight_matching(spec, a, b, init="auto")
    assert bounded.info["memory"] == auto.info["memory"] == "bounded"
    assert cached.info["memory"] == eager_auto.info["memory"] == "cached"
    for g in spec.groups:
        assert torch.equal(cached.perm[g], bounded.perm[g])
        assert torch.equal(auto.perm[g], eager_auto.perm[g])
    assert len(cached.history) == len(bounded.history) > 1  # it did move
    assert bounded.history[-1] == pytest.approx(cached.history[-1], rel=1e-6)
    assert matching_objective(spec, lazy_a, lazy_b, bounded.perm) == \
        matching_objective(spec, a, b, bounded.perm)


def test_bounded_matching_with_restricted_members(tmp_path):
    """Members restricted to one expert's slice: the bounded mode gives the cached
    permutations, and the permuted view applies them as apply_permutation does."""
    from test_experts import toy_spec, toy_state
    g = torch.Generator().manual_seed(2)
    spec = toy_spec()
    for trial in range(3):
        a, b = toy_state(g), toy_state(g)
        lazy_b = to_file(b, tmp_path / f"b{trial}.safetensors")
        cached = weight_matching(spec, a, b, seed=trial, init=None)
        bounded = weight_matching(spec, a, lazy_b, seed=trial, init=None)
        assert bounded.info["memory"] == "bounded"
        assert all(torch.equal(cached.perm[n], bounded.perm[n]) for n in spec.groups)
        eager = apply_permutation(spec, bounded.perm, b)
        view = permuted_view(spec, bounded.perm, lazy_b)
        assert all(torch.equal(view[k], eager[k]) for k in eager)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_bounded_matching_on_a_transformers_model(folders, name):
    a, b = folders(name)
    model = hf.build_model(a)
    args, kwargs = hf.example_inputs(model)
    spec = infer_spec(model, args, example_kwargs=kwargs)
    state_a, state_b = hf.lazy_state(a, model), hf.lazy_state(b, model)
    bounded = weight_matching(spec, state_a, state_b, init=None)
    cached = weight_matching(spec, hf.load_state(a, model), hf.load_state(b, model), init=None)
    assert bounded.info["memory"] == "bounded"
    assert any(not torch.equal(p, torch.arange(len(p))) for p in cached.perm.values())
    assert all(torch.equal(bounded.perm[g], cached.perm[g]) for g in spec.groups)


def test_views_give_the_eager_bits(tmp_path):
    spec, a, b = pair("resnet20:width=1,norm=bn", (1, 8, 8))
    perm = random_permutation(spec, torch.Generator().manual_seed(3))
    lazy_b = to_file(b, tmp_path / "b.safetensors")
    eager = apply_permutation(spec, perm, b)
    view = permuted_view(spec, perm, lazy_b)
    assert set(view) == set(eager) and view.shape("stem.weight") == eager["stem.weight"].shape
    assert all(torch.equal(view[k], eager[k]) for k in eager)
    mixed = lerp_view(a, view, 0.3)
    reference = lerp_state(a, eager, 0.3)
    assert all(torch.equal(mixed[k], reference[k]) for k in reference)


def test_save_folder_streams_shards_and_leaves_nothing_on_failure(folders, tmp_path):
    """A lazy state is written shard by shard (the same files as from the eager dict); a
    failure while a later shard is made leaves no folder and no temporary file."""
    a, _ = folders("llama")
    model = hf.build_model(a)
    state = hf.load_state(a, model)
    names = hf.stored_names(model)
    made: list[str] = []

    def make(key):
        made.append(key)
        return state[key]
    view = LazyView(make, {k: v.shape for k, v in state.items()},
                    {k: v.dtype for k, v in state.items()})
    eager_out = hf.save_folder(tmp_path / "eager", state, a, card="", names=names,
                               max_shard_bytes=8_000)
    lazy_out = hf.save_folder(tmp_path / "lazy", view, a, card="", names=names,
                              max_shard_bytes=8_000)
    shards = hf.weight_files(eager_out)
    assert len(shards) > 3
    for path in shards:
        assert (lazy_out / path.name).read_bytes() == path.read_bytes()
    assert len(made) == len(set(made)) == len(hf.stored_layout(a))  # each made once

    def broken(key):
        if len(made) > 2 * len(state) // 3:
            raise KeyboardInterrupt
        return make(key)
    made.clear()
    with pytest.raises(KeyboardInterrupt):
        hf.save_folder(tmp_path / "broken", LazyView(broken, view._shapes, view._dtypes), a,
                       card="", names=names, max_shard_bytes=8_000)
    assert not (tmp_path / "broken").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eager", "lazy"]


def weights(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if p.name.endswith(".safetensors") or p.name.endswith(".index.json")}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_align_low_memory_writes_the_eager_bits(folders, tmp_path, capsys, name, monkeypatch):
    a, b = folders(name)
    runs = {}
    for label, flags in (("eager", ["--no-low-memory"]), ("lazy", ["--low-memory"]),
                         ("auto", [])):
        if label == "auto":
            monkeypatch.setattr(cli_inputs, "LOW_MEMORY_BYTES", 0)  # anything is "large"
        out, perm = tmp_path / label, tmp_path / f"{label}.json"
        assert main(["align", f"hf:{a}", f"hf:{b}", "--out", str(out), "--perm-out",
                     str(perm), "--quiet", *flags]) == 0, capsys.readouterr().err
        runs[label] = (weights(out), json.loads(perm.read_text()))
    eager_files, eager_record = runs["eager"]
    assert eager_record["info"]["memory"] == "cached"
    for label in ("lazy", "auto"):
        files, record = runs[label]
        assert record["info"]["memory"] == "bounded"
        assert record["perm"] == eager_record["perm"]
        assert files == eager_files  # bit for bit
    assert record["objective_change"] == eager_record["objective_change"]


def test_low_memory_refusals_are_one_line(folders, tmp_path, capsys):
    a, b = folders("gpt2")
    model = hf.build_model(a)
    pt = tmp_path / "a.pt"
    torch.save(model.state_dict(), pt)
    cases = [(["align", str(pt), str(pt), "--model", f"hf:{a}", "--low-memory"],
              "safetensors checkpoints only"),
             (["align", str(a), str(b), "--low-memory", "--method", "activation",
               "--dataset", "digits"], "weight matching only"),
             (["align", str(a), str(b), "--low-memory", "--init", "activation"],
              "--init activation")]
    for argv, words in cases:
        assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,shape", ZOO[:2])
def test_merge_many_of_lazy_files_equals_the_eager_merge(tmp_path, name, shape):
    """MergeMany over safetensors read lazily: same permutations, same merged bits, and only
    views (nothing whole) in the result."""
    from permalign.merge import merge_many
    spec, a, b = pair(name, shape)
    torch.manual_seed(2)
    c, _ = build(name, input_shape=shape, num_classes=10)
    states = [a, b, c.state_dict()]
    eager = merge_many(spec, states, seed=3)
    files = [to_file(s, tmp_path / f"{i}.safetensors") for i, s in enumerate(states)]
    lazy_result = merge_many(spec, files, seed=3)
    assert lazy.is_lazy(lazy_result.merged)
    assert lazy_result.rounds == eager.rounds and lazy_result.history == eager.history
    for p, q in zip(lazy_result.perms, eager.perms, strict=True):
        assert all(torch.equal(p[k], q[k]) for k in q)
    assert all(torch.equal(lazy_result.merged[k], eager.merged[k]) for k in eager.merged)


def test_merge_low_memory_writes_the_eager_bits(folders, tmp_path, capsys):
    a, b = folders("gpt2")
    runs = {}
    for label in ("eager", "lazy"):
        out = tmp_path / label
        flag = "--low-memory" if label == "lazy" else "--no-low-memory"
        assert main(["merge", f"hf:{a}", f"hf:{b}", f"hf:{a}", "--out", str(out), "--quiet",
                     flag]) == 0, capsys.readouterr().err
        runs[label] = weights(out)
    assert runs["lazy"] == runs["eager"]
