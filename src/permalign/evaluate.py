"""Loss and accuracy of a model on in-memory data."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .tasks import CLASSIFICATION, Task, get_task


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 2048,
             task: Task | str = CLASSIFICATION) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``, per
    prediction of ``task`` (one per example for classification, one per token for next-token
    prediction). With a process group each rank scores its shard and the sums are combined."""
    task = get_task(task)
    x, y = distributed.shard(x, y)
    batch_size = task.batch_size(x, batch_size)
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    count = 0
    for start in range(0, len(x), batch_size):
        loss, right, n = task.scores(model(x[start:start + batch_size]),
                                     y[start:start + batch_size])
        total_loss += loss.double()
        correct += right
        count += n
    model.train(was_training)
    total_loss, correct, count = distributed.all_reduce_sums(total_loss, correct, count)
    count = max(float(count), 1.0)
    return float(total_loss) / count, float(correct) / count


@torch.inference_mode()
def evaluate_ensemble(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                      batch_size: int = 2048) -> tuple[float, float]:
    """Loss and accuracy of the output ensemble: the mean of the models' softmax outputs."""
    n = max(len(x), 1)
    x, y = distributed.shard(x, y)
    for m in models:
        m.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        probs = torch.stack([torch.softmax(m(xb), dim=1) for m in models]).mean(0)  # (B, C)
        total_loss += float(F.nll_loss(probs.clamp_min(1e-12).log(), yb, reduction="sum"))
        correct += int((probs.argmax(1) == yb).sum())
    total_loss, correct = distributed.all_reduce_sums(total_loss, correct)
    return float(total_loss) / n, float(correct) / n
