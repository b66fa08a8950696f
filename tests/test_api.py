"""The one-call API, ``permalign.align`` and ``permalign.merge``, on models defined here."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import permalign
from permalign.errors import PermalignError
from permalign.interpolation import interpolation_curve
from permalign.train import TrainConfig, train_model


class SmallNet(nn.Module):
    """A conv net for 1x8x8 digits: two convolutions, a hidden linear layer, a head."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.norm = nn.BatchNorm2d(16) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv1(x)))  # (B, 16, 8, 8)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)  # (B, 16, 4, 4)
        return self.head(torch.relu(self.fc(x.flatten(1))))


def net(seed: int, **kwargs) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet(**kwargs)


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()})


def unchanged(model: nn.Module, before) -> bool:
    state, modes = snapshot(model)
    return (all(torch.equal(state[k], before[0][k]) for k in state)
            and modes == before[1])


@pytest.fixture(scope="module")
def trained_pair(digits):
    models = []
    for seed in (0, 1):
        model = net(seed)
        train_model(model, digits, TrainConfig(epochs=10, seed=seed), progress=False)
        models.append(model)
    return models


def test_align_gives_b_function_in_a_basin_and_mutates_nothing(trained_pair, digits):
    model_a, model_b = trained_pair
    before = snapshot(model_a), snapshot(model_b)
    x = digits.test_x[:4]
    aligned, result = permalign.align(model_a, model_b, x)
    assert unchanged(model_a, before[0]) and unchanged(model_b, before[1])
    assert aligned is not model_b and isinstance(aligned, SmallNet)
    with torch.no_grad():
        torch.testing.assert_close(aligned.eval()(x), model_b.eval()(x), atol=1e-5, rtol=1e-4)
    assert set(result.perm) and result.method == "weight"
    naive = interpolation_curve(model_a, model_a.state_dict(), model_b.state_dict(), digits,
                                points=5).barriers()["test_loss"]
    matched = interpolation_curve(model_a, model_a.state_dict(), aligned.state_dict(), digits,
                                  points=5).barriers()["test_loss"]
    assert matched < 0.5 * naive, (naive, matched)
    # interpolate works on a copy: the model and the state dicts sharing its tensors stay
    assert unchanged(model_a, before[0])


def test_align_with_data_methods_and_options(trained_pair, digits):
    model_a, model_b = trained_pair
    x, y = digits.train_x[:500], digits.train_y[:500]
    aligned, result = permalign.align(model_a, model_b, x[:2], method="activation",
                                      data=(x, y), batch_size=100)
    assert result.method == "activation" and result.info["samples"] == 500
    with torch.no_grad():
        torch.testing.assert_close(aligned(x[:8]), model_b(x[:8]), atol=1e-5, rtol=1e-4)
    _, restarted = permalign.align(model_a, model_b, x[:2], restarts=1)
    assert restarted.info["restarts"] == 1
    with pytest.raises(PermalignError, match="no option"):
        permalign.align(model_a, model_b, x[:2], lr=0.1)
    with pytest.raises(PermalignError, match="needs the model and training data"):
        permalign.align(model_a, model_b, x[:2], method="ste")


def test_merge_of_permuted_copies_is_the_model_and_inputs_stay(digits):
    model = net(0).eval()
    x = digits.test_x[:16]
    spec = permalign.infer_spec(model, x[:2])
    copies = []
    for seed in (1, 2):
        perm = permalign.random_permutation(spec, torch.Generator().manual_seed(seed))
        other = copy.deepcopy(model)
        other.load_state_dict(permalign.apply_permutation(spec, perm, model.state_dict()))
        copies.append(other)
    before = [snapshot(m) for m in (model, *copies)]
    merged = permalign.merge([model, *copies], x[:2])
    assert all(unchanged(m, b) for m, b in zip((model, *copies), before))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(x), model(x), atol=1e-5, rtol=1e-4)


def test_merge_batchnorm_needs_data_and_bad_inputs_are_errors(digits):
    models = [net(s, norm=True) for s in (0, 1)]
    x = digits.train_x[:300]
    with pytest.raises(PermalignError, match="BatchNorm"):
        permalign.merge(models, x[:2])
    before = [snapshot(m) for m in models]
    merged = permalign.merge(models, x[:2], data=x)
    assert all(unchanged(m, b) for m, b in zip(models, before))
    # the merged statistics were measured on x (the inputs' untrained ones are 0 and 1)
    with torch.no_grad():
        features = merged.conv1(x)  # (300, 16, 8, 8)
    assert not torch.allclose(merged.norm.running_mean, torch.zeros(16), atol=1e-3)
    torch.testing.assert_close(merged.norm.running_mean, features.mean((0, 2, 3)), atol=0.05,
                               rtol=0.05)
    with pytest.raises(PermalignError, match="at least two"):
        permalign.merge(models[:1], x[:2])
    with pytest.raises(PermalignError, match="architecture"):
        permalign.align(net(0), nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x[:2])
