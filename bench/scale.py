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

``gpt2-lazy`` and ``llama-lazy`` (``--lazy-layers``, default 22: the ~1B pair) are the
low-memory path: a first child builds model A (seed 0), infers its spec, saves it as sharded
safetensors under a temporary folder and frees it, then the same for B (seed 1); a second child
reads both folders lazily (:func:`permalign.hf.lazy_state`, the model built on the meta
device, so it holds no weights), runs weight matching in the bounded mode and writes the
permuted B folder shard by shard (:func:`permalign.statedict.permuted_view`,
:func:`permalign.hf.save_folder`). For ``gpt2-lazy`` a child of its own first runs the eager
path (the folders loaded whole, cached matching, eager write) on the same folders (one
process for both let the lazy path start with what the allocator kept from the eager one),
and the two written folders are compared byte for byte. Peak memory per phase is the kernel's high-water
mark (``VmHWM``, reset through ``/proc/self/clear_refs`` before each phase), with the largest
anonymous and file-backed resident sizes seen by a 20 Hz sampler (``RssAnon``/``RssFile``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
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
def _config(kind: str, layers: int):
    """``(config, model class)`` of a GPT-2-small or a TinyLlama-width Llama with ``layers``."""
    import transformers
    transformers.logging.set_verbosity_error()
    if kind == "gpt2":
        return transformers.GPT2Config(), transformers.GPT2LMHeadModel
    config = transformers.LlamaConfig(
        hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
        num_key_value_heads=4, num_hidden_layers=layers, vocab_size=32000,
        max_position_embeddings=2048)
    return config, transformers.LlamaForCausalLM


def _child(kind: str, layers: int) -> dict:
    """Build the pair, infer the spec, run weight matching; report timings and peak RSS."""
    from permalign.infer import infer_spec
    from permalign.match.weight import weight_matching
    config, cls = _config(kind, layers)
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


# ------------------------------------------------------------------ the low-memory path
GIB = 2 ** 30


def _status(*fields: str) -> dict[str, int]:
    """Fields of /proc/self/status in bytes (``VmHWM``, ``RssAnon``, ...)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in fields:
                out[name] = int(value.split()[0]) * 1024
    return out


class Peak:
    """Peak resident memory of a phase: ``VmHWM`` reset at the start (``clear_refs``), and
    the largest anonymous / file-backed resident sizes seen by a 20 Hz sampler."""

    def __enter__(self) -> "Peak":
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the high-water mark to the current RSS
        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.start = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            now = _status("RssAnon", "RssFile")
            self.anon = max(self.anon, now["RssAnon"])
            self.file = max(self.file, now["RssFile"])

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self._stop.set()
        self._thread.join()
        self.hwm = _status("VmHWM")["VmHWM"]

    def record(self) -> dict[str, float]:
        return {"s": self.seconds, "peak": self.hwm, "anon": self.anon, "file": self.file}


def _prepare_child(kind: str, layers: int, folder: str) -> dict:
    """Models A (seed 0) and B (seed 1) saved as sharded safetensors in ``folder``, one at a
    time (each freed before the next); A's spec, inferred from its graph, as JSON."""
    from permalign.infer import infer_spec
    config, cls = _config(kind, layers)
    out: dict = {}
    for seed, name in ((0, "a"), (1, "b")):
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = cls(config).eval()
        out["params"] = sum(p.numel() for p in model.parameters())
        if seed == 0:
            ids = torch.randint(0, config.vocab_size, (1, 8),
                                generator=torch.Generator().manual_seed(0))
            t0 = time.perf_counter()
            spec = infer_spec(model, (ids,), example_kwargs={"use_cache": False}, check=False)
            out["infer_s"] = time.perf_counter() - t0
            (Path(folder) / "spec.json").write_text(json.dumps(spec.to_json()))
        model.save_pretrained(Path(folder) / name, max_shard_size="1GB")
        del model
        out[f"build_save_{name}_s"] = time.perf_counter() - start
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def _match_child(kind: str, layers: int, folder: str, modes: list[str]) -> dict:
    """Weight matching of the saved pair and the permuted B written as a folder, per mode
    (``lazy``: lazy reads, bounded matching, streamed write; ``eager``: whole loads, cached
    matching, eager write); the model is built on the meta device (no weights)."""
    from permalign import hf
    from permalign.match.weight import weight_matching
    from permalign.permutation import apply_permutation
    from permalign.spec import PermutationSpec
    from permalign.statedict import permuted_view
    config, cls = _config(kind, layers)
    with torch.device("meta"):
        model = cls(config)
    spec = PermutationSpec.from_json(json.loads((Path(folder) / "spec.json").read_text()))
    names = hf.stored_names(model)
    a, b = Path(folder) / "a", Path(folder) / "b"
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    member_rows = max(shapes[m.key].numel() for g in spec.groups.values() for m in g.members)
    largest = max(g.size for g in spec.groups.values())
    out: dict = {"groups": len(spec.groups), "largest_group": largest,
                 "bound": 16 * member_rows + 12 * largest ** 2,
                 "baseline": _status("VmRSS")["VmRSS"], "threads": torch.get_num_threads()}
    for mode in modes:
        with Peak() as load:
            if mode == "lazy":
                state_a, state_b = hf.lazy_state(a, model), hf.lazy_state(b, model)
            else:
                state_a, state_b = hf.load_state(a, model), hf.load_state(b, model)
        with Peak() as match:
            result = weight_matching(spec, state_a, state_b, init=None)
        with Peak() as write:
            permute = permuted_view if mode == "lazy" else apply_permutation
            hf.save_folder(Path(folder) / f"out-{mode}", permute(spec, result.perm, state_b), a,
                           card="# bench\n", names=names, force=True)
        out[mode] = {"load": load.record(), "match": match.record(), "write": write.record(),
                     "memory": result.info["memory"], "sweeps": result.info["sweeps"],
                     "solves": result.info["solves"], "match_s": result.timings["total"],
                     "solver_s": result.timings["solver"],
                     "similarity_s": result.timings["similarity"],
                     "perm": {g: p.tolist() for g, p in result.perm.items()}}
        del state_a, state_b, result
    return out


def _run_child(*argv: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child {argv} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def lazy_part(kind: str, layers: int, modes: list[str], root: str | None) -> tuple[dict, list]:
    """Prepare the pair's folders, then match and write in a fresh child per mode; rows per
    mode."""
    load_before = os.getloadavg()
    folder = tempfile.mkdtemp(prefix=f"permalign-scale-{kind}-", dir=root)
    try:
        prepared = _run_child("--child", "prepare", "--kind", kind, "--llama-layers",
                              str(layers), "--folder", folder)
        r: dict = {}
        for mode in modes:  # a fresh child each: memory one mode freed is not the next's
            r = {**_run_child("--child", "match", "--kind", kind, "--llama-layers",
                              str(layers), "--folder", folder, "--modes", mode), **r}
        if len(modes) > 1:
            files = [sorted(p.name for p in (Path(folder) / f"out-{m}").glob("model-*"))
                     for m in modes]
            r["same_bytes"] = files[0] == files[1] and all(
                (Path(folder) / f"out-{modes[0]}" / n).read_bytes() ==
                (Path(folder) / f"out-{modes[1]}" / n).read_bytes() for n in files[0])
            r["same_perm"] = r[modes[0]]["perm"] == r[modes[1]]["perm"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    r["prepare"] = prepared
    r["load_before"], r["load_after"] = load_before, os.getloadavg()
    name = ("GPT-2 small (GPT2Config())" if kind == "gpt2" else
            f"Llama-style, TinyLlama widths, {layers} layers")
    rows = []
    for mode in modes:
        m = r[mode]
        rows.append([name, f"{prepared['params'] / 1e6:.0f}M", mode, m["memory"], m["sweeps"],
                     round(m["match_s"], 1), round(m["match_s"] / m["sweeps"], 1),
                     f"{100 * m['solver_s'] / m['match_s']:.0f}%",
                     f"{m['load']['peak'] / GIB:.2f}", f"{m['match']['peak'] / GIB:.2f}",
                     f"{m['match']['anon'] / GIB:.2f} / {m['match']['file'] / GIB:.2f}",
                     f"{m['write']['peak'] / GIB:.2f}", round(m["write"]["s"], 1)])
        del m["perm"]
    return r, rows


def lazy_text(rows: list, raw: dict) -> str:
    bounds = "; ".join(f"{k}: {v['bound'] / GIB:.2f} GiB above a {v['baseline'] / GIB:.2f} GiB "
                       "baseline" for k, v in raw.items())
    checks = "; ".join(f"{k}: same permutation {v['same_perm']}, same bytes {v['same_bytes']}"
                       for k, v in raw.items() if "same_bytes" in v)
    loads = "; ".join(f"{k}: {tuple(round(x, 2) for x in v['load_before'])} before, "
                      f"{tuple(round(x, 2) for x in v['load_after'])} after"
                      for k, v in raw.items())
    return ("### Low-memory path: lazy reads, bounded matching, streamed write (2 torch "
            "threads; each pair saved as sharded safetensors, then matched in a fresh process)"
            "\n\n" + table(["pair", "parameters", "path", "matching memory", "sweeps",
                            "matching s", "s per sweep", "in solver", "peak GiB, reading",
                            "peak GiB, matching", "anon / file GiB, matching",
                            "peak GiB, writing B", "writing s"], rows)
            + "\n\nPeak GiB: the process's resident high-water mark in each phase (reset at "
            "its start), including the Python/torch/transformers baseline and the meta-device "
            "model. Bound stated in `match/weight.py` (16 bytes x the largest member tensor + 12 "
            f"bytes x n^2 of the largest group): {bounds}."
            + (f" Eager vs lazy: {checks}." if checks else "") + " Load "
            f"average (1, 5, 15 min): {loads}; 2 cores shared with other jobs.\n\nRaw: `"
            + json.dumps(raw) + "`\n")


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
    parser.add_argument("--lazy-layers", type=int, default=22,
                        help="layers of the Llama-style pair in the llama-lazy part")
    parser.add_argument("--tmp", help="folder for the saved pairs (default: the system's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--modes", help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        layers = int(args.llama_layers)
        if args.child == "prepare":
            print(json.dumps(_prepare_child(args.kind, layers, args.folder)))
        elif args.child == "match":
            print(json.dumps(_match_child(args.kind, layers, args.folder,
                                          args.modes.split(","))))
        else:
            print(json.dumps(_child(args.child, layers)))
        return
    parts = args.parts.split(",")
    text = [f"## Scale\n\nMachine: {machine()}; {os.cpu_count()} cores.\n\nCommand: `python "
            f"bench/scale.py --samples {args.samples} --parts {args.parts} --llama-layers "
            f"{args.llama_layers} --lazy-layers {args.lazy_layers}`\n"]
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
    lazy_rows, lazy_raw = [], {}
    if "gpt2-lazy" in parts:
        lazy_raw["gpt2"], rows_ = lazy_part("gpt2", 0, ["eager", "lazy"], args.tmp)
        lazy_rows += rows_
    if "llama-lazy" in parts:
        lazy_raw[f"llama{args.lazy_layers}"], rows_ = lazy_part("llama", args.lazy_layers,
                                                                ["lazy"], args.tmp)
        lazy_rows += rows_
    if lazy_rows:
        text.append(lazy_text(lazy_rows, lazy_raw))
    emit("\n".join(text), args.out)


if __name__ == "__main__":
    main()
