"""Mixture of experts: shared hidden groups, one per expert, and the experts moving too.

    python bench/moe_groups.py [--cases mixtral qwen2_moe ...] [--out bench/results/moe_groups.md]

Infers the spec of each catalogue MoE model (transformers 5; Mixtral for both experts kernels,
``grouped_mm``, the default, and ``batched_mm``) and compares three specs built from it:
*moving experts* (the inferred spec: per-expert hidden groups and a carrier group moving the
experts with the router's rows, where the model confirms it), *experts in place* (carriers
removed, their axes fixed again) and *shared* (each layer's per-expert groups merged into one
group without ``select``, the phase-2 spec). For each: groups and units, the largest output
change under 3 random permutations (``load_state_dict`` + forward), planted permutation
recovered from the identity start, and the weight-matching objective between two independent
initialisations (seeds 0 and 1; ``init="auto"``), in total and on the expert and router
tensors only, with the matching time.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import warnings

import torch

from _common import emit, machine, table
from permalign.infer import infer_spec
from permalign.match import weight_matching
from permalign.match.weight import matching_objective
from permalign.permutation import apply_permutation
from permalign.spec import PermutationSpec
from permalign.testing import CASES
from permalign.testing.harness import permuted_outputs_differ, planted_match


def shared_spec(spec: PermutationSpec) -> PermutationSpec:
    """``spec`` with each layer's per-expert groups merged into one unrestricted group."""
    out = PermutationSpec(fixed=dict(spec.fixed))
    merged: set[str] = set()
    for name, group in spec.groups.items():
        if not any(m.select for m in group.members):
            out.add_group(name, group.size, list(group.members))
            continue
        layer = group.members[0].key.rpartition(".experts.")[0]
        if layer not in merged:
            merged.add(layer)
            out.add_group(f"{layer}.experts.hidden", group.size,
                          [dataclasses.replace(m, select=()) for m in group.members])
    return out


def experts_in_place(spec: PermutationSpec) -> PermutationSpec:
    """``spec`` without its carrier groups: their axes fixed again, the slots kept."""
    carriers = spec.carried()
    fixed = dict(spec.fixed)
    out = PermutationSpec(fixed=fixed)
    for name, group in spec.groups.items():
        if name in carriers:
            fixed.update({f"{m.key}:{m.axis}": "experts held in place" for m in group.members})
        else:
            out.add_group(name, group.size, list(group.members))
    return out


def moe_keys(spec: PermutationSpec) -> set[str]:
    """The expert tensors and every tensor a carrier moves (the routers)."""
    keys = {m.key for g in spec.groups.values() for m in g.members if ".experts." in m.key}
    return keys | {m.key for n in spec.carried() for m in spec.groups[n].members}


def part_objective(spec, state_a, state_b, perm, keys) -> float:
    """<A, pi(B)> summed over ``keys`` only."""
    permuted = apply_permutation(spec, perm, state_b)
    return sum(float((state_a[k].double() * permuted[k].double()).sum()) for k in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", nargs="*",
                        default=["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
    parser.add_argument("--out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for short in args.cases:
        case = CASES[f"transformers/{short}"]
        inputs, kwargs = case.inputs()
        kernels = ("grouped_mm", "batched_mm") if short == "mixtral" else ("default",)
        for kernel in kernels:
            model, other = case.model(0), case.model(1)
            if kernel != "default":
                for m in (model, other):
                    m.config._experts_implementation = kernel  # read at every forward
            moving = infer_spec(model, inputs, example_kwargs=kwargs, check=False)
            in_place = experts_in_place(moving)
            keys = moe_keys(moving)
            state_a = {k: v.detach().clone() for k, v in model.state_dict().items()}
            state_b = {k: v.detach().clone() for k, v in other.state_dict().items()}
            for label, spec in (("shared (phase 2)", shared_spec(in_place)),
                                ("experts in place", in_place),
                                ("moving experts", moving)):
                change = max(permuted_outputs_differ(model, spec, inputs, kwargs,
                                                     torch.Generator().manual_seed(s))
                             for s in range(3))
                planted = planted_match(spec, state_a, "identity")
                began = time.perf_counter()
                result = weight_matching(spec, state_a, state_b, init="auto", seed=0)
                seconds = time.perf_counter() - began
                rows.append([short, kernel, label, len(spec.groups),
                             sum(g.size for g in spec.groups.values()), f"{change:.1e}",
                             "yes" if planted.recovered else "no",
                             f"{matching_objective(spec, state_a, state_b, result.perm):.4f}",
                             f"{part_objective(spec, state_a, state_b, result.perm, keys):.4f}",
                             f"{seconds:.2f}"])
    command = "python bench/moe_groups.py --out bench/results/moe_groups.md"
    text = "\n".join([
        "## Mixture of experts: per-expert hidden groups and moving experts", "",
        f"Machine: {machine()}", "",
        f"Command: `{command}`", "",
        "Catalogue MoE models (2 layers, 4 experts, hidden 32, random init). Output change: "
        "largest relative change of any output over 3 random permutations (float64 where the "
        "kernel runs in it, else float32). Objective: weight matching (`init=\"auto\"`) of "
        "seed 1 onto seed 0, total and on the expert and router tensors; s: its seconds.", "",
        table(["model", "kernel", "spec", "groups", "units", "output change",
               "planted recovered (identity)", "objective", "objective, experts + router",
               "s"], rows)])
    emit(text, args.out)


if __name__ == "__main__":
    main()
