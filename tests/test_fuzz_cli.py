"""Random argument vectors for every command (Hypothesis), drawn from pools of good and bad
flags, values and paths. Whatever comes: exit 0 or 2, no traceback, one line per error, and
no file left anywhere that the command was not asked to write (nothing at all on an error).
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clitools import SMALL, is_one_line_error, run_cli
from permalign.io import save_state_dict
from permalign.models import build_model

# good values are repeated so that about half of the vectors get through to real work
INTS = ["1", "2", "1", "2", "-1", "0", "x", "", "nan", "1e3", "1000000000"]
SMALL_INTS = ["1", "2", "1", "-1", "0", "x", "nan"]  # large values would only cost time
FLOATS = ["1e-3", "0.1", "1e-3", "0", "-1", "inf", "nan", "1e30", "x"]
MODELS = [SMALL] * 6 + ["mlp:depth=1,width=8,norm=bn", "transformer:depth=2",
                        "mlp:depth=1,depth=2", "mlp:width=0", "no_such_module:f",
                        "vgg11:width=nan", "", "fuzz_factories:three_classes",
                        "fuzz_factories:raises", "fuzz_factories:branchy"]
FACTORIES = """
import torch
def three_classes():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
def raises():
    raise RuntimeError("out of ideas")
class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(64, 10)
    def forward(self, x):
        y = self.a(x.flatten(1))
        return y if y.sum() > 0 else -y
def branchy():
    return Branchy()
"""
DEVICES = ["cpu", "auto", "cpu", "meta", "cuda:x", "tpu"]
DATASETS = ["digits", "digits", "digits", "imagenet", "cifar10"]
INPUTS = ["good.pt", "good2.pt"] * 4 + ["bad.pt", "missing.pt", "dir", "fifo"]
OUTPUTS = ["o1.pt", "o2.json", "o3.png", "o4.safetensors"] * 2 + [
    "existing.out", "dir", "fifo", "nodir/x.pt", "x" * 300, "y" * 200, "link.out",
    "dangling.out", "good.pt", ""]
FOLDERS = ["newdir", "newdir/deeper", "dir", "existing.out", "nodir/x/y"]


def make_pool(folder: Path) -> None:
    """The files the vectors name: checkpoints, junk, a folder, a FIFO, links, results."""
    for seed, name in ((0, "good.pt"), (1, "good2.pt")):
        save_state_dict(build_model(SMALL, (1, 8, 8), 10, seed=seed).state_dict(),
                        folder / name)
    (folder / "bad.pt").write_bytes(os.urandom(300))
    (folder / "existing.out").write_text("keep me")
    (folder / "dir").mkdir()
    os.mkfifo(folder / "fifo")
    (folder / "link.out").symlink_to("existing.out")
    (folder / "dangling.out").symlink_to("nowhere")
    (folder / "exp").mkdir()
    (folder / "exp" / "results.json").write_text(json.dumps(
        {"experiment": "x", "claim": "y", "table": {"columns": ["a"], "rows": [[1]]}}))
    (folder / "spec.json").write_text(json.dumps({"groups": {"hidden0": {
        "size": 8, "members": [["layers.0.weight", 0], ["layers.0.bias", 0],
                               ["head.weight", 1]]}}}))
    (folder / "badspec.json").write_text('{"groups": {"g": {"size": "8"}}}')
    (folder / "fuzz_factories.py").write_text(FACTORIES)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (hidden ones included) with its kind, size and mtime."""
    out = {}
    for path in folder.rglob("*"):
        st = os.lstat(path)
        out[str(path.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_size,
                                              st.st_mtime_ns)
    return out


def options(draw, flags: dict[str, list[str] | None]) -> list[str]:
    """A random subset of ``flags`` in random order (None: a switch without a value)."""
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), unique=True, max_size=4))
    argv = []
    for flag in chosen:
        argv.append(flag)
        if flags[flag] is not None:
            argv.append(draw(st.sampled_from(flags[flag])))
    return argv


MODEL_FLAGS = {"--dataset": DATASETS, "--device": DEVICES, "--input-shape":
               ["1,8,8", "64", "0", "x", "100000,100000"], "--num-classes": INTS,
               "--infer": None, "--data-dir": ["dir", "missing"]}


