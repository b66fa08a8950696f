"""Features of a unit that no other group's permutation changes: sorted weight rows.

Sorting a unit's weight row (one member of its group) forgets the order of every other axis,
so the feature is invariant to all other groups' permutations; comparing such features matches
a group on its own (the ``sorted`` start, and tie-breaking in activation observation).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..permutation import unit_view
from ..spec import PermutationSpec
from .base import default_similarity_key

# Quantile points kept of each sorted weight row: enough to tell units apart, small enough that
# the similarity of a wide layer stays cheap. Identical rows give identical quantiles, so a
# permuted copy is still matched exactly.
QUANTILES = 256


def sorted_rows(tensor: torch.Tensor, member, size: int, points: int = QUANTILES
                ) -> torch.Tensor:
    """Each unit's weights sorted (at most ``points`` evenly spaced order statistics), (n, k).

    The values of a unit's row do not depend on how any other axis is permuted.
    """
    rows = unit_view(tensor.detach().double().cpu(), member, size).sort(dim=1).values
    if rows.shape[1] > points:  # (n, rest) -> (n, points): order statistics at fixed ranks
        ranks = torch.linspace(0, rows.shape[1] - 1, points).round().long()
        rows = rows[:, ranks]
    return rows


def sorted_similarity(spec: PermutationSpec, group: str, state_a: Mapping[str, torch.Tensor],
                      state_b: Mapping[str, torch.Tensor],
                      use_key: Callable[[str], bool] = default_similarity_key) -> torch.Tensor:
    """``S[i, j] = sum over members of <sorted(A_i), sorted(B_j)>``, (n, n) float64.

    Maximising the sum over a matching is minimising the squared distance between sorted rows
    (row norms are the same for every matching), so a permuted copy scores highest exactly at
    the true permutation.
    """
    size = spec.groups[group].size
    sim = torch.zeros(size, size, dtype=torch.float64)
    for m in spec.groups[group].members:
        if use_key(m.key) and state_a[m.key].is_floating_point():
            sim += sorted_rows(state_a[m.key], m, size) @ sorted_rows(state_b[m.key], m, size).T
    return sim
