"""The bad inputs users meet and the one-line messages permalign gives for them.

``python tests/troubleshooting.py --write`` regenerates the table in README.md's
troubleshooting section; a test checks that the README shows what the code says today.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
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
    add("random bytes", "random.pt", lambda p: p.write_bytes(os.urandom(3000)))
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
    files["file does not exist"] = folder / "absent.pt"
    return files


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
    ]
    for name, argv in cases:
        code, err = run_cli(argv)
        message = err.strip().replace(str(folder), "DIR")
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
