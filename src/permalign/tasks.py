"""What a model's output is scored against: a *task* turns (output, targets) into a loss and a
count of correct predictions.

A :class:`~permalign.data.Dataset` names its task (``data.task``); evaluation, interpolation
curves, barriers and the trainer look the task up here, so they work unchanged for image
classification (logits ``(B, C)`` against labels ``(B,)``) and for language modelling
(logits ``(B, T, V)`` against the next token ``(B, T)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import PermalignError


def output_logits(output: Any) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, a Hugging Face ``ModelOutput``'s
    ``logits``, or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise PermalignError(f"cannot find logits in the model's output ({type(output).__name__}); "
                         "the model should return a tensor or an object with .logits")


@dataclass(frozen=True)
class Task:
    """How to score predictions.

    ``tokens_per_batch``: an upper bound on ``batch * positions`` per forward pass during
    evaluation (language models' logits are large), or None for no bound.
    """

    name: str
    description: str
    tokens_per_batch: int | None = None

    def flat(self, output: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits as ``(predictions, classes)`` and targets as ``(predictions,)``.

        Every position of ``targets`` is one prediction: the last axis of the logits holds the
        classes and the other axes line up with ``targets``' (for classification (B, C) against
        (B,); for next-token prediction (B, T, V) against (B, T)).
        """
        logits = output_logits(output)
        if logits.shape[:-1] != targets.shape:
            raise PermalignError(f"{self.name}: the model's logits {list(logits.shape)} do not "
                                 f"fit the targets {list(targets.shape)}")
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)

    def scores(self, output: Any, targets: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(summed cross-entropy, number correct, number of predictions)`` of one batch."""
        logits, labels = self.flat(output, targets)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        return loss, (logits.argmax(dim=1) == labels).sum(), labels.numel()

    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of one batch (for training)."""
        return F.cross_entropy(*self.flat(output, targets))

    def batch_size(self, x: torch.Tensor, requested: int) -> int:
        """``requested``, lowered so a batch of ``x`` stays within ``tokens_per_batch``."""
        if self.tokens_per_batch is None or x.dim() < 2:
            return requested
        positions = max(1, x[0].numel())
        return max(1, min(requested, self.tokens_per_batch // positions))


CLASSIFICATION = Task("classification", "cross-entropy and accuracy of the predicted class")
NEXT_TOKEN = Task("next-token", "next-token cross-entropy and next-token accuracy",
                  tokens_per_batch=4096)

TASKS = {t.name: t for t in (CLASSIFICATION, NEXT_TOKEN)}


def get_task(name: str | Task) -> Task:
    """The task called ``name`` (a Task is returned as is)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise PermalignError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[name]
