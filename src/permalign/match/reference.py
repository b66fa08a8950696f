"""The literal, slow form of weight matching, kept to verify the fast one.

For every group it rebuilds model B's tensors with all other permutations applied, as the
official implementation does. Same inputs and seed give the same permutation as
:func:`permalign.match.weight.weight_matching` (tested); ``bench/weight_matching.py`` times both.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .. import lap
from ..permutation import identity_permutation, permute_tensor, unit_view
from ..errors import SpecError
from ..spec import Member, PermutationSpec
from .base import MatchResult
from .base import default_similarity_key


def _permuted_except(spec: PermutationSpec, perm, key: str, tensor: torch.Tensor,
                     skip: tuple[str, Member]) -> torch.Tensor:
    """``tensor`` with every group's permutation applied except group ``skip`` on its member."""
    return permute_tensor(tensor, [(name, m) for name, group in spec.groups.items()
                                   for m in group.members if m.key == key and (name, m) != skip],
                          perm)


def weight_matching_reference(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                              state_b: Mapping[str, torch.Tensor], *, seed: int = 0,
                              max_iter: int = 100, init=None, solver: str = "scipy"
                              ) -> MatchResult:
    """Algorithm 1 written out directly (no caching); for tests and benchmarks. Specs with
    carrier groups (experts that move, :meth:`PermutationSpec.carried`) are refused: the
    literal algorithm has no nested step for them."""
    if spec.carried():
        raise SpecError("the reference weight matching has no nested step for carrier groups "
                        f"({', '.join(spec.carried())}); use weight_matching")
    perm = {n: torch.as_tensor(p) for n, p in (init or identity_permutation(spec)).items()}
    a = {k: v.float() for k, v in state_a.items() if v.is_floating_point()}
    b = {k: v.float() for k, v in state_b.items() if v.is_floating_point()}
    names = list(spec.groups)
    generator = torch.Generator().manual_seed(seed)
    sweeps, converged = 0, False
    for _ in range(max_iter):
        sweeps += 1
        progress = False
        for idx in torch.randperm(len(names), generator=generator).tolist():
            name = names[idx]
            size = spec.groups[name].size
            sim = torch.zeros(size, size)
            for m in spec.groups[name].members:
                if not default_similarity_key(m.key):
                    continue
                w_b = _permuted_except(spec, perm, m.key, b[m.key], (name, m))
                sim += unit_view(a[m.key], m, size) @ unit_view(w_b, m, size).T
            sim_np = sim.double().numpy()
            new = lap.solve(sim_np, solver)
            rows = np.arange(size)
            old_value = sim_np[rows, perm[name].numpy()].sum()
            new_value = sim_np[rows, new].sum()
            if new_value > old_value + 1e-9 * max(1.0, abs(old_value)):
                progress = True
                perm[name] = torch.as_tensor(new)
        if not progress:
            converged = True
            break
    return MatchResult(perm=perm, method="weight-reference", converged=converged,
                       info={"sweeps": sweeps})
