"""The CLI end to end, as a user runs it (subprocesses, from a scratch folder)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import propbench
import propbench.errors
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
    again = propbench.run(cfg(*TINY, "init=kaiming", "act=prelu")).frame
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
    (["depth=1e9"], "depth=1e9: Value '1000000000.0' of type 'float' could not be converted to Integer"),
    (["width=-3"], "width=-3: must be >= 1"),
    (["width=0"], "width=0: must be >= 1"),
    (["act=prelu", "act.slope=nan"], "act.slope=nan: prelu needs a finite slope >= 0"),
    (["init=kaiming", "init.mode=null"], "init.mode=null: init=kaiming needs a value"),
    (["batch_size=0"], "batch_size=0"),
    (["trials=0"], "trials=0"),
    (["act=nope"], "act=nope: no such option; choose one of elu, gelu"),
    (["init=bogus"], "init=bogus: no such option; choose one of default"),
    (["model=rnn"], "model=rnn: no such option; choose one of cnn, custom, mlp"),
    (["dtype=half3"], "expected one of [float32, float64]"),
    (["init=kaiming", "init.mode=sideways"], "expected one of [fan_in, fan_out]"),
    (["init=kaiming", "init.gain=-1"], "init.gain=-1: must be a finite number > 0"),
    (["act=prelu", "act.slope=-1"], "act.slope=-1.0: prelu needs a finite slope >= 0"),
    (["dept=5"], "dept: unknown key; did you mean depth?"),
    (["norm=batchnorm"], "did you mean model.norm?"),
    (["depth=10,20"], "a list of values is a sweep; add -m"),
    (["~bias"], "bias: required (it was deleted)"),
    (["-m", "act=relu,nope"], "act=nope: no such option"),
    # every job of a sweep is composed and checked on its own, as strictly
    (["-m", "seed=0,x"], "seed=x: Value 'x' of type 'str' could not be converted to Integer"),
    (["-m", "depth=5,-1"], "depth=-1: must be >= 1"),
    (["-m", "trials=2", "trial_batch=1,0"], "trial_batch=0: must be >= 1"),
    (["-m", "init=kaiming", "init.gain=1,-2"], "init.gain=-2: must be a finite number > 0"),
    (["-m", "act=relu,prelu", "act.slope=0.1"], "act.slope=0.1: only leaky_relu and prelu"),
    (["init=kaiming", "init.std=2"], "init.std=2: init=kaiming takes only gain, mode, bias"),
    # a bad value gets the same line wherever it sits in a sweep
    (["-m", "init=normal,kaiming", "init.std=0.1"], "init.std=0.1: init=kaiming takes only gain, mode, bias"),
    (["-m", "depth=2,3", "act=relu,nope"], "act=nope: no such option"),
    (["-m", "+experiment=edge_of_chaos", "init.sigma_b2=0,-1"], "init.sigma_b2=-1.0: must be a finite number >= 0"),
    # keys no schema has, and models propbench did not write
    (["+foo=1"], "foo: unknown key"),
    (["+model._target_=torchvision.models.resnet18"], "model._target_: unknown key; model=mlp takes only norm; a model of your own is model=custom"),
    (["model=custom", "model._target_=torchvision.models.resnet18", "input.shape=[3,32,32]"],
     "model._target_=torchvision.models.resnet18: cannot be imported (ModuleNotFoundError"),
    (["model=custom", "model._target_=torch.nn.Linear", "model.in_featurez=4", "input.shape=[4]"],
     "model._target_=torch.nn.Linear: building it failed: TypeError:"),
    (["model=custom", "model._target_=torch.nn.Linear", "model.in_features=4",
      "model.out_features=4", "model.device=meta", "input.shape=[4]"], "the model is on the meta device"),
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


@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_unavailable_cuda_device_is_refused(tmp_path, device):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available() and (device == "cuda" or torch.cuda.device_count() > 7):
        pytest.skip("this device exists here")
    proc = cli(f"device={device}", cwd=tmp_path)
    expected = "CUDA device(s) visible" if torch.cuda.is_available() else "no CUDA device is available"
    assert proc.returncode == 2 and f"device={device}: " in proc.stderr and expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_overflow_finishes_with_one_warning_line(tmp_path):
    proc = cli("init=normal", "init.std=3", "depth=200", "width=64", "batch_size=32",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "activation: exploding (non-finite values from layer" in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("propbench: warning: activation overflowed")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # strict JSON
    assert summary["activation"]["verdict"] == "exploding"
    assert summary["activation"]["first_nonfinite_layer"] > 1
    assert propbench.load(tmp_path / "run")["nonfinite"].sum() > 0


def test_underflow_finishes_vanishing_with_one_warning_line(tmp_path):
    proc = cli("init=default", "act=relu", "depth=500", "width=64", "batch_size=32",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and "underflowed to 0 from layer" in proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["gradient"]["verdict"] == "vanishing"
    assert summary["gradient"]["first_zero_layer"] is not None


def test_a_run_killed_midway_is_recognised_as_incomplete(tmp_path):
    import os
    import signal
    import time

    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "propbench", "depth=400", "width=512",
                             "trials=4", f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (run / ".hydra").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()
    with pytest.raises(propbench.errors.ResultsError, match="incomplete run"):
        propbench.load(run)


def test_resume_keeps_a_complete_run_of_the_same_config(tmp_path):
    args = (*TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert cli(*args, cwd=tmp_path).returncode == 0
    stamp = (tmp_path / "run" / "summary.json").stat().st_mtime_ns
    kept = cli(*args, "resume=true", cwd=tmp_path)
    assert "kept" in kept.stdout and (tmp_path / "run" / "summary.json").stat().st_mtime_ns == stamp
    rerun = cli(*args, "resume=true", "seed=1", cwd=tmp_path)  # another config: run again
    assert "wrote" in rerun.stdout and (tmp_path / "run" / "summary.json").stat().st_mtime_ns != stamp


def test_same_config_same_bytes_alone_and_in_sweeps(tmp_path):
    alone = tmp_path / "alone"
    assert cli(*TINY, "seed=3", f"hydra.run.dir={alone}", cwd=tmp_path).returncode == 0
    again = tmp_path / "again"
    assert cli(*TINY, "seed=3", f"hydra.run.dir={again}", cwd=tmp_path).returncode == 0
    other = tmp_path / "other"
    assert cli(*TINY, "seed=4", f"hydra.run.dir={other}", cwd=tmp_path).returncode == 0
    for launcher in ([], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]):
        sweep = tmp_path / f"sweep{len(launcher)}"
        assert cli("-m", *TINY, "seed=2,3", *launcher, f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path).returncode == 0
        assert (sweep / "1" / "stats.csv").read_bytes() == (alone / "stats.csv").read_bytes()
    assert (again / "stats.csv").read_bytes() == (alone / "stats.csv").read_bytes()
    assert (other / "stats.csv").read_bytes() != (alone / "stats.csv").read_bytes()
    summary = json.loads((alone / "summary.json").read_text())
    assert {"deterministic_algorithms", "threads", "seeds"} <= set(summary["determinism"])
    assert summary["versions"]["propbench"] == propbench.__version__


def test_help_lists_groups(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for line in ("model: cnn, custom, mlp, torch_transformer", "act: elu, gelu", "init: default, kaiming"):
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
    experiment = cli("+experiment=selu_lecun", "--cfg", "job", cwd=tmp_path, env=env)
    assert experiment.returncode == 0 and "name: selu_lecun" in experiment.stdout
    named = cli("model=torch_transformer", "input.shape=[4,128]", "--cfg", "job", cwd=tmp_path, env=env)
    assert named.returncode == 0 and "_target_: torch.nn.TransformerEncoder" in named.stdout


def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """A run the estimate let through but the device could not hold ends like any mistake."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from propbench import cli as cli_module
    from propbench import runner

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(runner, "probe_trials", out_of_memory)
    monkeypatch.setattr(sys, "argv", ["propbench", *TINY, f"hydra.run.dir={tmp_path / 'run'}"])
    try:
        with pytest.raises(SystemExit) as exit_:
            cli_module.main()
    finally:
        GlobalHydra.instance().clear()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["propbench: error: out of memory on cpu at depth=5, width=32, batch_size=16; "
                     "lower one of them"]
    assert not (tmp_path / "run" / "summary.json").exists()


