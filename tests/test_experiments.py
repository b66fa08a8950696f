"""Every experiment runs in a tiny mode and writes sane, complete results."""
from __future__ import annotations

import json
import math

import pytest
import torch

from permalign.cli import main
from permalign.experiments import REGISTRY, ExperimentConfig, run_experiment
from permalign.merge import merge_many
from permalign.models import resolve_model


def finite_numbers(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(finite_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(finite_numbers(v) for v in obj)
    return True


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    out = {}
    for name in REGISTRY:
        cfg = ExperimentConfig(out=root / name, scale="quick", dataset="digits",
                               seeds=2 if name == "planted" else None, progress=False)
        path = run_experiment(name, cfg)
        out[name] = (path.parent, json.loads(path.read_text()))
    return out


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_experiment_output_structure(results, name):
    folder, record = results[name]
    assert record["experiment"] == name and record["claim"]
    assert finite_numbers(record)
    prov = record["provenance"]
    assert {"command", "seeds", "versions", "device", "wall_time_s"} <= set(prov)
    table = record["table"]
    assert table["rows"] and all(len(r) == len(table["columns"]) for r in table["rows"])
    for plot in record["plots"]:
        assert (folder / plot).read_bytes()[:4] == b"\x89PNG"


def test_mlp_barrier_curves_and_barriers(results):
    _, record = results["mlp-barrier"]
    results = record["results"]
    assert set(results["curves"]) == {"naive", "weight", "activation", "ste"}
    for curve in results["curves"].values():
        assert len(curve["lambdas"]) == 25 and len(curve["test_loss"]) == 25
    for method, summary in results["summary"].items():
        assert summary["test_loss"]["mean"] >= -0.05, method
    naive = results["summary"]["naive"]["test_loss"]["mean"]
    assert results["summary"]["weight"]["test_loss"]["mean"] < naive


def test_counterexample_has_no_lmc(results):
    _, record = results["counterexample"]
    assert record["results"]["summary"]["every_permutation_has_a_barrier"]
    assert all(row[1] == 0 and row[2] == 0 for row in record["table"]["rows"])  # both perfect


def test_width_and_epochs_rows(results):
    _, width = results["width"]
    assert [r["width"] for r in width["results"]["mlp"]] == [16, 64, 256]
    _, epochs = results["epochs"]
    assert [r["epoch"] for r in epochs["results"]["epochs"]] == [1, 2, 3]


def test_planted_counts(results):
    _, record = results["planted"]
    for per_model in record["results"].values():
        for outcome in per_model.values():
            assert 0 <= outcome["recovered"] <= outcome["trials"] == 2


def test_report_renders_every_experiment(results, tmp_path, capsys):
    dirs = [str(folder) for folder, _ in results.values()]
    assert main(["report", *dirs, "--out", str(tmp_path / "RESULTS.md")]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    for name in REGISTRY:
        assert f"## {name}" in text
    assert "**Paper:**" in text and "Command:" in text
    root = tmp_path / "all"  # the folder `experiment all --out DIR` writes is accepted as is
    root.mkdir()
    for folder, _ in results.values():
        (root / folder.name).symlink_to(folder)
    assert main(["report", str(root), "--out", str(tmp_path / "ALL.md")]) == 0
    assert (tmp_path / "ALL.md").read_text().count("**Paper:**") == len(REGISTRY)
    assert main(["report", str(root), "--out", str(tmp_path / "ALL.md")]) == 2  # no --force


def test_merge_many_of_permuted_copies_is_the_model(trained):
    """MergeMany of permuted copies of one model recovers that model (up to permutation)."""
    from permalign.permutation import apply_permutation, random_permutation
    model, spec, state = trained("mlp:depth=2,width=64", 0, 5)
    copies = [state] + [apply_permutation(spec, random_permutation(
        spec, torch.Generator().manual_seed(s)), state) for s in range(3)]
    result = merge_many(spec, copies, seed=0)
    assert result.converged
    for aligned in result.aligned:
        for k in state:
            assert torch.allclose(aligned[k], result.aligned[0][k])


def test_merge_command(trained, tmp_path, capsys):
    from permalign.io import save_state_dict
    model_string = "mlp:depth=2,width=64"
    paths = []
    for seed in range(3):
        _, _, state = trained(model_string, seed, 5)
        paths.append(tmp_path / f"m{seed}.pt")
        save_state_dict(state, paths[-1])
    assert main(["merge", *map(str, paths), "--model", model_string,
                 "--out", str(tmp_path / "merged.pt")]) == 0
    merged = torch.load(tmp_path / "merged.pt", weights_only=True)
    model, _ = resolve_model(model_string, (1, 8, 8), 10)
    model.load_state_dict(merged)
    assert main(["merge", str(paths[0]), "--model", model_string,
                 "--out", str(tmp_path / "one.pt")]) == 2


def test_unknown_experiment(capsys):
    assert main(["experiment", "nonsense"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


def test_merge_reestimates_batchnorm_statistics(trained, digits):
    """merge_many owns the BN reset: merged BN statistics are measured, not averaged."""
    from permalign.statedict import mean_state
    model, spec, a = trained("mlp:depth=2,width=32,norm=bn", 0, 3)
    _, _, b = trained("mlp:depth=2,width=32,norm=bn", 1, 3)
    with pytest.raises(Exception, match="--dataset"):
        merge_many(spec, [a, b], model=model)
    kept = merge_many(spec, [a, b], model=model, bn_reset=False)
    reset = merge_many(spec, [a, b], model=model, bn_data=digits.train_x)
    assert reset.bn_reset and not kept.bn_reset
    averaged = mean_state(kept.aligned)
    key = next(k for k in averaged if k.endswith("running_var"))
    assert torch.allclose(kept.merged[key], averaged[key])
    assert not torch.allclose(reset.merged[key], averaged[key])
    weight = key.replace("running_var", "weight")
    assert torch.equal(reset.merged[weight], kept.merged[weight])


def test_experiment_refuses_to_overwrite_results(tmp_path, capsys):
    out = tmp_path / "cx"
    assert main(["experiment", "counterexample", "--quick", "--quiet", "--out", str(out)]) == 0
    before = (out / "results.json").read_bytes()
    assert main(["experiment", "counterexample", "--quick", "--quiet", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
    assert main(["experiment", "counterexample", "--quick", "--quiet", "--force",
                 "--out", str(out)]) == 0
