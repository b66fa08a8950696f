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
    assert [r["width"] for r in width["results"]["resnet20_bn"]] == [1]
    assert {"naive", "weight", "activation"} <= set(width["results"]["resnet20_bn"][0])
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


def saved_checkpoints(trained, folder, model_string: str, count: int) -> list:
    """Paths of ``count`` trained models (seeds 0, 1, ...) saved as checkpoints in ``folder``."""
    from permalign.io import save_state_dict
    paths = []
    for seed in range(count):
        _, _, state = trained(model_string, seed, 5)
        paths.append(folder / f"m{seed}.pt")
        save_state_dict(state, paths[-1])
    return paths


def test_merge_command(trained, tmp_path, capsys):
    model_string = "mlp:depth=2,width=64"
    paths = saved_checkpoints(trained, tmp_path, model_string, 3)
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


# ------------------------------------------------------------------ issue 16: recipes, verdicts
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_result_has_a_measured_verdict(results, name):
    from permalign.experiments.common import VERDICTS
    _, record = results[name]
    assert record["verdict"]["status"] in VERDICTS
    assert "holds:" in record["verdict"]["why"] or "fails:" in record["verdict"]["why"]


def check_diagnostics(diag, *, init=True):
    """A comparison's diagnostics: objective before/after, matched activation correlation
    (data given) and each model's distance to its initialisation."""
    for method in diag["methods"].values():
        assert {"before", "after", "cosine_before", "cosine_after"} <= set(method["objective"])
        assert -1 <= method["objective"]["cosine_after"] <= 1
        corr = method["activation_correlation"]
        assert {"before", "after", "per_group"} <= set(corr)
        assert -1 <= corr["after"] <= 1
    if init:
        assert set(diag["distance_to_init"]) == {"A", "B"}
        for d in diag["distance_to_init"].values():
            assert -1 <= d["cosine"] <= 1 and d["relative_distance"] >= 0


def test_diagnostics_in_results(results):
    for name, key in (("bn-repair", "diagnostics"), ("width", "diagnostics"),
                      ("conv-barrier", "diagnostics")):
        diags = results[name][1]["results"][key]
        assert diags
        for diag in diags.values():
            check_diagnostics(diag)
    for diag in results["mlp-barrier"][1]["results"]["diagnostics"]:
        check_diagnostics(diag)
    for run in results["split-merge"][1]["results"]["runs"]:
        check_diagnostics(run["diagnostics"])
    for row in results["epochs"][1]["results"]["epochs"]:
        assert {"objective", "activation_correlation"} <= set(row["diagnostics"])
    mm = results["merge-many"][1]["results"]
    for regime in ("paper_regime", "current_regime"):
        diag = mm[regime]["diagnostics"]
        assert len(diag["distance_to_init"]) == len(mm[regime]["inputs"]) >= 3
        for inp in diag["weight_cosine_to_merge"].values():
            assert inp["aligned"] >= inp["as is"] - 1e-6  # alignment moves inputs closer
        assert all("test_ece" in m for m in mm[regime]["inputs"] + [mm[regime]["merged"]])


def test_setup_names_recipes(results):
    for name in ("bn-repair", "conv-barrier", "mlp-barrier", "split-merge", "epochs"):
        setup = results[name][1]["setup"]
        assert setup["recipe"].split(":")[0] in ("official-conv", "official-mlp", "quick-adam")
        assert setup["why_this_recipe"] and setup["recipe_source"]
    setup = results["merge-many"][1]["setup"]
    assert setup["paper regime recipe"].startswith("official-mlp")
    assert setup["current regime recipe"].startswith("quick-adam")
    assert results["width"][1]["setup"]["BN ResNet-20 recipe"].startswith("official-conv")
    assert results["bn-repair"][1]["setup"]["recipe"].startswith("official-conv")


def test_split_merge_reports_every_seed(results):
    record = results["split-merge"][1]
    runs = record["results"]["runs"]
    assert len(runs) == 2
    summary = record["results"]["summary"]
    assert summary["aligned midpoint (λ=0.5)"]["test_loss"]["n"] == 2
    assert all(0 <= r["best_lambda"] <= 1 for r in runs)


def test_verdict_from_checks():
    from permalign.experiments.common import verdict_from_checks
    assert verdict_from_checks([("a", True), ("b", True)], "c")["status"] == "reproduced"
    assert "cause" not in verdict_from_checks([("a", True)], "c")["why"]
    partly = verdict_from_checks([("a 0.1", True), ("b 0.2", False)], "cosine 0.99")
    assert partly["status"] == "partly"
    assert "holds: a 0.1" in partly["why"] and "fails: b 0.2" in partly["why"]
    assert "Measured cause: cosine 0.99" in partly["why"]
    assert verdict_from_checks([("a", False)])["status"] == "not"
    with pytest.raises(ValueError):
        verdict_from_checks([])


def bn_rows(mid):
    """Rows for bn_verdict: ``mid[(width, line, variant)] = midpoint accuracy``."""
    return [{"width": w, "line": line, "variant": v, "midpoint_acc": acc}
            for (w, line, v), acc in mid.items()]