SMALL_TRANSFORMER = ("model=torch_transformer", "model.num_layers=3", "model.encoder_layer.d_model=16",
                     "model.encoder_layer.nhead=2", "model.encoder_layer.dim_feedforward=32",
                     "input.shape=[5,16]", "batch_size=4")


def test_a_model_propbench_did_not_write_is_probed_by_block(tmp_path):
    """torch's TransformerEncoder from conf/model/torch_transformer.yaml: post-LN blocks end
    in a LayerNorm of weight 1, so the stream's variance is 1 at every block; its attention
    reads out_proj's weight without calling the module, which the run says."""
    out = tmp_path / "run"
    proc = cli(*SMALL_TRANSFORMER, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "torch.nn.TransformerEncoder \u00b7 3 blocks" in proc.stdout
    assert "probed: 3 x TransformerEncoderLayer (layers.0 .. layers.2); backpropagated from the output" in proc.stdout
    assert "activation: stable    (block output variance, last / first block" in proc.stdout
    assert "propbench: warning: probe: 3 tapped module(s) never ran: layers.0.self_attn.out_proj" in proc.stderr
    frame = propbench.load(out)
    stream = frame[(frame.site == "block") & (frame.quantity == "activation")]
    assert list(stream.layer) == [1, 2, 3]
    assert stream["var"].to_numpy() == pytest.approx(1.0, rel=1e-3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["model"]["kwargs"]["num_layers"] == 3
    assert summary["theory"]["applies"] is False


def test_custom_models_sweep_like_the_built_in_ones(tmp_path):
    proc = cli("-m", *SMALL_TRANSFORMER, "model.num_layers=2,4", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    depths = sorted(propbench.load(tmp_path / "sweep" / str(job)).depth.iloc[0] for job in range(2))
    assert depths == [2, 4]
