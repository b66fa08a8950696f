"""The scripts in examples/ run as a user would run them, and show what they claim."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str, cwd: Path) -> str:
    # one thread: these tiny models train several times faster than with two threads that
    # wait on each other on a shared machine
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def numbers(pattern: str, text: str) -> dict[str, float]:
    return {m.group(1).strip(): float(m.group(2)) for m in re.finditer(pattern, text)}


def test_own_model(tmp_path):
    out = run("own_model.py", cwd=tmp_path)
    barriers = numbers(r"(?m)^(\w+)\s+test-loss barrier ([\d.-]+)$", _lines(out))
    assert barriers["aligned"] < 0.5 * barriers["naive"], out


def test_merge_many(tmp_path):
    out = run("merge_many.py", cwd=tmp_path)
    losses = numbers(r"(?m)^(.+?)\s+test loss ([\d.]+)", _lines(out))
    inputs = [v for k, v in losses.items() if k.startswith("input")]
    assert len(inputs) == 4
    assert losses["merged"] < losses["naive average"], out
    # MergeMany's merged loss varies with its start and seed (0.210-0.227 over identity/auto
    # starts and seeds 0-1 for these inputs, whose worst is 0.108): a bound, not a target
    assert losses["merged"] < 2.5 * max(inputs), out


def test_hf_folder(tmp_path):
    pytest.importorskip("transformers")
    out = run("hf_folder.py", str(tmp_path / "work"), cwd=tmp_path)
    assert "loads with from_pretrained" in out
    change = float(re.search(r"logits: ([\d.e+-]+)", out).group(1))
    assert change < 1e-4
    work = tmp_path / "work"
    assert (work / "aligned" / "model.safetensors.index.json").is_file()
    naive = json.loads((work / "naive.json").read_text())["barrier"]["test_loss"]
    aligned = json.loads((work / "aligned.json").read_text())["barrier"]["test_loss"]
    assert aligned < naive, out


def _lines(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines())
