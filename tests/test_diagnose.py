"""``permalign diagnose``: the measurements, and hints that flag the known causes."""
from __future__ import annotations

import json

import pytest
import torch

from permalign.cli import main
from permalign.diagnose import diagnose
from permalign.models import build_model, example_input
from permalign.spec import Group, PermutationSpec

MLP = "mlp:depth=2,width=64"


def broken(spec: PermutationSpec) -> PermutationSpec:
    """The spec with the first group's in-axis of the next layer left out: a wrong spec that
    still validates (it permutes a layer's outputs without its consumer's inputs)."""
    groups = dict(spec.groups)
    name, group = next(iter(groups.items()))
    groups[name] = Group(name, group.size, [m for m in group.members if m.axis == 0])
    return PermutationSpec(groups, dict(spec.fixed))


@pytest.fixture(scope="module")
def pair(trained):
    model, spec, state_a = trained(MLP, 0)
    _, _, state_b = trained(MLP, 1)
    return model, spec, state_a, state_b


def test_good_spec_with_data(pair, digits):
    model, spec, state_a, state_b = pair
    report = diagnose(model, spec, state_a, state_b, (example_input((1, 8, 8)),), data=digits,
                      points=5, eval_examples=500)
    assert report.function["preserved"] and report.function["max_abs_diff"] < 1e-4
    assert report.planted["objective_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert report.planted["units_recovered"] == 1.0
    assert report.objective["after"] > report.objective["before"]
    assert 0.99 < report.coverage["share"] <= 1.0
    # input and output axes are the only fixed ones
    assert set(report.coverage["fixed_axes"]) == {"layers.0.weight:1", "head.weight:0",
                                                  "head.bias:0"}
    for group, r in report.correlation.items():
        assert r["after"] > r["before"] + 0.2, group
    assert report.barriers["aligned"]["test_loss"] < 0.5 * report.barriers["naive"]["test_loss"]
    assert not any("WRONG SPEC" in h for h in report.hints)
    assert any("initial weights are unknown" in h for h in report.hints)
    json.dumps(report.to_json(), allow_nan=False)
    text = report.table()
    assert "function preserved  yes" in text and "hints:" in text


def test_wrong_spec_is_flagged(pair):
    model, spec, state_a, state_b = pair
    report = diagnose(model, broken(spec), state_a, state_b, (example_input((1, 8, 8)),))
    assert not report.function["preserved"]
    assert report.hints[0].startswith("WRONG SPEC")
    assert "function preserved  NO" in report.table()
    assert report.correlation is None and report.barriers is None  # no data given


def test_init_thin_and_batchnorm_hints(trained, digits):
    # weights at their initialisation: the cosine to init is 1
    model = build_model(MLP, (1, 8, 8), 10, seed=0)
    init = model.state_dict()
    _, spec, state_b = trained(MLP, 1)
    report = diagnose(model, spec, init, state_b, (example_input((1, 8, 8)),), init_a=init)
    assert report.init["A"] == pytest.approx(1.0)
    assert any("close to their initialisation" in h for h in report.hints)
    assert not any("unknown" in h for h in report.hints)
    # a thin BatchNorm model, with data: both hints, and the barrier without BN reset
    thin = "mlp:depth=2,width=16,norm=bn"
    model, spec, state_a = trained(thin, 0, 5)
    _, _, state_b = trained(thin, 1, 5)
    report = diagnose(model, spec, state_a, state_b, (example_input((1, 8, 8)),), data=digits,
                      points=3, eval_examples=300)
    assert any(h.startswith("Thin model") for h in report.hints)
    assert "aligned, no BN reset" in report.barriers
    assert any(h.startswith("BatchNorm") and "without re-estimating" in h
               for h in report.hints)


def test_command_writes_json_and_flags_a_wrong_spec(pair, tmp_path, capsys):
    model, spec, state_a, state_b = pair
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(state_a, a)
    torch.save(state_b, b)
    out = tmp_path / "report.json"
    code = main(["diagnose", str(a), str(b), "--model", MLP, "--dataset", "digits",
                 "--points", "3", "--eval-subset", "300", "--out", str(out), "--quiet"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out.read_text())
    assert {"coverage", "function", "planted", "objective", "correlation", "barriers", "hints",
            "provenance"} <= set(record)
    assert "spec coverage" in stdout and "barrier" in stdout
    bad = tmp_path / "bad.json"
    broken(spec).save(bad)
    code = main(["diagnose", str(a), str(b), "--model", MLP, "--spec", str(bad),
                 "--no-spec-check", "--quiet"])
    stdout, _ = capsys.readouterr()
    assert code == 0 and "WRONG SPEC" in stdout
    # without --no-spec-check the wrong spec is refused up front
    assert main(["diagnose", str(a), str(b), "--model", MLP, "--spec", str(bad)]) == 2
    assert "spec is wrong" in capsys.readouterr().err
