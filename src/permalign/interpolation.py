"""Interpolation curves between two models and their barriers (paper Def. 2.2)."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from . import distributed
from .data import Dataset
from .evaluate import evaluate
from .repair import Repairer
from .statedict import has_batchnorm, lerp_state, reset_bn_stats

if TYPE_CHECKING:
    from .spec import PermutationSpec

DEFAULT_POINTS = 25
METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")


def barrier(values: list[float]) -> float:
    """Paper Def. 2.2 on a grid including both ends: max over lambda minus the endpoints' mean."""
    return max(values) - 0.5 * (values[0] + values[-1])


@dataclass
class Curve:
    """Metrics of (1 - lambda) A + lambda B along a grid of lambda (accuracies are fractions)."""

    lambdas: list[float]
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

    def barriers(self) -> dict[str, float]:
        """Loss barriers, and accuracy barriers as barriers of the error rate (1 - acc)."""
        return {
            "train_loss": barrier(self.train_loss),
            "test_loss": barrier(self.test_loss),
            "train_acc": barrier([1 - a for a in self.train_acc]),
            "test_acc": barrier([1 - a for a in self.test_acc]),
        }

    def to_json(self) -> dict[str, Any]:
        return {"barrier": self.barriers(), "curve": asdict(self)}


def lambda_grid(points: int = DEFAULT_POINTS) -> list[float]:
    if points < 2:
        raise ValueError("an interpolation curve needs at least 2 points")
    return [i / (points - 1) for i in range(points)]


def evaluate_state(model: nn.Module, state: Mapping[str, torch.Tensor], data: Dataset, *,
                   bn_reset: bool, bn_batches: int = 20, batch_size: int = 2048
                   ) -> dict[str, float]:
    """Load ``state`` into ``model`` (re-estimating BN stats if asked) and evaluate both splits."""
    model.load_state_dict(state)
    if bn_reset:
        reset_bn_stats(model, data.train_x, num_batches=bn_batches)
    train_loss, train_acc = evaluate(model, data.train_x, data.train_y, batch_size=batch_size,
                                     task=data.task)
    test_loss, test_acc = evaluate(model, data.test_x, data.test_y, batch_size=batch_size,
                                   task=data.task)
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
            "test_acc": test_acc}


@torch.inference_mode()
def evaluate_lambdas(model: nn.Module, state_a: Mapping[str, torch.Tensor],
                     state_b: Mapping[str, torch.Tensor], lambdas: list[float], x: torch.Tensor,
                     y: torch.Tensor, *, batch_size: int = 2048
                     ) -> list[tuple[float, float]]:
    """``(loss, accuracy)`` of ``(1 - lam) A + lam B`` for every lam, in one pass over ``(x, y)``.

    The interpolated weights are stacked along a new leading axis and the model runs once per
    data chunk for all of them (``torch.func.vmap`` over ``functional_call``), in eval mode with
    the interpolated buffers. Equals :func:`evaluate` on each :func:`lerp_state` to float
    rounding. Each chunk holds ``batch_size // len(lambdas)`` examples (at least 1), so memory
    stays that of one ``batch_size`` batch. With a process group each rank scores its shard.
    """
    n = max(len(x), 1)
    x, y = distributed.shard(x, y)
    count = len(lambdas)
    stacked = {k: (torch.stack([torch.lerp(a, state_b[k].to(a.device), lam) for lam in lambdas])
                   if a.is_floating_point() else a.expand(count, *a.shape))
               for k, a in state_a.items()}  # (K, *shape) each

    def logits_of(weights: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(model, weights, (xb,))

    run = vmap(logits_of, in_dims=(0, None))
    was_training = model.training
    model.eval()
    total_loss = torch.zeros(count, dtype=torch.float64, device=x.device)
    correct = torch.zeros(count, dtype=torch.long, device=x.device)
    chunk = max(1, batch_size // count)
    try:
        for start in range(0, len(x), chunk):
            xb, yb = x[start:start + chunk], y[start:start + chunk]
            logits = run(stacked, xb)  # (K, B, classes)
            losses = F.cross_entropy(logits.flatten(0, 1), yb.repeat(count), reduction="none")
            total_loss += losses.view(count, -1).sum(1).double()
            correct += (logits.argmax(dim=2) == yb).sum(1)
    finally:
        model.train(was_training)
    total_loss, correct = distributed.all_reduce_sums(total_loss, correct)
    return [(float(total_loss[i]) / n, float(correct[i]) / n) for i in range(count)]


def interpolation_curve(model: nn.Module, state_a: Mapping[str, torch.Tensor],
                        state_b: Mapping[str, torch.Tensor], data: Dataset, *,
                        points: int = DEFAULT_POINTS, bn_reset: bool | None = None,
                        bn_batches: int = 20, repair: bool = False,
                        spec: "PermutationSpec | None" = None,
                        device: torch.device | str = "cpu", batch_size: int = 2048,
                        progress: bool = False, vectorize: bool | None = None) -> Curve:
    """Loss and accuracy on train and test data of every point of the line from A to B.

    ``bn_reset`` (default: on for models with BatchNorm) re-estimates running statistics at
    every point. ``repair`` applies REPAIR (Jordan et al.) to every interior point; it needs
    the model's ``spec``, and replaces the BN reset at those points.

    ``vectorize=True`` evaluates every point in the same data pass (:func:`evaluate_lambdas`);
    the default does so on GPUs only, where one pass is much cheaper than many small ones. On
    CPUs the work is the products themselves, the same for both, and one point per pass
    measured faster (``bench/interpolation.py``). Points that need a BN reset or REPAIR always
    take a pass of their own: their weights depend on data seen at that point.
    """
    if repair and spec is None:
        raise ValueError("REPAIR needs the model's permutation spec")
    model = copy.deepcopy(model).to(device)  # the caller's model (and the state dicts it
    data = data.to(device)                    # may share tensors with) stay untouched
    if bn_reset is None:
        bn_reset = has_batchnorm(model)
    state_a = {k: v.to(device) for k, v in state_a.items()}
    state_b = {k: v.to(device) for k, v in state_b.items()}
    curve = Curve(lambda_grid(points))
    if vectorize is None:
        vectorize = (torch.device(device).type != "cpu" and not bn_reset and not repair
                     and not has_batchnorm(model))
    if vectorize:
        if bn_reset or repair:
            raise ValueError("points with a BN reset or REPAIR cannot share a data pass")
        for split in ("train", "test"):
            x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
            for loss, acc in evaluate_lambdas(model, state_a, state_b, curve.lambdas, x, y,
                                              batch_size=batch_size):
                getattr(curve, f"{split}_loss").append(loss)
                getattr(curve, f"{split}_acc").append(acc)
        return curve
    repairer = None
    if repair:
        repairer = Repairer(model, spec, state_a, state_b, data.train_x, bn_batches=bn_batches)
    for lam in tqdm(curve.lambdas, disable=None if progress and distributed.is_main() else True,
                    desc="interpolate",
                    leave=False):
        repaired = repairer is not None and 0 < lam < 1
        state = repairer(lam) if repaired else lerp_state(state_a, state_b, lam)
        metrics = evaluate_state(model, state, data, bn_reset=bn_reset and not repaired,
                                 bn_batches=bn_batches, batch_size=batch_size)
        for name in METRICS:
            getattr(curve, name).append(metrics[name])
    return curve
