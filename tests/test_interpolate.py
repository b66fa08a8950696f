"""Interpolation curves, barriers, BatchNorm reset and REPAIR."""
from __future__ import annotations

import pytest
import torch

from permalign.evaluate import evaluate
from permalign.interpolation import (Curve, barrier, evaluate_state, interpolation_curve,
                                   lambda_grid, lerp_state, reset_bn_stats)
from permalign.repair import Repairer
from permalign.workflow import align


def test_barrier_definition():
    assert barrier([1.0, 3.0, 2.0]) == pytest.approx(3.0 - 1.5)
    assert barrier([1.0, 1.0]) == 0.0
    curve = Curve([0, 0.5, 1], [0.1, 0.5, 0.3], [0.2, 0.9, 0.2], [1.0, 0.8, 1.0], [0.9, 0.5, 0.9])
    b = curve.barriers()
    assert b["train_loss"] == pytest.approx(0.3) and b["test_loss"] == pytest.approx(0.7)
    assert b["train_acc"] == pytest.approx(0.2) and b["test_acc"] == pytest.approx(0.4)


def test_lambda_grid():
    grid = lambda_grid()
    assert len(grid) == 25 and grid[0] == 0 and grid[-1] == 1


def test_curve_endpoints_match_the_models(trained, digits):
    model, spec, a = trained("mlp:depth=3,width=128", 0)
    _, _, b = trained("mlp:depth=3,width=128", 1)
    curve = interpolation_curve(model, a, b, digits, points=5)
    assert len(curve.test_loss) == 5
    model.load_state_dict(b)
    loss, acc = evaluate(model, digits.test_x, digits.test_y)
    assert curve.test_loss[-1] == pytest.approx(loss) and curve.test_acc[-1] == pytest.approx(acc)


def test_alignment_lowers_the_barrier(trained, digits):
    model, spec, a = trained("mlp:depth=3,width=256", 0)
    _, _, b = trained("mlp:depth=3,width=256", 1)
    naive = interpolation_curve(model, a, b, digits, points=9).barriers()
    aligned_b, _ = align("weight", spec, model, a, b)
    aligned = interpolation_curve(model, a, aligned_b, digits, points=9).barriers()
    assert naive["test_loss"] > 0.3
    assert aligned["test_loss"] < 0.5 * naive["test_loss"]
    assert aligned["train_acc"] <= naive["train_acc"]


