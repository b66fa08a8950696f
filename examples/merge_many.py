"""Merge many models: four MLPs trained from different seeds, merged by MergeMany (align each
to the mean of the others, then average), against each input and the naive weight average.

    python examples/merge_many.py
"""
import copy

import torch
from torch import nn

import permalign
from permalign.data import load_digits
from permalign.evaluate import evaluate
from permalign.statedict import mean_state
from permalign.train import TrainConfig, train_model

data = load_digits()
models = []
for seed in range(4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                          nn.ReLU(), nn.Linear(256, 10))
    train_model(model, data, TrainConfig(epochs=15, seed=seed), progress=False)
    models.append(model)

merged = permalign.merge(models, data.test_x[:2])  # a new module; the inputs are unchanged
naive = copy.deepcopy(models[0])
naive.load_state_dict(mean_state([m.state_dict() for m in models]))

for name, model in [*((f"input {i}", m) for i, m in enumerate(models)),
                    ("naive average", naive), ("merged", merged)]:
    loss, acc = evaluate(model, data.test_x, data.test_y)
    print(f"{name:<14} test loss {loss:.4f}  test accuracy {acc:.4f}")
