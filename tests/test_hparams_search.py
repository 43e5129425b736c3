"""Hydra's Optuna sweeper drives propbench: each job returns its objective, and the shipped
conf/hparams_search/tanh_edge_of_chaos.yaml finds the edge of chaos that mean-field theory
predicts. Needs the optional extra: pip install 'propbench[optuna]'."""

import json

import pytest
import yaml

from propbench import theory
from tests.conftest import cli

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_each_job_returns_its_objective_to_optuna(tmp_path):
    """Three trials of a one-dimensional search end with exit 0: every job returned a float."""
    folder = tmp_path / "search"
    proc = cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "depth=int(interval(3,10))",
               "width=8", "batch_size=4", f"hydra.sweep.dir={folder}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert 3 <= best["best_params"]["depth"] <= 10
    # what Optuna minimized is each job's |log10| gradient ratio, as its summary.json says
    scores = [abs(json.loads((folder / str(job) / "summary.json").read_text())
                  ["gradient"]["log10_ratio"]) for job in range(3)]
    assert best["best_value"] == pytest.approx(min(scores))
    assert "3 jobs: 3 ok" in proc.stdout


@pytest.mark.slow
def test_optuna_finds_the_critical_sigma_w2_of_a_tanh_net(tmp_path):
    folder = tmp_path / "search"
    proc = cli("+hparams_search=tanh_edge_of_chaos", "hydra.sweeper.n_trials=20", "depth=20",
               "width=128", "batch_size=64", f"hydra.sweep.dir={folder}", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    critical = theory.critical_sigma_w2("tanh", 0.05)  # chi_1 = 1: 1.76
    # 20 layers: |log10 ratio| ~ 20 |log10 chi_1|, about 2 decades per unit of sigma_w^2 near
    # the edge (4.7 at depth 50, measured), so the best trial sits well within 0.15 of it
    assert best["best_params"]["init.sigma_w2"] == pytest.approx(critical, abs=0.15)
    assert best["best_value"] < 0.7
    assert "20 jobs: 20 ok" in proc.stdout  # every trial aggregated like a sweep's job