@st.composite
def vectors(draw, command: str) -> list[str]:
    """``[command, ...]`` with required parts usually present and options drawn at random."""
    model = ["--model", draw(st.sampled_from(MODELS))]
    out = ["--out", draw(st.sampled_from(OUTPUTS))]
    common = {"--force": None, "--quiet": None, "--verbose": None}
    if command == "train":
        argv = model + out + options(draw, {**MODEL_FLAGS, **common,
                                            "--epochs": ["0", "1", "2", "-1", "x", "100001"],
                                            "--lr": FLOATS, "--batch-size": INTS,
                                            "--seed": INTS, "--optimizer": ["adam", "sgd", "x"],
                                            "--train-subset": INTS,
                                            "--recipe": ["quick-adam", "official-conv", "x"],
                                            "--weight-decay": FLOATS, "--save-init": OUTPUTS})
    elif command in ("align", "interpolate"):
        argv = [draw(st.sampled_from(INPUTS)), draw(st.sampled_from(INPUTS))] + model
        if command == "align":
            argv += out + options(draw, {**MODEL_FLAGS, **common,
                                         "--method": ["weight", "activation", "ste", "magic"],
                                         "--max-iter": SMALL_INTS, "--restarts": SMALL_INTS,
                                         "--epochs": SMALL_INTS, "--lr": FLOATS,
                                         "--eval-examples": ["1", "50", "0"],
                                         "--num-examples": ["1", "100", "0", "x"],
                                         "--seed": INTS, "--perm-out": OUTPUTS,
                                         "--spec": ["spec.json", "badspec.json", "fifo", "dir",
                                                    "missing.json"], "--no-spec-check": None})
        else:
            argv += options(draw, {**MODEL_FLAGS, **common, "--out": OUTPUTS, "--plot": OUTPUTS,
                                   "--points": ["2", "3", "1", "0", "x", "1000000000"],
                                   "--eval-subset": ["50", "1", "0", "x"], "--repair": None,
                                   "--bn-reset": None, "--no-bn-reset": None})
    elif command == "diagnose":
        argv = [draw(st.sampled_from(INPUTS)), draw(st.sampled_from(INPUTS))] + model
        argv += options(draw, {**MODEL_FLAGS, **common, "--out": OUTPUTS,
                               "--init-a": INPUTS, "--init-b": INPUTS,
                               "--method": ["weight", "activation", "magic"],
                               "--points": ["2", "3", "1", "x", "1000000000"],
                               "--eval-subset": ["50", "1", "0", "x"], "--seed": INTS})
    elif command == "merge":
        argv = ["good.pt"] + draw(st.lists(st.sampled_from(INPUTS), max_size=2)) + model + out
        argv += options(draw, {**MODEL_FLAGS, **common, "--seed": INTS, "--no-bn-reset": None})
    elif command == "spec":
        argv = model + options(draw, {**MODEL_FLAGS, **common, "--out": OUTPUTS})
    elif command == "report":
        argv = draw(st.lists(st.sampled_from(["exp", "dir", "missing", "good.pt", "."]),
                             min_size=0, max_size=2))
        argv += options(draw, {"--out": OUTPUTS, "--force": None, "--verbose": None})
    elif command == "demo":
        argv = ["--model", draw(st.sampled_from([SMALL, SMALL, "transformer:depth=2", "x"])),
                "--epochs", draw(st.sampled_from(["0", "1", "-1", "x"]))]
        argv += options(draw, {**common, "--out": FOLDERS, "--train-subset": ["64", "0", "x"],
                               "--points": ["2", "3", "1", "x", "1000000000"],
                               "--seed-a": INTS, "--seed-b": INTS, "--seed": INTS,
                               "--dataset": DATASETS, "--device": DEVICES})
    else:  # experiment
        argv = [draw(st.sampled_from(["counterexample", "nosuch", ""]))]
        argv += ["--out", draw(st.sampled_from(FOLDERS))] + options(draw, {
            **common, "--quick": None, "--seeds": ["0", "1", "x", "1001"],
            "--device": DEVICES, "--dataset": ["digits", "imagenet"]})
        if "--quick" not in argv:
            argv += ["--scale", draw(st.sampled_from(["quick", "quick", "huge"]))]
    return [command] + argv


def outputs_named(argv: list[str], folder: Path) -> set[Path]:
    """The real files (or folders) that ``argv`` asks to write."""
    named = set()
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--out", "--perm-out", "--plot"):
            named.add(Path(os.path.realpath(folder / value)))
    if argv[0] == "report" and "--out" not in argv:
        named.add(folder / "RESULTS.md")
    if argv[0] == "demo" and "--out" not in argv:
        named.add(folder / "permalign-demo")
    return named


def check_vector(argv: list[str], folder: Path) -> None:
    before = snapshot(folder)
    cwd = os.getcwd()
    os.chdir(folder)  # relative defaults (permalign-demo, RESULTS.md) land here
    try:
        code, _, err = run_cli(*argv)
    finally:
        os.chdir(cwd)
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    after = snapshot(folder)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert not [p for p in after if p.endswith(".tmp")], (argv, after)
    if code == 2:
        assert is_one_line_error(err), (argv, err)
        assert changed == set(), (argv, err, changed)
        return
    named = outputs_named(argv, folder)
    for path in changed:
        real = Path(os.path.realpath(folder / path))
        created_parent = path not in before and any(real in n.parents for n in named)
        assert real in named or created_parent or any(n in real.parents for n in named), \
            (argv, path)
        assert path in after, (argv, f"{path} was removed")


COMMANDS = ["train", "align", "interpolate", "merge", "spec", "report", "demo", "experiment",
            "diagnose"]


def test_every_command_is_fuzzed():
    from permalign.cli.commands import COMMANDS as ALL
    assert sorted(COMMANDS) == sorted(ALL)


def fuzz(command: str, examples: int):
    @settings(max_examples=examples, deadline=None, derandomize=examples < 50,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(argv=vectors(command))
    def test(tmp_path_factory, argv):
        folder = tmp_path_factory.mktemp(command)
        make_pool(folder)
        check_vector(argv, folder)
    return test


@pytest.mark.parametrize("command", COMMANDS)
def test_random_argument_vectors(tmp_path_factory, command):
    fuzz(command, 8)(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_random_argument_vectors_many(tmp_path_factory, command):
    fuzz(command, 150)(tmp_path_factory)