def test_bn_verdict_from_numbers():
    from permalign.experiments.bn_repair import bn_verdict

    def rows(reset, repair, as_is=0.12):
        return bn_rows({(w, m, v): acc for w in (1, 4) for m in ("weight", "activation")
                        for v, acc in (("as is", as_is), ("+ BN reset", reset),
                                       ("+ REPAIR", repair))})
    assert bn_verdict(rows(0.6, 0.65))["status"] == "reproduced"
    failed = bn_verdict(rows(0.45, 0.3), cause="corr 0.4")
    assert failed["status"] == "partly" and "corr 0.4" in failed["why"]
    assert bn_verdict(rows(0.13, 0.1, as_is=0.12))["status"] == "not"


def test_width_verdict_from_numbers():
    from permalign.experiments.width import width_verdict
    mlp = [{"width": 16, "naive": 1.5, "aligned": 0.9}, {"width": 512, "naive": 1.3,
                                                         "aligned": 0.05}]
    conv = [{"width": 1, "naive": 2.0, "aligned": 0.8}, {"width": 4, "naive": 1.8,
                                                        "aligned": 0.3}]
    assert width_verdict(mlp, conv)["status"] == "reproduced"
    worse = [{"width": 1, "naive": 2.0, "aligned": 0.8}, {"width": 4, "naive": 0.9,
                                                         "aligned": 1.0}]
    verdict = width_verdict(mlp, worse)
    assert verdict["status"] == "partly" and "fails: BN ResNet-20" in verdict["why"]


def test_conv_barrier_and_mlp_barrier_verdicts():
    from permalign.experiments.conv_barrier import conv_barrier_verdict
    from permalign.experiments.mlp_barrier import barrier_verdict
    good = {"naive": 2.0, "weight": 0.1, "activation": 0.12, "ste": 0.05}
    assert conv_barrier_verdict({"m": good})["status"] == "reproduced"
    assert barrier_verdict(good)["status"] == "reproduced"
    bad = {"naive": 2.0, "weight": 1.9, "activation": 0.5, "ste": 0.6}
    assert conv_barrier_verdict({"m": bad})["status"] == "partly"
    assert barrier_verdict(bad)["status"] == "not"


def test_merge_and_split_verdicts():
    from permalign.experiments.merge_many_exp import merge_verdict
    from permalign.experiments.split_merge import split_verdict

    def regime(inputs, merged):
        m = lambda loss: {"test_loss": loss, "test_acc": 0.8, "test_ece": 0.1}  # noqa: E731
        return {"inputs": [m(x) for x in inputs], "merged": m(merged)}
    current = regime([0.30, 0.31], 0.38)
    assert merge_verdict(regime([0.7, 0.9], 0.55), current)["status"] == "reproduced"
    assert merge_verdict(regime([0.7, 0.9], 0.75), current)["status"] == "not"

    def run(a, b, mid, best, lam=0.5):
        return {"model A": {"test_loss": a}, "model B": {"test_loss": b},
                "aligned midpoint (λ=0.5)": {"test_loss": mid},
                "aligned best λ": {"test_loss": best}, "best_lambda": lam}
    assert split_verdict([run(0.4, 0.4, 0.35, 0.33)] * 3)["status"] == "reproduced"
    assert split_verdict([run(0.4, 0.4, 0.42, 0.36, 0.8)] * 3)["status"] == "partly"


def test_checkpoint_names_keep_image_sizes_apart(tmp_path):
    """A downsampled data set never reuses a full-resolution checkpoint of the same size."""
    from permalign.data import load_digits
    from permalign.experiments.common import _checkpoint_stem
    data = load_digits()
    small = data.downsampled(2)
    kwargs = dict(seed=0, recipe="official-conv", epochs=3)
    assert _checkpoint_stem("resnet20", data, **kwargs) != \
        _checkpoint_stem("resnet20", small, **kwargs)
    assert _checkpoint_stem("resnet20", data, **kwargs) != \
        _checkpoint_stem("resnet20", data, **{**kwargs, "recipe": "quick-adam"})


def test_trained_state_follows_the_recipe(tmp_path):
    """The cached training is the recipe's: the same seed gives the weights train_seed gives,
    and a second call loads them instead of training again."""
    from permalign.data import load_digits
    from permalign.experiments.common import trained_state, train_config
    from permalign.workflow import train_seed
    data = load_digits().subset(train=200)
    cfg = ExperimentConfig(out=tmp_path, scale="quick", progress=False)
    state = trained_state(cfg, "mlp:depth=2,width=16", data, seed=3, recipe="official-mlp",
                          epochs=2)
    again = train_seed("mlp:depth=2,width=16", data,
                       train_config("official-mlp", data, seed=3, epochs=2), progress=False)
    assert all(torch.equal(state[k], again.state[k]) for k in state)
    files = list((tmp_path / "checkpoints").iterdir())
    assert len(files) == 1 and "official-mlp" in files[0].name
    assert trained_state(cfg, "mlp:depth=2,width=16", data, seed=3, recipe="official-mlp",
                         epochs=2)["layers.0.weight"].shape == state["layers.0.weight"].shape


def test_align_prints_objective_before_and_after(trained, tmp_path, capsys):
    model_string = "mlp:depth=2,width=32"
    paths = saved_checkpoints(trained, tmp_path, model_string, 2)
    assert main(["align", *map(str, paths), "--model", model_string, "--quiet",
                 "--out", str(tmp_path / "b.pt"), "--perm-out", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("weight-matching objective"))
    assert "before" in line and "after" in line
    change = json.loads((tmp_path / "p.json").read_text())["objective_change"]
    assert change["after"] >= change["before"]  # weight matching never lowers the objective
