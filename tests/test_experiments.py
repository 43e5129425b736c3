"""Every experiment composes, and a reduced version of each reaches its stated outcome
(its claim held, so the sweep exits 0)."""

import pytest

from propbench.config import CONF_DIR, compose
from tests.conftest import cli

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR.parent / "experiments" / "experiment").glob("*.yaml"))

# Smaller sizes or fewer depths, chosen so that every verdict checked stays clear of the
# +-1 thresholds (margins >= 0.15 in log10, deterministic for the fixed seed).
REDUCED = {
    "default_init": ["width=128", "batch_size=128", "trials=1", "depth=10,30"],
    "prelu_gain": ["width=256", "trials=2", "depth=100"],
    "selu_lecun": ["width=128", "batch_size=128", "trials=1", "depth=10,100"],
    "conv_fan_mode": ["trials=1", "batch_size=8"],
    "activation_zoo": ["width=128", "batch_size=128", "trials=1"],
    "edge_of_chaos": ["width=128", "batch_size=64", "init.sigma_w2=1,1.75,2,3",
                      "init.sigma_b2=0.05,0.2"],
    # depth 16 (the CNNs too), one example: the spread grows 0.05 a layer for tanh +
    # orthogonal and 0.08 for the delta-orthogonal CNN between layers 8 and 16, >= 1 elsewhere
    "dynamical_isometry": ["depth=16", "spectrum.examples=1"],
    "residual_scaling": ["batch_size=64", "trials=1", "depth=10"],
    "bn_resnet": ["trials=1", "depth=10,30"],
    "nf_resnet": ["trials=1", "depth=16"],
    "rank_collapse": ["init=xavier,kaiming", "model.order=post", "model.mlp_ratio=0"],
    "layernorm_position": ["init=xavier,kaiming", "depth=6,24"],
}


def test_every_experiment_has_a_reduced_run():
    assert set(EXPERIMENTS) == set(REDUCED)


@pytest.mark.parametrize("name", sorted(REDUCED))
def test_experiment_composes_with_its_claim(name):
    cfg = compose([f"+experiment={name}"])
    assert cfg.experiment.name == name
    assert cfg.experiment.claim and cfg.experiment.source and cfg.experiment.expect


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REDUCED))
def test_reduced_experiment_reaches_its_outcome(name, tmp_path):
    proc = cli(f"+experiment={name}", *REDUCED[name], f"hydra.sweep.dir={tmp_path / name}",
               cwd=tmp_path, timeout=600)
    summary = (tmp_path / name / "summary.md").read_text()
    assert proc.returncode == 0, summary
    assert f"## Claim ({name}): HELD" in summary
    assert "FAIL" not in summary
