"""Diagnostics: distance to the initialisation, objective before/after, matched activation
correlation, expected calibration error."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from permalign.diagnostics import (distance_to_init, expected_calibration_error,
                                   matched_activation_correlation, mean_correlation,
                                   model_calibration, objective_change)
from permalign.match import weight_matching
from permalign.permutation import apply_permutation, identity_permutation, invert, random_permutation

MLP = "mlp:depth=2,width=32"


# ------------------------------------------------------------------ distance to init
def test_distance_to_init_known_cases():
    g = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(5, 4, generator=g), "v": torch.randn(3, 3, 2, 2, generator=g),
            "bias": torch.randn(5, generator=g)}
    same = distance_to_init(init, init)
    assert same.cosine == pytest.approx(1.0) and same.relative_distance == pytest.approx(0.0)
    assert set(same.per_tensor) == {"w", "v"}  # biases are not weight matrices
    doubled = distance_to_init({k: 2 * v for k, v in init.items()}, init)
    assert doubled.cosine == pytest.approx(1.0) and doubled.relative_distance == pytest.approx(1)
    flipped = distance_to_init({k: -v for k, v in init.items()}, init)
    assert flipped.cosine == pytest.approx(-1.0) and flipped.relative_distance == pytest.approx(2)
    # an orthogonal move of the same size: cosine 1/sqrt(2), distance 1
    w = torch.tensor([[1.0, 0.0]])
    moved = distance_to_init({"w": w + torch.tensor([[0.0, 1.0]])}, {"w": w})
    assert moved.cosine == pytest.approx(1 / math.sqrt(2))
    assert moved.relative_distance == pytest.approx(1.0)
    only_v = distance_to_init(init, init, select=lambda k, t: t.dim() == 4)
    assert set(only_v.per_tensor) == {"v"}
    with pytest.raises(ValueError):
        distance_to_init({"bias": init["bias"]}, init)


def test_training_moves_weights_from_their_init(trained):
    from permalign.models import build_model
    model, spec, state = trained(MLP, seed=0, epochs=10)
    init = build_model(MLP, (1, 8, 8), 10, seed=0).state_dict()
    d = distance_to_init(state, init)
    assert 0 < d.cosine < 1 and d.relative_distance > 0


# ------------------------------------------------------------------ objective before/after
def test_objective_change_on_a_planted_permutation(trained):
    _, spec, a = trained(MLP, seed=0, epochs=10)
    planted = random_permutation(spec, torch.Generator().manual_seed(1))
    b = apply_permutation(spec, planted, a)
    found = weight_matching(spec, a, b).perm
    change = objective_change(spec, a, b, found)
    assert change.cosine_after == pytest.approx(1.0, abs=1e-6)  # pi(B) == A
    assert change.cosine_before < 0.5 < change.cosine_after
    assert change.before < change.after
    same = objective_change(spec, a, b, identity_permutation(spec))
    assert same.before == pytest.approx(same.after)
    assert set(change.to_json()) >= {"before", "after", "cosine_before", "cosine_after"}


def test_objective_change_between_two_trained_models(trained):
    _, spec, a = trained(MLP, seed=0, epochs=10)
    _, _, b = trained(MLP, seed=1, epochs=10)
    change = objective_change(spec, a, b, weight_matching(spec, a, b).perm)
    assert change.after > change.before and -1 <= change.cosine_before < change.cosine_after <= 1


# ------------------------------------------------------------------ activation correlation
def test_matched_activation_correlation_recovers_a_planted_copy(trained, digits):
    model, spec, a = trained(MLP, seed=0, epochs=10)
    planted = random_permutation(spec, torch.Generator().manual_seed(2))
    b = apply_permutation(spec, planted, a)  # B's unit i is A's unit planted[i]
    x = digits.train_x[:300]
    truth = matched_activation_correlation(spec, model, a, b, invert(planted), x)
    assert set(truth) == set(spec.groups)
    for group, c in truth.items():
        live = c.after  # dead units (constant activations) correlate 0, live ones 1
        assert live > 0.8 and c.after > c.before + 0.3, (group, c)
        assert c.units == spec.groups[group].size
    # with the identity (no permutation) the numbers do not change between before and after
    ident = matched_activation_correlation(spec, model, a, b, identity_permutation(spec), x)
    assert all(c.before == pytest.approx(c.after) for c in ident.values())
    means = mean_correlation(truth)
    assert means["after"] > means["before"]


def test_matched_activation_correlation_of_self_is_the_live_fraction(trained, digits):
    """A against itself with the identity: each live unit correlates exactly 1."""
    model, spec, a = trained(MLP, seed=0, epochs=10)
    x = digits.train_x[:300]
    res = matched_activation_correlation(spec, model, a, a, identity_permutation(spec), x)
    from permalign.match.activation import activation_statistics
    stats = activation_statistics(spec, model, a, a, x)
    for group, c in res.items():
        live = float((stats[group].a.std > 1e-6).double().mean())
        assert c.after == pytest.approx(live, abs=1e-6)


# ------------------------------------------------------------------ calibration
def _reference_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Textbook ECE written as a loop over bins."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == labels[inside]).mean()
                                         - conf[inside].mean())
    return total


def test_ece_matches_a_reference_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 10, generator=g) * 3
    probs = torch.softmax(logits, 1)
    labels = torch.randint(0, 10, (2000,), generator=g)
    for bins in (1, 10, 15):
        assert expected_calibration_error(probs, labels, bins=bins) == pytest.approx(
            _reference_ece(probs.double().numpy(), labels.numpy(), bins), abs=1e-9)


def test_ece_of_over_confident_and_calibrated_predictions():
    labels = torch.tensor([0, 1] * 500)
    certain = torch.zeros(1000, 2)
    certain[:, 0] = 1.0  # always 100 % sure of class 0, right half the time
    assert expected_calibration_error(certain, labels) == pytest.approx(0.5)
    # 70 % confident and right 70 % of the time: calibrated
    probs = torch.tensor([[0.7, 0.3]]).repeat(1000, 1)
    right = torch.zeros(1000, dtype=torch.long)
    right[700:] = 1
    assert expected_calibration_error(probs, right) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        expected_calibration_error(probs, right[:5])


def test_model_calibration_of_a_trained_model(trained, digits):
    model, _, state = trained(MLP, seed=0, epochs=10)
    model.load_state_dict(state)
    cal = model_calibration(model, digits.test_x, digits.test_y)
    from permalign.evaluate import evaluate
    _, accuracy = evaluate(model, digits.test_x, digits.test_y)
    assert cal["accuracy"] == pytest.approx(accuracy)  # same predictions as evaluate()
    assert 0 <= cal["ece"] <= 1 and 0.1 < cal["mean_confidence"] <= 1
    # ECE is at least |mean confidence - accuracy| (the one-bin ECE)
    assert cal["ece"] >= abs(cal["mean_confidence"] - cal["accuracy"]) - 1e-6
