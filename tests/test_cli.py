"""The permalign command: the demo, a train/align/interpolate round trip, and bad input."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from permalign.cli import main

MLP = "mlp:depth=2,width=64"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_on_digits(tmp_path, capsys):
    """The README's demo: weight matching removes the barrier between two digits MLPs."""
    code, out, err = run(capsys, "demo", "--out", tmp_path, "--quiet")
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    naive = results["methods"]["naive"]["barrier"]
    weight = results["methods"]["weight"]["barrier"]
    assert naive["test_loss"] >= 0.3
    assert weight["test_loss"] <= 0.05
    assert len(results["methods"]["weight"]["curve"]["lambdas"]) == 25
    prov = results["provenance"]
    assert prov["seeds"] == {"model_a": 0, "model_b": 1, "matching": 0}
    assert prov["versions"]["torch"] == torch.__version__ and prov["wall_time_s"] > 0
    assert (tmp_path / "interpolation.png").read_bytes()[:4] == b"\x89PNG"
    assert "naive" in out and "weight" in out
    # a second run refuses to overwrite without --force
    code, _, err = run(capsys, "demo", "--out", tmp_path, "--quiet", "--epochs", "1")
    assert code == 2 and "--force" in err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    for seed, name in ((0, "a.pt"), (1, "b.safetensors")):
        assert main(["train", "--model", MLP, "--seed", str(seed), "--epochs", "8",
                     "--out", str(root / name), "--quiet"]) == 0
    return root


def test_train_is_deterministic(checkpoints, tmp_path, capsys):
    code, _, _ = run(capsys, "train", "--model", MLP, "--seed", 0, "--epochs", 8,
                     "--out", tmp_path / "again.pt", "--quiet")
    assert code == 0
    first = torch.load(checkpoints / "a.pt", weights_only=True)
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("method", ["weight", "activation"])
def test_align_then_interpolate(checkpoints, tmp_path, capsys, method):
    a, b = checkpoints / "a.pt", checkpoints / "b.safetensors"
    code, _, err = run(capsys, "align", a, b, "--model", MLP, "--method", method,
                       "--out", tmp_path / "b_aligned.pt", "--perm-out", tmp_path / "perm.json")
    assert code == 0, err
    perm = json.loads((tmp_path / "perm.json").read_text())
    assert sorted(perm["perm"]["hidden0"]) == list(range(64))
    for target, name in ((b, "naive.json"), (tmp_path / "b_aligned.pt", "aligned.json")):
        code, _, err = run(capsys, "interpolate", a, target, "--model", MLP, "--points", 7,
                           "--out", tmp_path / name)
        assert code == 0, err
    naive = json.loads((tmp_path / "naive.json").read_text())["barrier"]
    aligned = json.loads((tmp_path / "aligned.json").read_text())["barrier"]
    assert aligned["test_loss"] < naive["test_loss"]
    assert set(naive) == {"train_loss", "test_loss", "train_acc", "test_acc"}


def test_interpolate_repair_and_plot(checkpoints, tmp_path, capsys):
    code, _, err = run(capsys, "interpolate", checkpoints / "a.pt", checkpoints / "b.safetensors",
                       "--model", MLP, "--points", 3, "--repair", "--plot", tmp_path / "c.png")
    assert code == 0, err
    assert (tmp_path / "c.png").exists()


def test_spec_command(tmp_path, capsys):
    code, out, _ = run(capsys, "spec", "--model", "resnet20:width=1,norm=bn",
                       "--out", tmp_path / "spec.json")
    assert code == 0 and "stage1.stream" in out
    from permalign.spec import PermutationSpec
    assert len(PermutationSpec.load(tmp_path / "spec.json").groups) == 12


class Evil:
    """A pickle that would create ``marker`` if anything ever ran its code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def bad_files(tmp_path, checkpoints):
    """(description, path) of inputs the CLI must refuse."""
    good = torch.load(checkpoints / "a.pt", weights_only=True)
    files = {}
    files["empty file"] = tmp_path / "empty.pt"
    files["empty file"].write_bytes(b"")
    files["random bytes"] = tmp_path / "random.pt"
    files["random bytes"].write_bytes(os.urandom(2000))
    files["truncated checkpoint"] = tmp_path / "trunc.pt"
    files["truncated checkpoint"].write_bytes((checkpoints / "a.pt").read_bytes()[:500])
    files["text file"] = tmp_path / "text.pt"
    files["text file"].write_text("hello")
    files["pickle with code"] = tmp_path / "evil.pt"
    torch.save({"x": Evil(tmp_path / "pwned")}, files["pickle with code"])
    files["plain pickle"] = tmp_path / "plain.pt"
    files["plain pickle"].write_bytes(pickle.dumps({"a": 1}))
    files["NaN weights"] = tmp_path / "nan.pt"
    torch.save({k: v.clone().fill_(float("nan")) for k, v in good.items()}, files["NaN weights"])
    files["missing keys"] = tmp_path / "missing.pt"
    torch.save({k: v for k, v in list(good.items())[:-1]}, files["missing keys"])
    files["wrong shapes"] = tmp_path / "shapes.pt"
    torch.save({k: v[..., :3] for k, v in good.items()}, files["wrong shapes"])
    files["other architecture"] = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, files["other architecture"])
    files["bad safetensors"] = tmp_path / "bad.safetensors"
    files["bad safetensors"].write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    files["missing file"] = tmp_path / "does-not-exist.pt"
    files["not a state dict"] = tmp_path / "list.pt"
    torch.save([1, 2, 3], files["not a state dict"])
    return files


def test_bad_checkpoints_give_one_line_errors(checkpoints, tmp_path, capsys):
    for what, path in bad_files(tmp_path, checkpoints).items():
        out = tmp_path / f"out-{path.stem}.pt"
        code, _, err = run(capsys, "align", checkpoints / "a.pt", path, "--model", MLP,
                           "--out", out)
        assert code == 2, what
        assert len(err.strip().splitlines()) == 1 and err.startswith("permalign: error:"), what
        assert "Traceback" not in err
        assert not out.exists(), what
        assert not any(p.name.startswith(".out-") for p in tmp_path.iterdir()), what
    assert not (tmp_path / "pwned").exists()  # private to this test: no stale file can fail it


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "mlp:depht=3", "--out", "X"], "bad option"),
    (["train", "--model", "nosuch", "--out", "X"], "unknown model"),
    (["train", "--model", MLP, "--dataset", "imagenet", "--out", "X"], "unknown dataset"),
    (["train", "--model", MLP, "--dataset", "mnist", "--data-dir", "/nonexistent",
      "--out", "X"], "not found"),
    (["train", "--model", MLP, "--device", "tpu", "--out", "X"], "unknown device"),
    (["interpolate", "A", "B", "--model", MLP, "--points", "1"], "must be >= 2"),
    (["spec", "--model", "resnet20", "--input-shape", "64"], "C,H,W"),
    (["align", "A", "B", "--model", MLP, "--method", "magic", "--out", "X"], "invalid choice"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / a) if a in ("X", "A", "B") else a for a in argv]
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exc:  # argparse usage errors
        code, err = exc.code, capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "X").exists()


def test_subprocess_has_no_traceback(tmp_path):
    """As a user sees it: exit code 2, one line on stderr."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    proc = subprocess.run([sys.executable, "-m", "permalign", "align", str(junk), str(junk),
                           "--model", MLP, "--out", str(tmp_path / "o.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
