"""Weight matching (Git Re-Basin Algorithm 1): coordinate descent over permutation groups.

For group p the similarity is ``S = sum over members (key, axis) of A_rows @ B_rows.T``, with
model B's other axes already permuted. Instead of rebuilding permuted copies of B each time, a
running copy of B with *every* group's current permutation applied is kept; for group p the
columns of ``A_rows @ B_cur_rows.T`` are then un-permuted by p's own permutation, which is the
same matrix. After a group's permutation changes only that group's tensors are re-gathered.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .. import lap
from ..errors import SpecError
from ..permutation import (apply_permutation, identity_permutation, member_index,
                           random_permutation, unit_view)
from ..spec import Permutation, PermutationSpec
from ..statedict import float_state
from .base import MatchResult, Option, default_similarity_key, register, solver_option
from .init import run_from_starts




class _Matcher:
    """State of one weight-matching run: A's rows, B with the current permutation, timers."""

    def __init__(self, spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                 state_b: Mapping[str, torch.Tensor], perm: Permutation,
                 use_key: Callable[[str], bool], device: torch.device | str | None,
                 solver: str) -> None:
        self.spec, self.solver = spec, solver
        keys = {m.key for g in spec.groups.values() for m in g.members if use_key(m.key)}
        self.a = float_state({k: state_a[k] for k in keys}, device)
        b = float_state({k: state_b[k] for k in keys}, device)
        self.perm = {n: torch.as_tensor(p, dtype=torch.long, device=next(iter(b.values())).device
                                        if b else None) for n, p in perm.items()}
        self.members = {n: [m for m in g.members if m.key in keys] for n, g in spec.groups.items()}
        # B with every group's current permutation applied, on every axis
        self.b_cur = apply_permutation(spec.restricted(keys), self.perm, b)
        # A's rows never change: build them once
        self.a_rows = {(n, i): unit_view(self.a[m.key], m, spec.groups[n].size)
                       for n in spec.groups for i, m in enumerate(self.members[n])}
        self.time_similarity = 0.0
        self.time_solver = 0.0

    def similarity(self, name: str) -> np.ndarray:
        """``S[i, j]`` = similarity of A's unit i and B's unit j in group ``name``, (n, n)."""
        start = time.perf_counter()
        size = self.spec.groups[name].size
        members = self.members[name]
        if not members:
            return np.zeros((size, size))
        m_cur = None
        for i, m in enumerate(members):
            prod = self.a_rows[(name, i)] @ unit_view(self.b_cur[m.key], m, size).T  # (n, n)
            m_cur = prod if m_cur is None else m_cur + prod
        # column k of m_cur is B's unit perm[k]: put it back in B's original order
        sim = torch.empty_like(m_cur)
        sim[:, self.perm[name]] = m_cur
        out = sim.double().cpu().numpy()
        self.time_similarity += time.perf_counter() - start
        return out

    def assign(self, sim: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        result = lap.solve(sim, self.solver)
        self.time_solver += time.perf_counter() - start
        return result

    def set_perm(self, name: str, new: torch.Tensor) -> None:
        """Change group ``name``'s permutation and re-gather only the tensors it touches."""
        old = self.perm[name]
        relative = torch.argsort(old)[new]  # B_cur[relative] == B permuted by `new`
        for m in self.members[name]:
            t = self.b_cur[m.key]
            self.b_cur[m.key] = torch.index_select(
                t, m.axis, member_index(m, t.shape[m.axis], relative))
        self.perm[name] = new

    def objective(self) -> float:
        """Sum over matched tensors of <A, pi(B)>."""
        return float(sum(float(torch.dot(self.a[k].reshape(-1), self.b_cur[k].reshape(-1)))
                         for k in self.a))


def weight_matching(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                    state_b: Mapping[str, torch.Tensor], *, seed: int = 0, max_iter: int = 100,
                    init: Permutation | str | None = None,
                    device: torch.device | str | None = None, solver: str = "scipy",
                    similarity_keys: Callable[[str], bool] | None = None, restarts: int = 0,
                    model: torch.nn.Module | None = None, inputs: tuple | None = None,
                    input_kwargs: dict | None = None) -> MatchResult:
    """Permutation of B's units that maximises sum <W_A, pi(W_B)> (paper Algorithm 1).

    Groups are visited in a fresh random order each sweep (seeded by ``seed``); the loop stops
    after a sweep with no improvement, or after ``max_iter`` sweeps. ``init`` is the starting
    permutation (identity if None: the paper's Algorithm 1), or a start's name (``"identity"``,
    ``"sorted"``, ``"activation"``, ``"auto"``: see :mod:`permalign.match.init`; the
    activation start observes ``model`` on ``inputs``). Products run on ``device`` (default:
    where state_a lives). ``restarts`` > 0 also runs from that many random starting
    permutations and keeps the run with the highest objective.
    """
    if isinstance(init, str):  # a named start: match/init.py runs it (and maybe others)
        return run_from_starts(lambda perm: weight_matching(
            spec, state_a, state_b, seed=seed, max_iter=max_iter, init=perm, device=device,
            solver=solver, similarity_keys=similarity_keys, restarts=restarts), spec, state_a,
            state_b, init, seed=seed, solver=solver, similarity_keys=similarity_keys,
            model=model, inputs=inputs, input_kwargs=input_kwargs)
    if restarts > 0:  # also start from random permutations; keep the best objective
        runs = [weight_matching(spec, state_a, state_b, seed=seed, max_iter=max_iter, init=init,
                                device=device, solver=solver, similarity_keys=similarity_keys)]
        for r in range(restarts):
            start_perm = random_permutation(spec, torch.Generator().manual_seed(seed + 1 + r))
            runs.append(weight_matching(spec, state_a, state_b, seed=seed + 1 + r,
                                        max_iter=max_iter, init=start_perm, device=device,
                                        solver=solver, similarity_keys=similarity_keys))
        best = max(runs, key=lambda res: res.history[-1] if res.history else float("-inf"))
        best.info["restarts"] = restarts
        return best
    start = time.perf_counter()
    spec.validate(state_a)
    spec.validate(state_b)
    start_name = "identity" if init is None else "given"
    perm = init if init is not None else identity_permutation(spec)
    spec.validate_permutation(perm)
    if device is None:
        device = next((v.device for v in state_a.values()), "cpu")
    matcher = _Matcher(spec, state_a, state_b, perm, similarity_keys or default_similarity_key,
                       device, solver)
    names = list(spec.groups)
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    converged = False
    for _ in range(max_iter):
        progress = False
        for idx in torch.randperm(len(names), generator=generator).tolist():
            name = names[idx]
            sim = matcher.similarity(name)
            old = matcher.perm[name].cpu().numpy()
            new = matcher.assign(sim)
            rows = np.arange(len(new))
            old_value, new_value = sim[rows, old].sum(), sim[rows, new].sum()
            if new_value > old_value + 1e-9 * max(1.0, abs(old_value)):
                progress = True
                matcher.set_perm(name, torch.as_tensor(new, device=matcher.perm[name].device))
        history.append(matcher.objective())
        if not progress:
            converged = True
            break
    if not all(np.isfinite(history)):
        raise SpecError("weight matching produced a non-finite objective; check the weights")
    total = time.perf_counter() - start
    info = {"sweeps": len(history), "seed": seed, "solver": solver, "init": start_name}
    if start_name == "identity":
        info["identity_objective"] = history[-1] if history else matcher.objective()
    return MatchResult(
        perm={n: p.cpu() for n, p in matcher.perm.items()}, method="weight", history=history,
        converged=converged,
        timings={"total": total, "similarity": matcher.time_similarity,
                 "solver": matcher.time_solver},
        info=info)


def matching_objective(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                       state_b: Mapping[str, torch.Tensor], perm: Permutation) -> float:
    """The weight-matching objective sum <W_A, pi(W_B)> of a given permutation."""
    keys = {m.key for g in spec.groups.values() for m in g.members
            if default_similarity_key(m.key)}
    permuted = apply_permutation(spec.restricted(keys), perm, {k: state_b[k] for k in keys})
    return float(sum(torch.dot(state_a[k].double().reshape(-1),
                               permuted[k].double().reshape(-1)) for k in keys))


@register("weight", needs_data=lambda options: options.get("init") == "activation", options=[
    Option("init", str, "auto", "starting point: auto = the best of identity and sorted "
           "weights (and activations when data is given); identity = the paper's Algorithm 1",
           choices=("auto", "identity", "sorted", "activation")),
    Option("max_iter", int, 100, "most coordinate-descent sweeps", minimum=1),
    Option("restarts", int, 0, "extra runs from random starting permutations (best kept)",
           minimum=0),
    Option("start_examples", int, 256, "training inputs the activation start observes",
           minimum=1),
    solver_option()])
def weight_method(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                  state_b: Mapping[str, torch.Tensor], *, init: str = "auto",
                  model: torch.nn.Module | None = None, data: Any = None, seed: int = 0,
                  device: torch.device | str | None = None, max_iter: int = 100,
                  restarts: int = 0, start_examples: int = 256, solver: str = "scipy"
                  ) -> MatchResult:
    """Permutation of B's units maximising sum <W_A, pi(W_B)>, from the best of several starts.

    ``init="identity"`` is the paper's Algorithm 1. With ``data`` the activation start joins
    ``auto``, on the first ``start_examples`` training inputs.
    """
    inputs = (data.train_x[:start_examples],) if data is not None and model is not None \
        else None
    return weight_matching(spec, state_a, state_b, init=init, model=model, inputs=inputs,
                           seed=seed, device=device, max_iter=max_iter, restarts=restarts,
                           solver=solver)
