"""Scale: data-parallel activation statistics (1 vs 2 processes) and weight matching of large
transformer pairs (time per sweep, peak memory, share in the assignment solver).

    python bench/scale.py [--samples 4096] [--parts activation,gpt2,llama] [--out FILE]

``activation``: activation statistics of two random-init ResNet-20s (BatchNorm) on Fashion-MNIST,
in 1 process with 1 and with 2 torch threads and in 2 gloo processes of 1 thread each
(``torch.multiprocessing`` spawn, the same code path as ``torchrun``); samples/s and speed-ups
are from the same run, and the statistics of the 2-process run are compared with 1 process.

``gpt2``: a GPT-2-small-sized pair (124M parameters, ``transformers.GPT2Config()`` defaults,
random init with seeds 0 and 1, no network); spec inferred from the graph; weight matching
(Algorithm 1, identity start). ``llama``: a Llama-style pair with TinyLlama-1.1B's widths
(hidden 2048, MLP 5632, 32 heads, 4 key-value heads, vocabulary 32000) at each of
``--llama-layers`` (e.g. ``1,2``); from two layer counts the report extrapolates linearly to
TinyLlama's 22 layers (1.1B parameters), labelled as an extrapolation. Each pair runs in a
child process, whose peak resident memory (``resource.getrusage``) is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _common import emit, machine, table

HERE = Path(__file__).resolve().parent
CONV = "resnet20:width=1,norm=bn"


# ------------------------------------------------------------------ activation statistics
def _stats_worker(rank: int, world: int, threads: int, port: int, samples: int,
                  folder: str) -> None:
    from permalign.data import load_dataset
    from permalign.match.activation import activation_statistics
    from permalign.models import resolve_model
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    data = load_dataset("fashion-mnist")
    model, spec = resolve_model(CONV, data.input_shape, data.num_classes, seed=0)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = resolve_model(CONV, data.input_shape, data.num_classes, seed=1)[0].state_dict()
    x = data.train_x[:samples].clone()
    activation_statistics(spec, model, a, b, x[:512])  # warm-up (both ranks, shared)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    moments = activation_statistics(spec, model, a, b, x)
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        torch.save({"seconds": seconds, "cross": {g: m.cross_moment() for g, m in
                                                  moments.items()}},
                   Path(folder) / f"stats_{world}x{threads}.pt")
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def activation_part(samples: int) -> str:
    load_before = os.getloadavg()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for world, threads in ((1, 1), (1, 2), (2, 1)):
            mp.spawn(_stats_worker, args=(world, threads, _free_port(), samples, folder),
                     nprocs=world, join=True)
            results[(world, threads)] = torch.load(Path(folder) / f"stats_{world}x{threads}.pt")
    base = results[(1, 1)]["seconds"]
    two_threads = results[(1, 2)]["seconds"]
    for (world, threads), r in results.items():
        rows.append([f"{world} process{'es' if world > 1 else ''} x {threads} thread"
                     f"{'s' if threads > 1 else ''}", samples, round(r["seconds"], 2),
                     round(samples / r["seconds"]), round(base / r["seconds"], 2),
                     round(two_threads / r["seconds"], 2)])
    ref, two = results[(1, 1)]["cross"], results[(2, 1)]["cross"]
    diff = max(float(((ref[g] - two[g]).abs().max() / ref[g].abs().max())) for g in ref)
    load_after = os.getloadavg()
    return (f"### Activation statistics, 1 vs 2 processes ({CONV}, random init, Fashion-MNIST)"
            f"\n\n" + table(["run", "samples", "seconds", "samples/s", "speed-up vs 1x1",
                             "speed-up vs 1x2"], rows)
            + f"\n\nThe 2-process cross-moments equal the 1-process ones to {diff:.1e} "
            f"(largest difference / largest entry). Load average (1, 5, 15 min) before "
            f"{tuple(round(v, 2) for v in load_before)}, after "
            f"{tuple(round(v, 2) for v in load_after)}, on {os.cpu_count()} cores shared with "
            "other jobs.\n")


# ------------------------------------------------------------------ weight matching, child
def _child(kind: str, layers: int) -> dict:
    """Build the pair, infer the spec, run weight matching; report timings and peak RSS."""
    import transformers
    from permalign.infer import infer_spec
    from permalign.match.weight import weight_matching
    transformers.logging.set_verbosity_error()
    if kind == "gpt2":
        config = transformers.GPT2Config()
        cls = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(
            hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
            num_key_value_heads=4, num_hidden_layers=layers, vocab_size=32000,
            max_position_embeddings=2048)
        cls = transformers.LlamaForCausalLM
    start = time.perf_counter()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(cls(config).eval())
    built = time.perf_counter()
    params = sum(p.numel() for p in models[0].parameters())
    ids = torch.randint(0, config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    spec = infer_spec(models[0], (ids,), example_kwargs={"use_cache": False}, check=False)
    inferred = time.perf_counter()
    state_a, state_b = (m.state_dict() for m in models)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = weight_matching(spec, state_a, state_b, init=None)
    done = time.perf_counter()
    largest = max(g.size for g in spec.groups.values())
    return {"params": params, "groups": len(spec.groups), "largest_group": largest,
            "build_s": built - start, "infer_s": inferred - built,
            "match_s": result.timings["total"], "solver_s": result.timings["solver"],
            "similarity_s": result.timings["similarity"], "sweeps": result.info["sweeps"],
            "solves": result.info["solves"], "wall_s": done - start,
            "peak_rss_before_matching": rss_before,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "threads": torch.get_num_threads()}


def extrapolate(runs: dict[int, dict], layers: int = 22) -> str:
    """A line for ``layers`` layers, linear in the layer count through the two smallest runs
    (time per sweep, since the number of sweeps differs from run to run)."""
    (l1, r1), (l2, r2) = sorted(runs.items())[:2]

    def at(key: str, per_sweep: bool = False) -> float:
        v1, v2 = (r1[key] / r1["sweeps"], r2[key] / r2["sweeps"]) if per_sweep else \
            (r1[key], r2[key])
        return v1 + (v2 - v1) * (layers - l1) / (l2 - l1)
    gib = 2 ** 30
    return (f"Extrapolated (linear in layers from {l1} and {l2}; not measured) to {layers} "
            f"layers: {at('params') / 1e9:.2f}B parameters, "
            f"{at('match_s', True):.0f} s per sweep, {at('solver_s', True):.0f} s of it in the "
            f"solver, peak RSS {at('peak_rss') / gib:.1f} GiB (of which "
            f"{at('peak_rss_before_matching') / gib:.1f} GiB for building the two models), "
            "against 24 GiB on this machine shared with other jobs.")


def matching_part(kind: str, layers: int) -> tuple[dict, list]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--llama-layers",
                          str(layers)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 2 ** 30
    name = ("GPT-2 small (GPT2Config())" if kind == "gpt2" else
            f"Llama-style, TinyLlama widths, {layers} layers")
    row = [name, f"{r['params'] / 1e6:.0f}M", r["groups"], r["largest_group"], r["sweeps"],
           round(r["match_s"], 1), round(r["match_s"] / r["sweeps"], 1),
           f"{100 * r['solver_s'] / r['match_s']:.0f}%",
           f"{r['peak_rss_before_matching'] / gib:.2f}", f"{r['peak_rss'] / gib:.2f}",
           round(r["infer_s"], 1)]
    return r, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--parts", default="activation,gpt2,llama")
    parser.add_argument("--llama-layers", default="1,2",
                        help="layer counts of the Llama-style pairs, comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        print(json.dumps(_child(args.child, int(args.llama_layers))))
        return
    parts = args.parts.split(",")
    text = [f"## Scale\n\nMachine: {machine()}; {os.cpu_count()} cores.\n\nCommand: `python "
            f"bench/scale.py --samples {args.samples} --parts {args.parts} --llama-layers "
            f"{args.llama_layers}`\n"]
    if "activation" in parts:
        text.append(activation_part(args.samples))
    rows, raw = [], {}
    if "gpt2" in parts:
        raw["gpt2"], row = matching_part("gpt2", 0)
        rows.append(row)
    llama: dict[int, dict] = {}
    if "llama" in parts:
        for layers in map(int, args.llama_layers.split(",")):
            llama[layers], row = matching_part("llama", layers)
            raw[f"llama{layers}"] = llama[layers]
            rows.append(row)
    if rows:
        text.append("### Weight matching of large pairs (random init, 2 torch threads, one "
                    "process each)\n\n" + table(
                        ["pair", "parameters", "groups", "largest group", "sweeps",
                         "matching s", "s per sweep", "in solver", "peak RSS GiB before "
                         "matching", "peak RSS GiB", "spec inference s"], rows)
                    + (f"\n\n{extrapolate(llama)}" if len(llama) > 1 else "")
                    + f"\n\nLoad average after: {tuple(round(v, 2) for v in os.getloadavg())}."
                    "\n\nRaw: `" + json.dumps(raw) + "`\n")
    emit("\n".join(text), args.out)


if __name__ == "__main__":
    main()
