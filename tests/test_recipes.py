"""Training recipes: seeded and reproducible, augmentation only where the data allow, settings
validated (library and CLI), and the conv recipe leaves the initialisation further behind."""
from __future__ import annotations

import math

import pytest
import torch

from permalign.augment import (Augmentation, augment_batch, augmentation_for, flip_allowed,
                               scaled_pad)
from permalign.cli import main
from permalign.data import Dataset
from permalign.diagnostics import distance_to_init
from permalign.errors import PermalignError
from permalign.models import build_model
from permalign.recipes import RECIPES, get_recipe, recipe_config
from permalign.workflow import train_seed

CONV = "vgg11:width=0.125,norm=bn"  # 8..64 channels: a small conv net for 8x8 inputs


def toy_images(name: str, shape=(3, 8, 8), n: int = 96, seed: int = 0) -> Dataset:
    """Random images with a learnable label (sign of the left-right asymmetry)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = (x[..., : shape[-1] // 2].mean((1, 2, 3)) > x[..., shape[-1] // 2:].mean((1, 2, 3)))
    return Dataset(name, x, y.long(), x[:32], y[:32].long(), 2)


def short(recipe: str, seed: int, **over):
    return recipe_config(recipe, seed=seed, epochs=2, batch_size=32, **over)


# ------------------------------------------------------------------ reproducibility
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("data_name", ["digits", "cifar10"])
def test_every_recipe_is_seeded_and_reproducible(recipe, data_name, digits):
    """Same seed -> identical weights (initialisation, shuffling and augmentation are all
    seeded); another seed -> different weights. cifar10-named toy data exercises the flip."""
    data = digits.subset(train=256) if data_name == "digits" else toy_images("cifar10")
    model = "mlp:depth=2,width=32" if recipe == "official-mlp" else CONV
    runs = [train_seed(model, data, short(recipe, seed), progress=False) for seed in (3, 3, 4)]
    first, again, other = (r.state for r in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
    # the initial state is the seed's initialisation, untouched by training
    fresh = build_model(model, data.input_shape, data.num_classes, seed=3).state_dict()
    assert all(torch.equal(runs[0].initial[k], fresh[k]) for k in fresh)
    assert any(not torch.equal(runs[0].initial[k], first[k]) for k in fresh)
    assert len(runs[0].losses) == 2 and all(math.isfinite(v) for v in runs[0].losses)


def test_recipes_state_their_source_and_settings():
    conv, mlp, quick = (get_recipe(n) for n in ("official-conv", "official-mlp", "quick-adam"))
    assert all(r.source and r.name in r.describe() for r in RECIPES.values())
    assert (conv.optimizer, conv.lr, conv.momentum, conv.weight_decay, conv.batch_size,
            conv.schedule, conv.augment) == ("sgd", 0.1, 0.9, 5e-4, 100, "cosine", True)
    assert (mlp.optimizer, mlp.lr, mlp.batch_size, mlp.schedule, mlp.augment) == (
        "adam", 1e-3, 500, "constant", False)
    assert (quick.optimizer, quick.lr, quick.batch_size) == ("adam", 1e-3, 128)
    assert quick.config(dataset="fashion-mnist").epochs == 5
    assert quick.config(dataset="digits").epochs == 30


def test_overrides_replace_recipe_settings_and_none_keeps_them():
    cfg = recipe_config("official-conv", lr=0.05, batch_size=None, weight_decay=0.0, seed=7)
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.seed, cfg.recipe) == (
        0.05, 100, 0.0, 7, "official-conv")
    with pytest.raises(PermalignError, match="unknown training setting"):
        recipe_config("quick-adam", learning_rate=0.1)
    with pytest.raises(PermalignError, match="unknown recipe"):
        get_recipe("sgd-fast")


@pytest.mark.parametrize("setting, value", [
    ("lr", 0.0), ("lr", -1e-3), ("lr", float("nan")), ("lr", float("inf")),
    ("batch_size", 0), ("weight_decay", -1e-4), ("weight_decay", float("nan")),
    ("epochs", -1), ("optimizer", "lbfgs"), ("schedule", "step")])
def test_bad_settings_are_one_line_errors(setting, value):
    with pytest.raises(PermalignError) as info:
        recipe_config("quick-adam", **{setting: value})
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ augmentation
def test_augmentation_only_where_allowed():
    assert not flip_allowed("digits") and not flip_allowed("mnist")
    assert flip_allowed("fashion-mnist") and flip_allowed("cifar10") and flip_allowed("CIFAR-100")
    assert augmentation_for("digits", (1, 8, 8), enabled=True) == Augmentation(1, False)
    assert augmentation_for("mnist", (1, 28, 28), enabled=True) == Augmentation(4, False)
    assert augmentation_for("fashion-mnist", (1, 14, 14), enabled=True) == Augmentation(2, True)
    assert augmentation_for("cifar10", (3, 32, 32), enabled=True) == Augmentation(4, True)
    assert not augmentation_for("cifar10", (3, 32, 32), enabled=False).active
    assert not augmentation_for("cifar10", (64,), enabled=True).active  # not an image
    assert [scaled_pad(h) for h in (32, 28, 14, 8, 4)] == [4, 4, 2, 1, 1]


def _crops(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image[None], (pad,) * 4, mode="reflect")[0]
    h, w = image.shape[1:]
    return [padded[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]


@pytest.mark.parametrize("flip", [False, True])
def test_augmented_images_are_crops_and_flips_only_when_allowed(flip):
    x = toy_images("cifar10", n=64).train_x
    out = augment_batch(x, Augmentation(crop_pad=1, flip=flip), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    plain = flipped = 0
    for orig, new in zip(x, out):
        if any(torch.equal(new, c) for c in _crops(orig, 1)):
            plain += 1
        elif any(torch.equal(new, c) for c in _crops(orig.flip(-1), 1)):
            flipped += 1
    assert plain + flipped == len(x)  # every output is a (possibly mirrored) crop
    assert (flipped > 10) if flip else (flipped == 0)
    assert not torch.equal(out, x)  # something moved


def test_trainer_augments_only_with_an_augmenting_recipe(digits):
    """What the model sees: exact training rows under quick-adam, shifted ones (never
    mirrored, digits) under official-conv."""
    data = digits.subset(train=64)
    seen: dict[str, list[torch.Tensor]] = {}
    for recipe in ("quick-adam", "official-conv"):
        model = build_model(CONV, data.input_shape, 10, seed=0)
        model.register_forward_pre_hook(lambda _m, args, r=recipe: seen.setdefault(r, []).append(
            args[0].detach().clone()))
        from permalign.train import train_model
        train_model(model, data, recipe_config(recipe, epochs=1, batch_size=64), progress=False)
    rows = {tuple(r.flatten().tolist()) for r in data.train_x}
    quick = torch.cat(seen["quick-adam"])
    conv = torch.cat(seen["official-conv"])
    assert all(tuple(r.flatten().tolist()) in rows for r in quick)
    assert sum(tuple(r.flatten().tolist()) in rows for r in conv) < len(conv) // 2
    originals = {tuple(r.flatten().tolist()): r for r in data.train_x}
    # each augmented image is a crop of some training image, never of a mirrored one
    for img in conv[:16]:
        assert any(any(torch.equal(img, c) for c in _crops(o, 1)) for o in originals.values())


# ------------------------------------------------------------------ moving away from the init
def test_conv_recipe_moves_conv_weights_further_than_quick_adam(digits):
    """Measured, not assumed: after the same number of epochs on the same data, SGD with
    momentum, lr 0.1 and weight decay leaves its conv weights at a lower cosine to their
    initialisation than the quick Adam recipe does."""
    data = digits.subset(train=512)
    conv_weights = lambda key, t: t.dim() == 4  # noqa: E731
    cosines = {}
    for recipe in ("quick-adam", "official-conv"):
        run = train_seed(CONV, data, recipe_config(recipe, epochs=3, seed=0), progress=False)
        cosines[recipe] = distance_to_init(run.state, run.initial, select=conv_weights).cosine
    assert cosines["official-conv"] < cosines["quick-adam"], cosines


# ------------------------------------------------------------------ CLI
def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flag, value", [
    ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "fast"),
    ("--batch-size", "0"), ("--batch-size", "-5"), ("--batch-size", "2.5"),
    ("--weight-decay", "-1e-4"), ("--weight-decay", "nan"), ("--epochs", "-1"),
    ("--train-subset", "0"), ("--recipe", "nosuch"), ("--optimizer", "lbfgs")])
def test_train_flags_are_validated(tmp_path, capsys, flag, value):
    code, _, err = run_cli(capsys, "train", "--model", "mlp:depth=1,width=8", flag, value,
                           "--out", tmp_path / "m.pt", "--quiet")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and flag in err
    assert not (tmp_path / "m.pt").exists()


def test_train_with_recipe_and_overrides_saves_model_and_init(tmp_path, capsys):
    out, init = tmp_path / "m.pt", tmp_path / "init.safetensors"
    code, text, err = run_cli(capsys, "train", "--model", CONV, "--recipe", "official-conv",
                              "--epochs", 1, "--lr", 0.05, "--batch-size", 64,
                              "--train-subset", 200, "--seed", 5, "--out", out,
                              "--save-init", init, "--quiet")
    assert code == 0, err
    assert "official-conv" in text and "lr 0.05" in text and "batch 64" in text
    assert "random crop (pad 1)" in text and "flip" not in text  # digits: no flip
    assert "cosine to their initialisation" in text
    from permalign.io import load_state_dict
    fresh = build_model(CONV, (1, 8, 8), 10, seed=5).state_dict()
    saved_init, trained = load_state_dict(init), load_state_dict(out)
    assert all(torch.equal(saved_init[k], fresh[k]) for k in fresh)
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh)
