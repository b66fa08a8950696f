"""Why a barrier remains: numbers that explain an alignment's outcome.

- how far each model moved from its initialisation (cosine and relative distance): weights
  that stayed near their random start make weight matching line up initialisation noise;
- the weight-matching objective before and after a permutation, raw and as a cosine between
  A and the permuted B;
- the mean correlation of matched units' activations per group, before and after;
- the expected calibration error of a model's predictions (over-confident inputs are what
  MergeMany's averaging corrects).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .data import batches
from .match.activation import activation_statistics
from .match.weight import default_similarity_key, matching_objective
from .permutation import identity_permutation
from .spec import Permutation, PermutationSpec

StateDict = Mapping[str, torch.Tensor]


# ------------------------------------------------------------------ distance to initialisation
def is_weight_matrix(key: str, tensor: torch.Tensor) -> bool:
    """Linear and conv weights (floating tensors with >= 2 axes); norms and biases are not."""
    return tensor.is_floating_point() and tensor.dim() >= 2


@dataclass
class InitDistance:
    """How far a state dict is from its initial state, over the selected tensors.

    ``cosine`` is the cosine between the flattened current and initial tensors, all selected
    tensors concatenated; ``relative_distance`` is ||theta - theta_0|| / ||theta_0||.
    ``per_tensor`` has both numbers for each selected tensor.
    """

    cosine: float
    relative_distance: float
    per_tensor: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def distance_to_init(state: StateDict, initial: StateDict, *,
                     select: Callable[[str, torch.Tensor], bool] = is_weight_matrix
                     ) -> InitDistance:
    """Cosine and relative distance of ``state`` to ``initial`` over tensors ``select`` keeps
    (default: linear and conv weights)."""
    dot = sq_now = sq_init = sq_diff = 0.0
    per: dict[str, dict[str, float]] = {}
    for key, value in state.items():
        if key not in initial or not select(key, value):
            continue
        now = value.detach().double().reshape(-1).cpu()
        init = initial[key].detach().double().reshape(-1).cpu()
        d, n2, i2 = float(now @ init), float(now @ now), float(init @ init)
        diff2 = float((now - init).pow(2).sum())
        per[key] = {"cosine": _ratio(d, math.sqrt(n2 * i2)),
                    "relative_distance": _ratio(math.sqrt(diff2), math.sqrt(i2))}
        dot, sq_now, sq_init, sq_diff = dot + d, sq_now + n2, sq_init + i2, sq_diff + diff2
    if not per:
        raise ValueError("no tensor selected: the state dicts share no weight tensors")
    return InitDistance(cosine=_ratio(dot, math.sqrt(sq_now * sq_init)),
                        relative_distance=_ratio(math.sqrt(sq_diff), math.sqrt(sq_init)),
                        per_tensor=per)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


# ------------------------------------------------------------------ weight-matching objective
@dataclass
class ObjectiveChange:
    """The weight-matching objective sum <W_A, pi(W_B)> without and with a permutation.

    ``scale`` is ||W_A|| * ||W_B|| over the same tensors, so ``before / scale`` and
    ``after / scale`` are cosines between A and (permuted) B in [-1, 1].
    """

    before: float
    after: float
    scale: float

    @property
    def cosine_before(self) -> float:
        return _ratio(self.before, self.scale)

    @property
    def cosine_after(self) -> float:
        return _ratio(self.after, self.scale)

    def to_json(self) -> dict[str, float]:
        return {"before": self.before, "after": self.after, "scale": self.scale,
                "cosine_before": self.cosine_before, "cosine_after": self.cosine_after}


def objective_change(spec: PermutationSpec, state_a: StateDict, state_b: StateDict,
                     perm: Permutation) -> ObjectiveChange:
    """The weight-matching objective of the identity and of ``perm`` (see
    :func:`permalign.match.weight.matching_objective`)."""
    keys = {m.key for g in spec.groups.values() for m in g.members
            if default_similarity_key(m.key)}
    norm_a = math.sqrt(sum(float(state_a[k].double().pow(2).sum()) for k in keys))
    norm_b = math.sqrt(sum(float(state_b[k].double().pow(2).sum()) for k in keys))
    return ObjectiveChange(
        before=matching_objective(spec, state_a, state_b, identity_permutation(spec)),
        after=matching_objective(spec, state_a, state_b, perm), scale=norm_a * norm_b)


# ------------------------------------------------------------------ activation correlation
@dataclass
class GroupCorrelation:
    """Mean Pearson correlation of A's unit i with B's unit matched to it, in one group."""

    before: float  # B's units in their own order (identity)
    after: float  # B's units as the permutation matches them
    units: int

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def matched_activation_correlation(spec: PermutationSpec, model: nn.Module, state_a: StateDict,
                                   state_b: StateDict, perm: Permutation, x: torch.Tensor, *,
                                   batch_size: int = 256, device: torch.device | str = "cpu"
                                   ) -> dict[str, GroupCorrelation]:
    """Per group, the mean correlation of matched activations on inputs ``x``, before and
    after ``perm``.

    One streaming pass (:func:`permalign.match.activation.activation_statistics`) over ``x``
    with A and the *unpermuted* B; ``perm[g][i]`` is the unit of B matched to A's unit i, so the
    matched correlations are ``corr[i, perm[g][i]]``. Units with constant activations correlate
    0 with everything.
    """
    moments = activation_statistics(spec, model, state_a, state_b, x, batch_size=batch_size,
                                    device=device)
    out: dict[str, GroupCorrelation] = {}
    for group, m in moments.items():
        corr = m.correlation().cpu()  # (n, n): A's units x B's units
        rows = torch.arange(corr.shape[0])
        matched = torch.as_tensor(perm[group], dtype=torch.long).cpu()
        out[group] = GroupCorrelation(before=float(corr.diagonal().mean()),
                                      after=float(corr[rows, matched].mean()),
                                      units=corr.shape[0])
    return out


def mean_correlation(per_group: Mapping[str, GroupCorrelation]) -> dict[str, float]:
    """Unit-weighted mean over groups of the before/after correlations."""
    units = sum(g.units for g in per_group.values())
    return {"before": sum(g.before * g.units for g in per_group.values()) / units,
            "after": sum(g.after * g.units for g in per_group.values()) / units}


# ------------------------------------------------------------------ calibration
def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, *,
                               bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - mean confidence| x bin share.

    ``probs`` (N, classes) are predicted probabilities, ``labels`` (N,) the true classes; the
    confidence of an example is its top probability. ``bins`` equal-width bins on (0, 1].
    """
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError("probs must be (N, classes) and labels (N,)")
    if bins < 1:
        raise ValueError("bins must be >= 1")
    confidence, predicted = probs.detach().double().max(dim=1)
    correct = (predicted == labels).double()
    # bin b holds confidences in (b/bins, (b+1)/bins]; confidence 0 goes to bin 0
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    return float((conf_sum - acc_sum).abs().sum() / max(len(labels), 1))


@torch.inference_mode()
def predict_probs(model: nn.Module, x: torch.Tensor, *, batch_size: int = 2048
                  ) -> torch.Tensor:
    """Softmax outputs of ``model`` (in eval mode) on ``x``, (N, classes), on the CPU."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = [torch.softmax(model(xb.to(device)), dim=1).cpu()
           for xb, _ in batches(x, x, batch_size)]
    model.train(was_training)
    return torch.cat(out)


def model_calibration(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bins: int = 15
                      ) -> dict[str, float]:
    """ECE, mean confidence and accuracy of ``model`` on (x, y)."""
    probs = predict_probs(model, x)
    confidence, predicted = probs.max(dim=1)
    return {"ece": expected_calibration_error(probs, y.cpu(), bins=bins),
            "mean_confidence": float(confidence.mean()),
            "accuracy": float((predicted == y.cpu()).float().mean())}
