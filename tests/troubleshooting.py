"""The bad inputs users meet and the one-line messages permalign gives for them.

``python tests/troubleshooting.py --write`` regenerates the table in README.md's
troubleshooting section; a test checks that the README shows what the code says today.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import random
import re
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from permalign.cli import main  # noqa: E402
from permalign.io import save_state_dict  # noqa: E402
from permalign.models import build_model  # noqa: E402

MODEL = "mlp:depth=2,width=16"
BEGIN, END = "<!-- troubleshooting:begin -->", "<!-- troubleshooting:end -->"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def make_bad_inputs(folder: Path) -> dict[str, Path]:
    """Checkpoint files a user might pass by mistake, keyed by a short description."""
    good = build_model(MODEL, (1, 8, 8), 10).state_dict()
    save_state_dict(good, folder / "good.pt")
    files: dict[str, Path] = {}

    def add(name: str, filename: str, write) -> None:
        files[name] = folder / filename
        write(files[name])

    add("empty file", "empty.pt", lambda p: p.write_bytes(b""))
    add("random bytes", "random.pt",  # fixed bytes: the message depends on them
        lambda p: p.write_bytes(random.Random(0).randbytes(3000)))
    add("truncated checkpoint", "truncated.pt",
        lambda p: p.write_bytes((folder / "good.pt").read_bytes()[:700]))
    add("text file", "notes.pt", lambda p: p.write_text("these are not weights"))
    add("pickle that runs code", "evil.pt", lambda p: torch.save({"w": _Evil()}, p))
    add("plain pickle, no tensors", "plain.pkl", lambda p: p.write_bytes(pickle.dumps([1, 2])))
    add("list instead of state dict", "list.pt", lambda p: torch.save([torch.ones(2)], p))
    add("NaN weights", "nan.pt", lambda p: torch.save(
        {k: torch.full_like(v, float("nan")) for k, v in good.items()}, p))
    add("missing keys", "missing.pt",
        lambda p: torch.save(dict(list(good.items())[:-2]), p))
    add("wrong shapes (other width)", "wide.pt",
        lambda p: save_state_dict(build_model("mlp:depth=2,width=32", (1, 8, 8), 10)
                                  .state_dict(), p))
    add("other architecture", "other.pt", lambda p: save_state_dict(
        build_model("resnet20:width=1,norm=bn", (1, 8, 8), 10).state_dict(), p))
    add("corrupt safetensors", "bad.safetensors", lambda p: p.write_bytes(b"\x10" + b"\0" * 7))
    add("integer weights", "int.pt", lambda p: torch.save(
        {k: v.to(torch.int32) for k, v in good.items()}, p))
    add("float8 weights", "fp8.pt", lambda p: torch.save(
        {k: v.to(torch.float8_e4m3fn) for k, v in good.items()}, p))
    add("sparse tensors", "sparse.pt", lambda p: torch.save(
        {k: v.to_sparse() for k, v in good.items()}, p))
    add("a directory", "folder.pt", lambda p: p.mkdir())
    add("a FIFO (named pipe)", "pipe.pt", os.mkfifo)
    files["file does not exist"] = folder / "absent.pt"
    return files


FACTORY = """
import torch
def build():
    raise ValueError("no weights today")
class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(64, 16), torch.nn.Linear(16, 10)
    def forward(self, x):
        h = self.a(x.flatten(1))
        return self.b(h * 2 if h.sum() > 0 else h)
def branchy():
    return Branchy()
