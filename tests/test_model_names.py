"""``--model timm:NAME`` and ``--model torchvision:NAME``.

The project's venv (torch 2.13.0 CPU) cannot import PyPI's torchvision (it is built against
another torch), so the success paths skip there with that reason; run this file with a venv
holding torch 2.14.1, torchvision 0.29.1 and timm to exercise them (the README says how).
The one-line error for a package that cannot be imported is tested everywhere.
"""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

from permalign.cli import main
from permalign.models import build_model, model_kind

SHAPE = "3,32,32"


def import_or_skip(package: str):
    try:
        return importlib.import_module(package)
    except Exception as exc:  # a torchvision built for another torch raises RuntimeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        pytest.skip(f"{package} cannot be imported in this environment ({type(exc).__name__}: "
                    f"{first}); run this file in a venv with torch 2.14.1 + torchvision 0.29.1 "
                    "+ timm")


def test_kinds_are_told_apart():
    assert model_kind("timm:resnet18") == "timm"
    assert model_kind("torchvision:resnet18") == "torchvision"
    assert model_kind("hf:models/gpt2") == "hf"
    assert model_kind("mypackage.models:build") == "factory"
    assert model_kind("mlp:depth=2") == "zoo"


@pytest.mark.parametrize("package", ["timm", "torchvision"])
def test_a_package_that_cannot_import_is_a_one_line_error(monkeypatch, capsys, package):
    monkeypatch.setitem(sys.modules, package, None)  # importing it now raises ImportError
    code = main(["spec", "--model", f"{package}:resnet18", "--input-shape", SHAPE])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"needs the {package} package, which cannot be imported here" in err


def align_round_trip(model_string: str, tmp_path, capsys) -> None:
    """Two random inits of the model; B aligned to A computes B's function, closer to A."""
    states = []
    for seed in (0, 1):
        model = build_model(model_string, (3, 32, 32), 10, seed=seed)
        states.append(model.state_dict())
        torch.save(model.state_dict(), tmp_path / f"{seed}.pt")
    code = main(["align", str(tmp_path / "0.pt"), str(tmp_path / "1.pt"), "--model",
                 model_string, "--input-shape", SHAPE, "--out", str(tmp_path / "c.pt"),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    model_b = build_model(model_string, (3, 32, 32), 10).eval()
    model_b.load_state_dict(states[1])
    aligned = build_model(model_string, (3, 32, 32), 10).eval()
    aligned.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), model_b(x), atol=1e-4, rtol=1e-3)
    moved = [k for k in states[1] if states[1][k].is_floating_point()
             and not torch.equal(states[1][k], aligned.state_dict()[k])]
    assert moved


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext"])
def test_timm_models(tmp_path, capsys, name):
    import_or_skip("timm")
    align_round_trip(f"timm:{name}", tmp_path, capsys)


def test_torchvision_models(tmp_path, capsys):
    import_or_skip("torchvision")
    align_round_trip("torchvision:resnet18", tmp_path, capsys)


@pytest.mark.parametrize("package", ["timm", "torchvision"])
def test_unknown_names(capsys, package):
    import_or_skip(package)
    assert main(["spec", "--model", f"{package}:no_such_net", "--input-shape", SHAPE]) == 2
    assert f"{package} has no model 'no_such_net'" in capsys.readouterr().err
