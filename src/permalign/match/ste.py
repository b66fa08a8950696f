"""Straight-through-estimator matching (Git Re-Basin Algorithm 2).

Free weights theta~ start at theta_A. Each minibatch: project theta~ onto the permutations of
theta_B by weight matching (warm-started from the previous permutation), run the model at the
midpoint 1/2 (theta_A + [theta~ + stop_grad(pi(theta_B) - theta~)]) and take an SGD step on its
cross-entropy. The gradient flows to theta~ straight through the projection. The permutation with
the lowest midpoint loss on a fixed evaluation batch is kept.

With a process group each rank takes its share of every minibatch and the gradients are summed,
weighted by the shares (the gradient of the whole minibatch's mean loss), so every rank keeps
the same free weights; the evaluation batch is scored in shares too. Models with BatchNorm are
the exception: in training mode a BN layer normalises by its whole minibatch's statistics,
which no share has, so there every rank runs the whole minibatch (the same result as one
process, no speed-up).
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from .. import distributed
from ..data import Dataset, batches
from ..errors import PermalignError
from ..permutation import apply_permutation
from ..spec import PermutationSpec
from ..statedict import has_batchnorm
from .base import MatchResult, Option, register
from .weight import weight_matching


def _midpoint_loss(model: nn.Module, state_a, permuted_b, free, x, y, *,
                   reduction: str = "mean") -> torch.Tensor:
    params = {}
    for k, a in state_a.items():
        if k in free:  # straight-through: value of pi(B), gradient to the free weights
            projected = free[k] + (permuted_b[k] - free[k]).detach()
            params[k] = 0.5 * (a + projected)
        elif a.is_floating_point():
            params[k] = 0.5 * (a + permuted_b[k])
        else:
            params[k] = a
    return F.cross_entropy(functional_call(model, params, (x,)), y, reduction=reduction)


@register("ste", needs_data=True, options=[
    Option("epochs", int, 1, "passes over the training data", minimum=1),
    Option("lr", float, 0.3, "SGD learning rate", minimum=0.0),
    Option("momentum", float, 0.9, "SGD momentum", minimum=0.0, below=1.0),
    Option("batch_size", int, 128, "minibatch size", minimum=1),
    Option("eval_examples", int, 2000, "training examples scoring each permutation", minimum=1)])
def ste_matching(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                 state_b: Mapping[str, torch.Tensor], *, model: nn.Module | None = None,
                 data: Dataset | None = None, epochs: int = 1, lr: float = 0.3,
                 momentum: float = 0.9, batch_size: int = 128, seed: int = 0,
                 device: torch.device | str = "cpu", eval_examples: int = 2000,
                 progress: bool = False) -> MatchResult:
    """Permutation of B's units that minimises the loss of the midpoint (paper Algorithm 2)."""
    if model is None or data is None:
        raise PermalignError("STE matching needs the model and training data (pass --dataset)")
    if epochs < 1:
        raise PermalignError("STE matching needs at least one epoch")
    start = time.perf_counter()
    model = model.to(device).train()
    a = {k: v.detach().to(device) for k, v in state_a.items()}
    b = {k: v.detach().to(device) for k, v in state_b.items()}
    param_names = {n for n, _ in model.named_parameters()}
    free = {k: a[k].clone().requires_grad_(True) for k in param_names}
    optimizer = torch.optim.SGD(free.values(), lr=lr, momentum=momentum)
    x, y = data.train_x.to(device), data.train_y.to(device)
    eval_x, eval_y = x[:eval_examples], y[:eval_examples]
    generator = torch.Generator().manual_seed(seed)

    def project(perm):
        current = {k: v.detach() for k, v in free.items()}
        full = {**a, **current}
        return weight_matching(spec, full, b, seed=seed, init=perm, device=device).perm

    local_x, local_y = distributed.shard(eval_x, eval_y)
    shared = not has_batchnorm(model)  # see the module docstring

    def eval_loss(perm) -> float:
        with torch.no_grad():
            permuted = apply_permutation(spec, perm, b)
            model.eval()
            total = _midpoint_loss(model, a, permuted, {}, local_x, local_y, reduction="sum")
            model.train()
            (total,) = distributed.all_reduce_sums(total)
            return float(total) / len(eval_x)

    perm = project(None)  # plain weight matching is the starting point and first candidate
    best_perm, best_loss = perm, eval_loss(perm)
    history = [best_loss]
    steps = epochs * -(-len(x) // batch_size)
    bar = tqdm(total=steps, disable=None if progress and distributed.is_main() else True,
               desc="ste", leave=False)
    for _ in range(epochs):
        for xb, yb in batches(x, y, batch_size, shuffle=True, generator=generator):
            perm = project(perm)
            permuted = apply_permutation(spec, perm, b)
            start_row, stop_row = distributed.shard_bounds(len(xb)) if shared else (0, len(xb))
            optimizer.zero_grad(set_to_none=True)
            if stop_row > start_row:
                _midpoint_loss(model, a, permuted, free, xb[start_row:stop_row],
                               yb[start_row:stop_row]).backward()
            if shared:
                distributed.average_gradients(list(free.values()),
                                              (stop_row - start_row) / len(xb))
            optimizer.step()
            bar.update(1)
        perm = project(perm)
        current = eval_loss(perm)
        history.append(current)
        if current < best_loss:
            best_perm, best_loss = perm, current
    bar.close()
    model.eval()
    return MatchResult(perm={k: v.cpu() for k, v in best_perm.items()}, method="ste",
                       history=history, timings={"total": time.perf_counter() - start},
                       info={"epochs": epochs, "lr": lr, "best_midpoint_loss": best_loss})
