"""Mixture of experts: one hidden group per expert against one shared by all experts.

    python bench/moe_groups.py [--out bench/results/moe_groups.md]

Infers the spec of the catalogue's Mixtral (transformers 5) for each experts kernel
(``grouped_mm``, the default, and ``batched_mm``), and builds the phase-2 spec from it by
merging each layer's per-expert groups into one group without ``select``. For both specs:
groups and units, the largest output change under 3 random permutations (``load_state_dict``
+ forward), planted permutation recovered from the identity start, and the weight-matching
objective between two independent initialisations (seeds 0 and 1), in total and on the
expert tensors only.
"""
from __future__ import annotations

import argparse
import dataclasses
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


def expert_objective(spec, state_a, state_b, perm) -> float:
    """<A, pi(B)> summed over the expert tensors only."""
    permuted = apply_permutation(spec, perm, state_b)
    return sum(float((state_a[k].double() * permuted[k].double()).sum())
               for k in state_a if ".experts." in k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    case = CASES["transformers/mixtral"]
    inputs, kwargs = case.inputs()
    rows = []
    for kernel in ("grouped_mm", "batched_mm"):
        model, other = case.model(0), case.model(1)
        for m in (model, other):
            m.config._experts_implementation = kernel  # read at every forward
        per_expert = infer_spec(model, inputs, example_kwargs=kwargs, check=False)
        state_a = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state_b = {k: v.detach().clone() for k, v in other.state_dict().items()}
        for label, spec in (("shared (phase 2)", shared_spec(per_expert)),
                            ("per expert", per_expert)):
            change = max(permuted_outputs_differ(model, spec, inputs, kwargs,
                                                 torch.Generator().manual_seed(s))
                         for s in range(3))
            planted = planted_match(spec, state_a, "identity")
            result = weight_matching(spec, state_a, state_b, init="auto", seed=0)
            rows.append([kernel, label, len(spec.groups),
                         sum(g.size for g in spec.groups.values()), f"{change:.1e}",
                         "yes" if planted.recovered else "no",
                         f"{matching_objective(spec, state_a, state_b, result.perm):.4f}",
                         f"{expert_objective(spec, state_a, state_b, result.perm):.4f}"])
    text = "\n".join([
        "## Mixture of experts: per-expert hidden groups", "",
        f"Machine: {machine()}", "",
        "Command: `python bench/moe_groups.py --out bench/results/moe_groups.md`", "",
        "Catalogue Mixtral (2 layers, 4 experts, hidden 32, intermediate 64, random init). "
        "Output change: largest relative change of any output over 3 random permutations "
        "(float64 where the kernel runs in it, else float32). Objective: weight matching "
        "(`init=\"auto\"`) of seed 1 onto seed 0, total and on the expert tensors.", "",
        table(["kernel", "hidden groups", "groups", "units", "output change",
               "planted recovered (identity)", "objective", "objective, expert tensors"],
              rows)])
    emit(text, args.out)


if __name__ == "__main__":
    main()
