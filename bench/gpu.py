"""Weight matching on a GPU: ResNet-20 x32, and permalign beside the official code on one card.

    python bench/gpu.py [--parts official,r32] [--seeds 2] [--repeats 2] [--official FILE]
                        [--mlp-pair DIR] [--out FILE]

``official``: the pairs of ``bench/vs_official.py`` (the MLP 3x512 only when ``--mlp-pair``
holds its two cached checkpoints, ``mlp-depth3-width512-fmnist-e5-s0.pt`` and ``-s1.pt``: no
data set is read here), ours with both state dicts on the GPU, the official code with JAX on
its default device (the GPU when jax has CUDA); both after a warm-up run, best of
``--repeats`` per seed, each in a block of its own. The assignments stay on the CPU in both
(SciPy's for the official code, ours ``auto``).

``r32``: weight matching of ResNet-20 x32 (LayerNorm, random initialisations, seeds 0 and 1;
the paper reports 194 s for its trained CIFAR-10 pair on a V100), seed 0, on the GPU: time,
sweeps, time in the solver and in the similarity products, peak GPU memory; then the official
code on the same pair once, unless ``--no-official-r32``.

Needs a CUDA device (prints why and exits 0 otherwise).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _common import emit, machine, random_pair, table
from permalign.match import weight_matching
from permalign.match.weight import matching_objective
from permalign.models import resolve_model
from permalign.io import load_state_dict
from vs_official import (MODELS, best_of, load_official, official_in_solver, ours_in_solver,
                         run_official, to_official)


def pair(key: str, mlp_pair: str | None):
    """(spec, state_a, state_b) on the CPU, or None when the MLP's checkpoints are absent."""
    model_string, kind = MODELS[key]
    if kind == "fmnist":
        folder = Path(mlp_pair) if mlp_pair else None
        files = [folder / f"mlp-depth3-width512-fmnist-e5-s{s}.pt" for s in (0, 1)] \
            if folder else []
        if not files or not all(f.is_file() for f in files):
            return None
        _, spec = resolve_model(model_string, (1, 28, 28), 10)
        return spec, load_state_dict(files[0]), load_state_dict(files[1])
    _, spec, a, b = random_pair(model_string)
    return spec, a, b


DEVICE = ["cuda"]  # --device cpu runs the same steps on the CPU (to try the script)


def on_gpu(state):
    return {k: v.to(DEVICE[0]) for k, v in state.items()}


def official_part(official, keys: list[str], args) -> list[list]:
    rows = []
    for key in keys:
        got = pair(key, args.mlp_pair)
        if got is None:
            print(f"{key}: skipped (no --mlp-pair checkpoints)", flush=True)
            continue
        spec, a, b = got
        ga, gb = on_gpu(a), on_gpu(b)
        weight_matching(spec, ga, gb, seed=0)  # warm-up
        ours, ours_obj, ours_lap = [], [], []
        for seed in range(args.seeds):
            t, lap_t, res = best_of(lambda: weight_matching(spec, ga, gb, seed=seed),
                                    args.repeats, ours_in_solver)
            ours.append(t)
            ours_lap.append(lap_t)
            ours_obj.append(matching_objective(spec, a, b, res.perm))
        ps, pa, pb = to_official(official, spec, a, b)
        run_official(official, ps, pa, pb, 0)  # warm-up (JAX compilation)
        theirs, theirs_obj = [], []
        for seed in range(args.seeds):
            t, _, perm = best_of(lambda: run_official(official, ps, pa, pb, seed),
                                 args.repeats, official_in_solver)
            theirs.append(t)
            theirs_obj.append(matching_objective(spec, a, b, perm))
        mo, mt = statistics.median(ours_obj), statistics.median(theirs_obj)
        row = [key, theirs[0], ours[0], theirs[0] / ours[0], sum(theirs), sum(ours),
               sum(theirs) / sum(ours), sum(ours_lap), f"{mt:.6g}", f"{mo:.6g}",
               "yes" if mo >= mt else "no"]
        print(row, flush=True)
        rows.append(row)
    return rows


def r32_part(official, args) -> str:
    _, spec, a, b = random_pair(args.r32)
    params = sum(v.numel() for v in a.values())
    ga, gb = on_gpu(a), on_gpu(b)
    cuda = DEVICE[0] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    start = time.perf_counter()
    res = weight_matching(spec, ga, gb, seed=0, init=None)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base if cuda else 0
    ours_obj = matching_objective(spec, a, b, res.perm)
    largest = max(g.size for g in spec.groups.values())
    text = (f"ResNet-20 x32 (LayerNorm, random init, {params / 1e6:.0f}M parameters, largest "
            f"group {largest}), weight matching from the identity, seed 0: {seconds:.1f} s, "
            f"{res.info['sweeps']} sweeps, {res.info['solves']} assignments, "
            f"{res.timings['solver']:.1f} s in the solver (CPU), "
            f"{res.timings['similarity']:.1f} s in the similarity products, peak GPU memory "
            f"{peak / 2**30:.2f} GiB beyond the two models ({2 * 4 * params / 2**30:.2f} GiB); "
            f"objective {ours_obj:.6g}.")
    print(text, flush=True)
    if official is not None and not args.no_official_r32:
        ps, pa, pb = to_official(official, spec, a, b)
        start = time.perf_counter()
        perm = run_official(official, ps, pa, pb, 0)  # one run, its compilation included
        theirs = time.perf_counter() - start
        text += (f" The official code on the same pair and card: {theirs:.1f} s (one run, JAX "
                 f"compilation included), objective "
                 f"{matching_objective(spec, a, b, perm):.6g}.")
        print(text, flush=True)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="official,r32")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--official", help="path of the official weight_matching.py")
    parser.add_argument("--mlp-pair", help="folder with the MLP 3x512 pair's checkpoints")
    parser.add_argument("--no-official-r32", action="store_true")
    parser.add_argument("--r32", default="resnet20:width=32,norm=ln", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = parser.parse_args()
    DEVICE[0] = args.device
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py skipped: no CUDA device")
        return
    official, where = load_official(args.official)
    if official is None:
        print(f"official code not run: {where}")
    parts = args.parts.split(",")
    sections = []
    if "official" in parts and official is not None:
        import jax
        rows = official_part(official, args.models.split(","), args)
        sections.append(
            f"### permalign (GPU) beside the official code (JAX on {jax.devices()[0]})\n\n"
            f"Every seed: best of {args.repeats} runs; {args.seeds} seeds. Objectives: sum "
            "<W_A, pi(W_B)> (float64), median over the seeds.\n\n" + table(
                ["model", "official s (seed 0)", "permalign s (seed 0)", "speed-up (seed 0)",
                 f"official s ({args.seeds} seeds)", f"permalign s ({args.seeds} seeds)",
                 f"speed-up ({args.seeds} seeds)", "permalign s in solver (CPU)",
                 "official objective (median)", "permalign objective (median)",
                 "objective >= official"], rows))
    if "r32" in parts:
        sections.append("### ResNet-20 x32\n\n" + r32_part(official, args))
    emit(f"## Weight matching on a GPU\n\nMachine: {machine()}\n\nCommand: `python bench/gpu.py "
         f"--parts {args.parts} --seeds {args.seeds} --repeats {args.repeats}`\n\n"
         + "\n\n".join(sections), args.out)


if __name__ == "__main__":
    main()
