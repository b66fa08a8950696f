"""Align your own PyTorch model: define it, train two copies from different seeds, align B to A
with one call, and compare the loss barriers of the straight line between them.

    python examples/own_model.py
"""
import torch
from torch import nn

import permalign
from permalign.data import load_digits
from permalign.train import TrainConfig, train_model


class Net(nn.Module):
    """Any nn.Module works: permalign infers its permutation symmetries from its graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3, padding=1)
        self.hidden = nn.Linear(32 * 4 * 4, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)  # (B, 32, 4, 4)
        return self.head(torch.relu(self.hidden(x.flatten(1))))


data = load_digits()  # 8x8 handwritten digits bundled with scikit-learn
models = []
for seed in (0, 1):
    torch.manual_seed(seed)
    model = Net()
    train_model(model, data, TrainConfig(epochs=15, seed=seed), progress=False)
    models.append(model)
model_a, model_b = models

aligned_b, result = permalign.align(model_a, model_b, data.test_x[:2])  # spec inferred, checked
print(f"weight matching: {len(result.perm)} permutation groups, {len(result.history)} sweeps")
for name, other in (("naive", model_b), ("aligned", aligned_b)):
    curve = permalign.interpolate(model_a, model_a.state_dict(), other.state_dict(), data,
                                  points=11)
    print(f"{name:<8} test-loss barrier {curve.barriers()['test_loss']:.4f}")
