"""Activation statistics: throughput (samples/s) and peak memory against the sample count.

    python bench/activation_matching.py [--dataset fashion-mnist] [--out FILE]

Peak memory is the resident-set high-water mark reset before each measurement (Linux), so it
shows what the streaming pass itself adds; it must not grow with the number of samples.
"""
from __future__ import annotations

import argparse
import gc
import time


from _common import emit, machine, table
from permalign.data import load_dataset
from permalign.match.activation import activation_statistics
from permalign.models import resolve_model


def status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(next(ln for ln in fh if ln.startswith(field)).split()[1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--samples", default="1000,4000,16000")
    parser.add_argument("--out")
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    models = ["mlp:depth=3,width=512", "resnet20:width=1,norm=bn"]
    rows = []
    for model_string in models:
        model, spec = resolve_model(model_string, data.input_shape, data.num_classes, seed=0)
        a = {k: v.clone() for k, v in model.state_dict().items()}
        b = resolve_model(model_string, data.input_shape, data.num_classes, seed=1)[0]
        b = b.state_dict()
        activation_statistics(spec, model, a, b, data.train_x[:500])  # warm-up
        for n in map(int, args.samples.split(",")):
            x = data.train_x[:n].clone()
            gc.collect()
            open("/proc/self/clear_refs", "w").write("5")
            before = status("VmRSS")
            start = time.perf_counter()
            activation_statistics(spec, model, a, b, x)
            seconds = time.perf_counter() - start
            peak = status("VmHWM") - before
            rows.append([model_string, n, seconds, round(n / seconds),
                         f"{peak / 2**20:.1f} MiB"])
    emit(f"## Activation statistics (cpu)\n\nMachine: {machine()}\n\nCommand: `python "
         f"bench/activation_matching.py --dataset {args.dataset}`\n\n"
         + table(["model", "samples", "seconds", "samples/s", "peak extra memory"], rows),
         args.out)


if __name__ == "__main__":
    main()
