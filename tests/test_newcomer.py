"""What a new user runs first: `experiment all --out DIR` then `report DIR`, and quick
experiments on a machine without Fashion-MNIST."""
from __future__ import annotations

from pathlib import Path

import pytest

import permalign.data
import permalign.experiments
from permalign.cli import main
from permalign.errors import DataError
from permalign.experiments import ExperimentConfig
from permalign.experiments.common import experiment_data


def test_experiment_all_folder_feeds_report(monkeypatch, tmp_path, capsys):
    """The folder `experiment all --out DIR` writes is what `report DIR` reads (run through the
    command line, on the cheapest experiment)."""
    registry = permalign.experiments.REGISTRY
    monkeypatch.setattr(permalign.experiments, "REGISTRY",
                        {"counterexample": registry["counterexample"]})
    root = tmp_path / "results"
    assert main(["experiment", "all", "--quick", "--dataset", "digits", "--out", str(root),
                 "--quiet"]) == 0
    assert (root / "counterexample" / "results.json").is_file()
    capsys.readouterr()
    out = tmp_path / "RESULTS.md"
    assert main(["report", str(root), "--out", str(out)]) == 0
    assert "## counterexample" in out.read_text()


@pytest.fixture()
def no_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.setattr(permalign.data, "DEFAULT_ROOT", tmp_path / "no-datasets")
    monkeypatch.delenv("PERMALIGN_DATA", raising=False)


def test_quick_runs_fall_back_to_digits(no_fashion_mnist, tmp_path, capsys):
    data = experiment_data(ExperimentConfig(out=tmp_path, scale="quick"))
    assert data.name == "digits"
    assert "this quick run uses the bundled digits instead" in capsys.readouterr().out


@pytest.mark.parametrize("scale, dataset", [("full", None), ("quick", "fashion-mnist")])
def test_full_runs_and_named_data_keep_the_error(no_fashion_mnist, tmp_path, scale, dataset):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        experiment_data(ExperimentConfig(out=tmp_path, scale=scale, dataset=dataset))


def _readme_numbers():
    """tools/readme_numbers.py, imported from its path (tools/ is not a package)."""
    import importlib.util
    path = Path(__file__).resolve().parent.parent / "tools" / "readme_numbers.py"
    spec = importlib.util.spec_from_file_location("readme_numbers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_barriers_match_the_readme_within_its_stated_tolerance():
    """The digits demo, run as `make demo` runs it, gives the README's barriers to within the
    tolerance the README states for other builds (exactly on the reference build)."""
    tool = _readme_numbers()
    shown = tool.parse_demo_block(tool.blocks(tool.README.read_text())["demo-digits"])
    assert set(shown) == {"naive", "weight"}
    fresh = tool.run_demo("digits")
    for line, metrics in shown.items():
        for metric, value in metrics.items():
            assert abs(fresh[line][metric] - value) <= tool.TOLERANCE, (line, metric)
    assert fresh["weight"]["test_loss"] < fresh["naive"]["test_loss"] / 5
