"""Starting points for weight matching, and running it from several of them.

Coordinate descent (paper Algorithm 1) stops in a local optimum on many real architectures
when started from the identity. A start is a function ``(spec, state_a, state_b, **context)
-> Permutation``; :func:`run_from_starts` runs weight matching from each named start and keeps
the result with the highest objective, recording every start's objective in ``info``.

- ``identity``: the paper's Algorithm 1.
- ``sorted``: each group matched on its own by *sorted* weights. Sorting a unit's weight row
  (one member of the group) forgets the order of every other axis, so the feature is invariant
  to all other groups' permutations; a permuted copy is recovered by one assignment per group,
  on any architecture, without data.
- ``activation``: each group matched by the correlation of its units' activations on example
  inputs (needs the model and inputs; see :mod:`permalign.match.observe`).
- ``random``: a random permutation (for restarts and tests).
- ``auto``: ``identity`` and ``sorted`` (and ``activation`` when inputs are given); the best.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .. import lap
from ..errors import PermalignError
from ..permutation import identity_permutation, random_permutation
from ..spec import Permutation, PermutationSpec
from ..statedict import permuted_view
from .base import MatchResult, default_similarity_key
from .invariants import sorted_similarity

Start = Callable[..., Permutation]
STARTS: dict[str, Start] = {}



def start(name: str) -> Callable[[Start], Start]:
    """Decorator adding a starting-point strategy under ``name``."""
    def wrap(fn: Start) -> Start:
        STARTS[name] = fn
        return fn
    return wrap


@start("identity")
def identity_start(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                   state_b: Mapping[str, torch.Tensor], **_: Any) -> Permutation:
    """Every unit of B on its own index (paper Algorithm 1)."""
    return identity_permutation(spec)


@start("random")
def random_start(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                 state_b: Mapping[str, torch.Tensor], *, seed: int = 0, **_: Any
                 ) -> Permutation:
    return random_permutation(spec, torch.Generator().manual_seed(seed))


@start("sorted")
def sorted_start(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                 state_b: Mapping[str, torch.Tensor], *, solver: str = "auto",
                 similarity_keys: Callable[[str], bool] | None = None, **_: Any
                 ) -> Permutation:
    """One assignment per group on the similarity of sorted weight rows (carried slots after
    their carriers, against the slice each carrier put in their place)."""
    use_key = similarity_keys or default_similarity_key
    slots = {s for carried in spec.carried().values() for s in carried.slots}
    perm = {name: torch.as_tensor(lap.solve(sorted_similarity(
        spec, name, state_a, state_b, use_key).numpy(), solver), dtype=torch.long)
        for name in spec.groups if name not in slots}  # slots: seat_carried matches them
    return seat_carried(spec, perm, state_a, state_b, solver=solver, use_key=use_key)


def seat_carried(spec: PermutationSpec, perm: Permutation, state_a: Mapping[str, torch.Tensor],
                 state_b: Mapping[str, torch.Tensor], *, solver: str = "auto",
                 use_key: Callable[[str], bool] = default_similarity_key) -> Permutation:
    """``perm`` (whose slot groups may be missing) with every carried slot group matched by
    sorted weights against the slice its carrier's permutation puts in its place (a start that matched each slot against B's
    slice of the same index, before the slices moved, would pair the wrong experts' units)."""
    carried = spec.carried()
    if not carried:
        return perm
    carriers = PermutationSpec({n: spec.groups[n] for n in carried})
    moved = permuted_view(carriers, {n: perm[n] for n in carried}, state_b)
    out = dict(perm)
    for group in carried.values():
        for name in group.slots:
            out[name] = torch.as_tensor(lap.solve(sorted_similarity(
                spec, name, state_a, moved, use_key).numpy(), solver), dtype=torch.long)
    return out


@start("activation")
def activation_start(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                     state_b: Mapping[str, torch.Tensor], *, model: torch.nn.Module | None = None,
                     inputs: tuple | None = None, input_kwargs: dict | None = None,
                     solver: str = "auto", **_: Any) -> Permutation:
    """One assignment per group on the correlation of its units' activations on ``inputs``."""
    if model is None or inputs is None:
        raise PermalignError("the activation start needs the model and example inputs")
    from .observe import activation_similarities
    sims = activation_similarities(model, spec, state_a, state_b, inputs, input_kwargs or {})
    perm = {name: torch.as_tensor(lap.solve(sim.numpy(), solver), dtype=torch.long)
            for name, sim in sims.items()}
    return seat_carried(spec, perm, state_a, state_b, solver=solver)


def resolve_starts(init: str | Sequence[str], *, has_inputs: bool) -> list[str]:
    """The start names ``init`` stands for ("auto" expands to the measured defaults)."""
    names = [init] if isinstance(init, str) else list(init)
    out: list[str] = []
    for name in names:
        expanded = (["identity", "sorted"] + (["activation"] if has_inputs else [])
                    if name == "auto" else [name])
        for n in expanded:
            if n not in STARTS:
                raise PermalignError(f"unknown weight-matching start {n!r}; use auto or one of "
                                     f"{', '.join(sorted(STARTS))}")
            if n not in out:
                out.append(n)
    return out


def final_objective(result: MatchResult) -> float:
    return result.history[-1] if result.history else float("-inf")


def run_from_starts(run: Callable[[Permutation], MatchResult], spec: PermutationSpec,
                    state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                    init: str | Sequence[str], **context: Any) -> MatchResult:
    """Run ``run(start_permutation)`` from each start ``init`` names; keep the best objective.

    The result's ``info`` records ``init`` (the start that won), ``init_objectives`` (the final
    objective from every start tried) and ``identity_objective`` when the identity was tried.
    Ties go to the start named first.
    """
    names = resolve_starts(init, has_inputs=context.get("inputs") is not None)
    began = time.perf_counter()
    runs: dict[str, MatchResult] = {}
    for name in names:
        t0 = time.perf_counter()
        perm = STARTS[name](spec, state_a, state_b, **context)
        t1 = time.perf_counter()
        result = run(perm)
        result.timings["start"] = t1 - t0
        result.info["start_seconds"] = t1 - t0
        runs[name] = result
    best = max(names, key=lambda n: (final_objective(runs[n]), -names.index(n)))
    result = runs[best]
    result.info["init"] = best
    result.info["init_objectives"] = {n: final_objective(r) for n, r in runs.items()}
    if "identity" in runs:
        result.info["identity_objective"] = final_objective(runs["identity"])
    result.timings["all_starts"] = time.perf_counter() - began
    return result
