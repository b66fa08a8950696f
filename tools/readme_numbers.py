"""Regenerate (or check) the numbers in README.md from the current code.

Each generated block sits between ``<!-- readme-numbers:NAME -->`` and
``<!-- /readme-numbers:NAME -->`` in README.md:

- ``demo-digits``: runs ``permalign demo`` (bundled digits) and prints its barrier table;
- ``demo-fashion``: the same on Fashion-MNIST (with ``--fashion``; needs the data installed);
- ``environment``: the build the demo numbers were measured on (torch version, threads, CPU
  capability), which decides whether they reproduce bit for bit (see the README);
- ``mlp-barrier`` / ``bn-repair``: tables copied from ``results/NAME/results.json`` (written
  by ``permalign experiment NAME``; not rerun here, they take long).

Usage::

    python tools/readme_numbers.py --write [--fashion]   # rewrite README.md
    python tools/readme_numbers.py --check               # exit 1 if README.md differs

The demo runs in a subprocess, as ``make demo`` runs it, so the thread count is the
environment's (``OMP_NUM_THREADS``) and nothing leaks from the calling process.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- readme-numbers:(?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                   r"(<!-- /readme-numbers:(?P=name) -->)", re.S)
# How far the demo's barriers may move on another build (thread count, CPU capability,
# library versions): measured, see the README section "Reproducing these numbers".
TOLERANCE = 0.01
DEMOS = {
    "demo-digits": ("digits", "$ permalign demo            # digits: 1,437 train / 360 test "
                    "images, 30 epochs"),
    "demo-fashion": ("fashion-mnist", "$ permalign demo --dataset fashion-mnist      # "
                     "60,000 / 10,000 images, 5 epochs"),
}
HEADER = f"{'method':<12}{'train loss':>12}{'test loss':>12}{'train err':>12}{'test err':>12}"
METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")


def environment() -> dict[str, str]:
    """The build the numbers come from, as the demo's subprocess sees it."""
    code = ("import torch, numpy, scipy; print(torch.__version__, torch.get_num_threads(), "
            "torch.backends.cpu.get_cpu_capability(), numpy.__version__, scipy.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return dict(zip(("torch", "threads", "cpu_capability", "numpy", "scipy"), out))


def environment_line(env: dict[str, str]) -> str:
    return (f"Reference build: torch {env['torch']}, {env['threads']} threads, CPU capability "
            f"{env['cpu_capability']}, NumPy {env['numpy']}, SciPy {env['scipy']}.\n")


def run_demo(dataset: str) -> dict[str, dict[str, float]]:
    """``{line: {metric: barrier}}`` from a fresh ``permalign demo`` run."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "permalign", "demo", "--dataset", dataset,
                        "--out", tmp, "--force", "--quiet"], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"})
        record = json.loads((Path(tmp) / "results.json").read_text())
    return {line: r["barrier"] for line, r in record["methods"].items()}


def demo_block(command: str, barriers: dict[str, dict[str, float]]) -> str:
    rows = [f"{line:<12}" + "".join(f"{b[m]:>12.4f}" for m in METRICS)
            for line, b in barriers.items()]
    return "```\n" + "\n".join([command, HEADER, *rows]) + "\n```\n"


def results_block(name: str) -> str:
    """A markdown table from ``results/NAME/results.json``."""
    table = json.loads((ROOT / "results" / name / "results.json").read_text())["table"]
    lines = ["| " + " | ".join(table["columns"]) + " |",
             "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"


def parse_demo_block(body: str) -> dict[str, dict[str, float]]:
    """The barriers a README demo block shows."""
    out = {}
    for line in body.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] in ("naive", "weight"):
            out[parts[0]] = dict(zip(METRICS, map(float, parts[1:])))
    return out


def blocks(text: str) -> dict[str, str]:
    return {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}


def generate(text: str, *, fashion: bool) -> str:
    """README text with every generated block rebuilt."""
    new = {"environment": environment_line(environment())}
    for name, (dataset, command) in DEMOS.items():
        if name == "demo-fashion" and not fashion:
            continue
        print(f"running permalign demo --dataset {dataset}", flush=True)
        new[name] = demo_block(command, run_demo(dataset))
    for name in ("mlp-barrier", "bn-repair"):
        if (ROOT / "results" / name / "results.json").is_file():
            new[name] = results_block(name)

    def replace(match: re.Match) -> str:
        body = new.get(match.group("name"), match.group("body"))
        return match.group(1) + body + match.group(4)
    return BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if README.md differs from a fresh run")
    parser.add_argument("--fashion", action="store_true",
                        help="also run the Fashion-MNIST demo (~1.5 min)")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    fresh = generate(text, fashion=args.fashion)
    if args.write:
        README.write_text(fresh, encoding="utf-8")
        print(f"wrote {README}")
    if args.check and fresh != text:
        print("README.md differs from a fresh run:")
        for name, body in blocks(fresh).items():
            if blocks(text).get(name) != body:
                print(f"--- {name} (README)\n{blocks(text).get(name)}--- {name} (fresh)\n{body}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
