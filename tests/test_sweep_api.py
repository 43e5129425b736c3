"""Sweeps from Python (run_sweep), a folder of run(out_dir=...) results aggregated, and the
number each sweep job returns to Hydra's sweeper (objective)."""

import math

import pandas as pd
import pytest

import propbench
from propbench.errors import ConfigError
from propbench.verdict import objective
from tests.conftest import cfg

LOG10_HALF = math.log10(0.5)


@pytest.fixture(scope="module")
def xavier_vs_kaiming(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api") / "sweep"
    report = propbench.run_sweep({"depth": 20, "act": "relu", "init": ["kaiming", "xavier"],
                                  "width": 128, "batch_size": 64}, folder, quiet=True)
    return folder, report


def test_run_sweep_writes_the_folder_report_reads(xavier_vs_kaiming):
    folder, report = xavier_vs_kaiming
    assert report.ok and report.folder == folder.resolve()
    assert {"jobs.json", "sweep.csv", "sweep_summary.csv", "summary.md",
            "grid_depth20.png"} <= {p.name for p in folder.iterdir()}
    assert {p.name for p in report.figures} >= {"grid_depth20.png"}
    table = propbench.load_sweep(folder).set_index("init")
    # Xavier (sigma_w^2 = 1) halves a ReLU net's gradient variance per layer: 19 steps back
    # from layer 20 to layer 1; Kaiming (sigma_w^2 = 2) keeps it.
    assert table.loc["xavier", "gradient_log10_ratio"] == pytest.approx(19 * LOG10_HALF, abs=0.6)
    assert table.loc["kaiming", "gradient_log10_ratio"] == pytest.approx(0, abs=0.6)
    columns = ["gradient_log10_ratio", "activation_log10_ratio", "gradient_verdict", "status"]
    pd.testing.assert_frame_equal(report.table.set_index("init")[columns], table[columns])


def test_run_sweep_refuses_a_bad_override_with_the_cli_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^act=nope: no such option; choose one of"):
        propbench.run_sweep({"act": ["relu", "nope"]}, tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()


def test_aggregate_accepts_a_folder_of_run_results(tmp_path):
    for init in ("default", "kaiming"):
        propbench.run(cfg("depth=10", "width=128", "batch_size=64", f"init={init}"),
                      tmp_path / f"relu_{init}")
    report = propbench.aggregate(tmp_path)
    assert report.ok and list(report.table["overrides"]) == ["init=default", "init=kaiming"]
    table = report.table.set_index("init")
    # PyTorch's default init, Var(W) = 1/(3 fan_in), and ReLU: the gradient variance falls
    # by sigma_w^2 / 2 = 1/6 per layer, 9 steps from layer 10 back to layer 1
    assert table.loc["default", "gradient_log10_ratio"] == pytest.approx(9 * math.log10(1 / 6), abs=0.7)
    assert table.loc["kaiming", "gradient_verdict"] == "stable"
    assert (tmp_path / "sweep_summary.csv").exists() and (tmp_path / "heatmap_depth10.png").exists()
    frame = propbench.load(tmp_path)
    assert list(frame["init"].cat.categories) == ["default", "kaiming"]


def test_objective_is_the_absolute_log10_ratio(xavier_vs_kaiming):
    folder, _ = xavier_vs_kaiming
    for job in (0, 1):
        summary = propbench.results.read_summary(folder / str(job))
        gradient, activation = (abs(summary[q]["log10_ratio"]) for q in ("gradient", "activation"))
        assert objective(summary) == gradient
        assert objective(summary, "activation") == activation
        assert objective(summary, "both") == max(gradient, activation)
    gone = {"gradient": {"log10_ratio": None, "first_nonfinite_layer": None, "verdict": "vanishing"}}
    assert objective(gone) == math.inf  # underflowed to 0 (JSON null)
    assert math.isnan(objective({}))


def test_objective_is_a_config_key():
    assert propbench.settings(cfg()).objective.value == "gradient"
    assert propbench.settings(cfg("objective=both")).objective.value == "both"
    with pytest.raises(ConfigError, match="objective"):
        cfg("objective=loss")
