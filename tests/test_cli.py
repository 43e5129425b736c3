"""The CLI end to end, as a user runs it (subprocesses, from a scratch folder)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import propbench
from tests.conftest import ROOT, cfg, cli

TINY = ("depth=5", "width=32", "batch_size=16")


def test_main_job_writes_a_complete_run_and_round_trips(tmp_path):
    out = tmp_path / "run"
    proc = cli(*TINY, "init=kaiming", "act=prelu", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "activation: stable" in proc.stdout and "gradient:   stable" in proc.stdout
    assert str(out) in proc.stdout
    assert {"stats.csv", "summary.json", "propagation.png", ".hydra"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["act"] == {"name": "prelu", "slope": 0.25}
    assert summary["activation"]["verdict"] == "stable"
    frame = propbench.load(out)
    again = propbench.run(cfg(*TINY, "init=kaiming", "act=prelu"))
    pd.testing.assert_frame_equal(frame, again.astype(frame.dtypes.to_dict()), rtol=1e-8)


def test_default_run_folder_is_under_results(tmp_path):
    proc = cli(*TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "results" / "runs").iterdir()
    assert run.name.endswith("_mlp_relu_default_d5")
    assert (run / "summary.json").exists()


def test_multirun_sweep_runs_every_job(tmp_path):
    proc = cli("-m", "depth=2,3", "act=relu,tanh", "width=8", "batch_size=4",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    frames = [propbench.load(tmp_path / "sweep" / str(job)) for job in range(4)]
    assert sorted((f.depth[0], f.act[0]) for f in frames) == [
        (2, "relu"), (2, "tanh"), (3, "relu"), (3, "tanh")]


BAD = [
    (["depth=0"], "depth=0: must be >= 1"),
    (["depth=-1"], "depth=-1: must be >= 1"),
    (["depth=abc"], "depth=abc"),
    (["depth=1000000000"], "lower depth, width or batch_size"),
    (["width=-3"], "width=-3: must be >= 1"),
    (["batch_size=0"], "batch_size=0"),
    (["trials=0"], "trials=0"),
    (["act=nope"], "act=nope: no such option; choose one of elu, gelu"),
    (["init=bogus"], "init=bogus: no such option; choose one of default"),
    (["model=rnn"], "model=rnn: no such option; choose one of cnn, mlp"),
    (["dtype=half3"], "expected one of [float32, float64]"),
    (["init=kaiming", "init.mode=sideways"], "expected one of [fan_in, fan_out]"),
    (["init=kaiming", "init.gain=-1"], "init.gain=-1.0: must be a finite number > 0"),
    (["act=prelu", "act.slope=-1"], "act.slope=-1.0: prelu needs a finite slope >= 0"),
    (["dept=5"], "dept: unknown key; did you mean depth?"),
    (["norm=batchnorm"], "did you mean model.norm?"),
    (["depth=10,20"], "a list of values is a sweep; add -m"),
    (["-m", "act=relu,nope"], "act=nope: no such option"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path, args, message):
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("propbench: error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_cuda_request_without_cuda_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        proc = cli(f"device=cuda:{torch.cuda.device_count()}", cwd=tmp_path)
        assert "CUDA device(s) visible" in proc.stderr
    else:
        proc = cli("device=cuda", cwd=tmp_path)
        assert "device=cuda: no CUDA device is available" in proc.stderr
    assert proc.returncode == 2 and not (tmp_path / "results").exists()


def test_help_lists_groups(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for line in ("model: cnn, mlp", "act: elu, gelu", "init: default, kaiming"):
        assert line in proc.stdout


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("propbench")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run([script, "act=nope"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "act=nope" in proc.stderr


@pytest.mark.slow
def test_non_editable_install_ships_the_configs(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)], check=True)
    env = {"PYTHONPATH": str(target)}
    proc = cli(*TINY, "act=tanh", "init=xavier", f"hydra.run.dir={tmp_path / 'run'}",
               cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert str(target) in subprocess.run(
        [sys.executable, "-c", "import propbench.config as c; print(c.CONF_DIR)"],
        env=env, capture_output=True, text=True, cwd=tmp_path).stdout
