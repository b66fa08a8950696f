"""Loss and accuracy of a model on in-memory data."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 2048
             ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits = model(xb)  # (B, classes)
        total_loss += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
    model.train(was_training)
    n = max(len(x), 1)
    return float(total_loss) / n, int(correct) / n


@torch.inference_mode()
def evaluate_ensemble(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, *,
                      batch_size: int = 2048) -> tuple[float, float]:
    """Loss and accuracy of the output ensemble: the mean of the models' softmax outputs."""
    for m in models:
        m.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        probs = torch.stack([torch.softmax(m(xb), dim=1) for m in models]).mean(0)  # (B, C)
        total_loss += float(F.nll_loss(probs.clamp_min(1e-12).log(), yb, reduction="sum"))
        correct += int((probs.argmax(1) == yb).sum())
    n = max(len(x), 1)
    return total_loss / n, correct / n