"""


def one_sided_spec(folder: Path) -> Path:
    """MODEL's spec without the next layer's input axis: shapes fit, outputs change."""
    from permalign.models import resolve_model
    spec = resolve_model(MODEL, (1, 8, 8), 10)[1].to_json()
    for group in spec["groups"].values():
        group["members"] = [m for m in group["members"] if m != ["layers.1.weight", 1]]
    path = folder / "one-sided.json"
    path.write_text(json.dumps(spec))
    return path


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def rows(folder: Path) -> list[tuple[str, int, str]]:
    """(bad input, exit code, message with paths replaced by FILE) for each case."""
    out = []
    good = folder / "good.pt"
    cases = [(name, ["align", str(good), str(path), "--model", MODEL,
                     "--out", str(folder / "aligned.pt")])
             for name, path in make_bad_inputs(folder).items()]
    cases += [
        ("unknown model string", ["align", str(good), str(good), "--model", "mlp:depht=3",
                                  "--out", str(folder / "x.pt")]),
        ("unknown dataset", ["interpolate", str(good), str(good), "--model", MODEL,
                             "--dataset", "imagenet"]),
        ("data set files missing", ["interpolate", str(good), str(good), "--model", MODEL,
                                    "--dataset", "mnist", "--input-shape", "1,8,8",
                                    "--data-dir", str(folder / "none")]),
        ("output exists (no --force)", ["align", str(good), str(good), "--model", MODEL,
                                        "--out", str(good)]),
        ("CUDA asked for, not present", ["align", str(good), str(good), "--model", MODEL,
                                         "--device", "cuda", "--out", str(folder / "y.pt")]),
        ("output is a directory (even with --force)",
         ["align", str(good), str(good), "--model", MODEL, "--out", str(folder), "--force"]),
        ("output in a missing folder", ["align", str(good), str(good), "--model", MODEL,
                                        "--out", str(folder / "nowhere" / "x.pt")]),
        ("output file name too long (NAME: 300 x)", ["align", str(good), str(good), "--model", MODEL,
                                       "--out", str(folder / ("x" * 300))]),
        ("one file for two outputs", ["align", str(good), str(good), "--model", MODEL,
                                      "--out", str(folder / "z"), "--perm-out",
                                      str(folder / "z")]),
        ("spec that changes the outputs", ["align", str(good), str(good), "--model", MODEL,
                                           "--spec", str(one_sided_spec(folder)),
                                           "--out", str(folder / "x.pt")]),
        ("unknown model family", ["spec", "--model", "transformer:depth=2"]),
        ("model option given twice", ["spec", "--model", "mlp:depth=2,depth=3"]),
        ("model factory that raises", ["spec", "--model", "broken_factory:build"]),
        ("model factory that cannot trace", ["spec", "--model", "broken_factory:branchy"]),
        ("absurd --points", ["interpolate", str(good), str(good), "--model", MODEL,
                             "--points", "1000000000"]),
        ("infinite learning rate", ["train", "--model", MODEL, "--lr", "inf",
                                    "--out", str(folder / "t.pt")]),
        ("training that diverges", ["train", "--model", MODEL, "--lr", "1e30", "--epochs", "1",
                                    "--out", str(folder / "t.pt")]),
        ("unsupported device", ["train", "--model", MODEL, "--device", "meta",
                                "--out", str(folder / "t.pt")]),
    ]
    (folder / "broken_factory.py").write_text(FACTORY)
    cwd = os.getcwd()
    os.chdir(folder)  # factories are imported from the current directory
    try:
        results = [(name, *run_cli(argv)) for name, argv in cases]
    finally:
        os.chdir(cwd)
    for name, code, err in results:
        message = err.strip().replace(str(folder), "DIR").replace("x" * 300, "NAME")
        message = re.sub(r"/usr/share/datasets/[\w-]+", "/usr/share/datasets/NAME", message)
        out.append((name, code, message))
    return out


def markdown(table_rows: list[tuple[str, int, str]]) -> str:
    lines = [BEGIN, "| bad input | exit code | message |", "|---|---|---|"]
    for name, code, message in table_rows:
        lines.append(f"| {name} | {code} | `{message.replace('|', '/')}` |")
    lines.append(END)
    return "\n".join(lines)


def current_table() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return markdown(rows(Path(tmp)))


def readme_table() -> str:
    text = (ROOT / "README.md").read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    table = current_table()
    if args.write:
        readme = (ROOT / "README.md").read_text()
        start, end = readme.index(BEGIN), readme.index(END) + len(END)
        (ROOT / "README.md").write_text(readme[:start] + table + readme[end:])
    print(table)