def test_bn_reset_changes_stats_and_keeps_endpoint(trained, digits):
    model, spec, a = trained("vgg11:width=0.25,norm=bn", 0)
    _, _, b = trained("vgg11:width=0.25,norm=bn", 1)
    aligned_b, _ = align("weight", spec, model, a, b)
    model.load_state_dict(lerp_state(a, aligned_b, 0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()
                  if k.endswith("running_var")}
    reset_bn_stats(model, digits.train_x)
    after = {k: v for k, v in model.state_dict().items() if k.endswith("running_var")}
    assert all(not torch.allclose(before[k], after[k]) for k in before)
    # the interpolated model's variance collapse: reset stats are smaller than averaged ones
    assert sum(float(after[k].sum()) for k in after) < sum(float(before[k].sum()) for k in before)
    plain = evaluate_state(model, a, digits, bn_reset=False)
    reset = evaluate_state(model, a, digits, bn_reset=True)
    assert reset["test_acc"] == pytest.approx(plain["test_acc"], abs=0.02)


def test_repair_keeps_endpoint_and_architecture(trained, digits):
    model, spec, a = trained("resnet20:width=1,norm=ln", 0)
    _, _, b = trained("resnet20:width=1,norm=ln", 1)
    aligned_b, _ = align("weight", spec, model, a, b)
    repairer = Repairer(model, spec, a, aligned_b, digits.train_x)
    at_a = repairer(0.0)
    assert set(at_a) == set(a)
    for k in a:
        assert at_a[k].shape == a[k].shape
        assert torch.allclose(at_a[k], a[k], atol=1e-4, rtol=1e-4), k
    mid = repairer(0.5)
    assert any(not torch.allclose(mid[k], lerp_state(a, aligned_b, 0.5)[k]) for k in a)


def test_repair_restores_channel_statistics(trained, digits):
    """After REPAIR each site's output std is the interpolation of the endpoints'."""
    from permalign.repair import site_moments
    model, spec, a = trained("mlp:depth=3,width=128", 0)
    _, _, b = trained("mlp:depth=3,width=128", 1)
    aligned_b, _ = align("weight", spec, model, a, b)
    repairer = Repairer(model, spec, a, aligned_b, digits.train_x)
    state = repairer(0.5)
    model.load_state_dict(state)
    got = site_moments(model, repairer.sites, repairer.x)
    for name in repairer.sites:
        goal = 0.5 * (repairer.endpoints[0][name].std + repairer.endpoints[1][name].std)
        assert torch.allclose(got[name].std, goal, rtol=1e-3, atol=1e-4), name


def test_repair_bn_endpoint_outputs_unchanged(trained, digits):
    model, spec, a = trained("vgg11:width=0.25,norm=bn", 0)
    _, _, b = trained("vgg11:width=0.25,norm=bn", 1)
    repairer = Repairer(model, spec, a, b, digits.train_x)
    plain = evaluate_state(model, a, digits, bn_reset=False)
    repaired = evaluate_state(model, repairer(0.0), digits, bn_reset=False)
    assert repaired["test_acc"] == pytest.approx(plain["test_acc"], abs=0.01)
    assert repaired["test_loss"] == pytest.approx(plain["test_loss"], rel=0.05)


@pytest.mark.parametrize("name", ["resnet20:width=1,norm=bn", "resnet20:width=1,norm=ln",
                                  "mlp:depth=3,width=128"])
def test_one_pass_repair_equals_sequential(trained, digits, name):
    """REPAIR in one data pass gives the one-pass-per-site reference's model: the same weights
    without BatchNorm, the same outputs with it (the reference resets BN statistics first,
    which only moves the same per-channel affine map between buffers and weights)."""
    import copy
    from permalign.interpolation import has_batchnorm
    from permalign.repair import SequentialRepairer
    model, spec, a = trained(name, 0, 3)
    _, _, b = trained(name, 1, 3)
    aligned_b, _ = align("weight", spec, model, a, b)
    fast = Repairer(model, spec, a, aligned_b, digits.train_x, num_examples=600)
    slow = SequentialRepairer(model, spec, a, aligned_b, digits.train_x, num_examples=600)
    x = digits.test_x[:300]
    for lam in (0.25, 0.5):
        got, want = fast(lam), slow(lam)
        assert set(got) == set(want)
        outputs = []
        for state in (got, want, lerp_state(a, aligned_b, lam)):
            m = copy.deepcopy(model).eval()
            m.load_state_dict(state)
            with torch.no_grad():
                outputs.append(m(x))
        assert torch.allclose(outputs[0], outputs[1], rtol=1e-3, atol=1e-4), lam
        assert not torch.allclose(outputs[0], outputs[2], rtol=1e-2, atol=1e-2)  # it repaired
        if not has_batchnorm(model):
            for k in want:
                assert torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-5), (lam, k)
    assert fast.passes == 2 and slow.passes == 2 * len(slow.sites)


def test_channel_moments_without_reshaping():
    from permalign.stats import ChannelMoments
    g = torch.Generator().manual_seed(0)
    for shape, dim in [((7, 5, 3, 4), 1), ((9, 6), -1), ((4, 3, 5), 2)]:
        x = torch.randn(*shape, generator=g) * 3 + 1
        rows, direct = ChannelMoments(), ChannelMoments()
        rows.update(x.movedim(dim, -1).reshape(-1, x.shape[dim]))
        direct.update_channels(x, dim)
        assert direct.count == rows.count
        assert torch.allclose(direct.mean, rows.mean, atol=1e-6)
        assert torch.allclose(direct.std, rows.std, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp:depth=3,width=128", "resnet20:width=1,norm=ln"])
def test_one_pass_curve_equals_point_by_point(trained, digits, name):
    """All lambdas in one data pass give the per-point curve's numbers."""
    model, spec, a = trained(name, 0, 3)
    _, _, b = trained(name, 1, 3)
    data = digits.subset(train=400, test=200)
    fast = interpolation_curve(model, a, b, data, points=7, vectorize=True, batch_size=512)
    slow = interpolation_curve(model, a, b, data, points=7, vectorize=False)
    for metric in ("train_loss", "test_loss"):
        assert getattr(fast, metric) == pytest.approx(getattr(slow, metric), rel=1e-5, abs=1e-6)
    for metric, n in (("train_acc", 400), ("test_acc", 200)):  # an argmax tie may flip
        assert all(abs(f - s) <= 1 / n for f, s in zip(getattr(fast, metric),
                                                        getattr(slow, metric)))
    assert max(slow.test_loss) > slow.test_loss[0]  # a real curve, not a constant


def test_one_pass_curve_refuses_bn_reset(trained, digits):
    model, spec, a = trained("vgg11:width=0.25,norm=bn", 0)
    with pytest.raises(ValueError, match="cannot share a data pass"):
        interpolation_curve(model, a, a, digits, points=3, vectorize=True)
