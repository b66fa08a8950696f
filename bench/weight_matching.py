"""Weight matching speed: total time vs time inside the solver and the similarity products.

    python bench/weight_matching.py [--models mlp,resnet20x1,...] [--repeats 3] [--out FILE]

Weights are trained briefly on the bundled digits (so the matching is a real one, not a planted
copy). Prints, per model: total seconds, solver seconds, similarity-product seconds, the ratio
total / (solver + similarity) (goal <= 1.5), sweeps, peak memory beyond the inputs (in units of
P float32 values, P = parameter count), and the time of the literal Algorithm 1
(permalign.match.reference, which rebuilds permuted tensors for every group) for comparison.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import emit, machine, table, trained_pair
from permalign.match import weight_matching
from permalign.match.reference import weight_matching_reference

MODELS = {
    "mlp3x512": "mlp:depth=3,width=512",
    "resnet20x1": "resnet20:width=1,norm=ln",
    "resnet20x4": "resnet20:width=4,norm=ln",
    "resnet20x8": "resnet20:width=8,norm=ln",
    "vgg16x1": "vgg16:width=1,norm=bn",
}


CHILD = """
import sys, torch
sys.path.insert(0, {src!r})
from permalign.match import weight_matching
from permalign.match.reference import weight_matching_reference
from permalign.spec import PermutationSpec
spec = PermutationSpec.from_json(__import__("json").load(open({spec!r})))
a, b = torch.load({a!r}), torch.load({b!r})
torch.ones(1) @ torch.ones(1)
def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field))
    return int(line.split()[1]) * 1024
weight_matching(spec, a, b, seed=0)  # warm-up: BLAS buffers and lazy imports
import gc; gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
weight_matching(spec, a, b, seed=0)
print(status("VmHWM") - before)
"""


def peak_extra_bytes(spec, a, b) -> int:
    """Peak resident memory one weight-matching run adds beyond its loaded inputs (CPU).

    Measured in a fresh process: the kernel's peak-RSS mark is reset after loading the inputs.
    """
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: str(Path(tmp) / f"{n}.pt") for n in ("a", "b")}
        torch.save(a, paths["a"])
        torch.save(b, paths["b"])
        spec_path = str(Path(tmp) / "spec.json")
        Path(spec_path).write_text(json.dumps(spec.to_json()))
        code = CHILD.format(src=str(Path(__file__).resolve().parents[1] / "src"),
                            spec=spec_path, **paths)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
    return int(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="mlp3x512,resnet20x1,resnet20x4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = []
    for key in args.models.split(","):
        model, spec, a, b = trained_pair(MODELS[key], epochs=1)
        a = {k: v.to(args.device) for k, v in a.items()}
        b = {k: v.to(args.device) for k, v in b.items()}
        weight_matching(spec, a, b, seed=0)  # warm-up
        best = None
        for r in range(args.repeats):
            result = weight_matching(spec, a, b, seed=r)
            if best is None or result.timings["total"] < best.timings["total"]:
                best = result
        start = time.perf_counter()
        weight_matching_reference(spec, a, b, seed=0)
        reference = time.perf_counter() - start
        t = best.timings
        params = sum(v.numel() for k, v in a.items() if v.is_floating_point())
        peak = peak_extra_bytes(spec, a, b) if args.device == "cpu" else 0
        rows.append([key, params, len(spec.groups), best.info["sweeps"], t["total"], t["solver"],
                     t["similarity"], t["solver"] / t["total"],
                     t["total"] / (t["solver"] + t["similarity"]),
                     peak / (4 * params) if args.device == "cpu" else "n/a", reference,
                     reference / t["total"]])
    header = ["model", "params", "groups", "sweeps", "total s", "solver s", "similarity s",
              "solver share", "total/(solver+sim)", "peak extra / P floats",
              "literal Alg. 1 s", "speed-up"]
    emit(f"## Weight matching ({args.device})\n\nMachine: {machine()}\n\n"
         f"Command: `python bench/weight_matching.py --models {args.models} --device "
         f"{args.device}` (best of {args.repeats})\n\n" + table(header, rows), args.out)


if __name__ == "__main__":
    main()
