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
    (["model=transformer", "width=30"], "model.heads=4: must divide width=30"),
    (["model=transformer", "model.tokens=0"], "model.tokens=0: must be >= 1"),
    (["model=transformer", "model.alpha=-1"], "model.alpha=-1: must be a finite number >= 0"),
    (["model=transformer", "model.order=middle"], "expected one of [pre, post]"),
    (["model=transformer", "model.norm=batchnorm"], "a transformer takes layernorm or none"),
    (["dtype=half3"], "expected one of [float32, float64]"),
    (["objective=loss"], "expected one of [gradient, activation, both]"),
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
    (["+model._target_=torchvision.models.resnet18"], "model._target_: unknown key; model=mlp takes only norm; a model of your own is model=custom"),
    (["model=custom", "model._target_=torchvision.models.resnet18", "input.shape=[3,32,32]"],
     "model._target_=torchvision.models.resnet18: cannot be imported (ModuleNotFoundError"),
    (["model=custom", "model._target_=torch.nn.Linear", "model.in_featurez=4", "input.shape=[4]"],
     "model._target_=torch.nn.Linear: building it failed: TypeError:"),
    (["model=custom", "model._target_=torch.nn.Linear", "model.in_features=4",
      "model.out_features=4", "model.device=meta", "input.shape=[4]"], "the model is on the meta device"),
    # the Jacobian spectrum and the dynamical-isometry inits
    (["spectrum=true", "spectrum.examples=0"], "spectrum.examples=0: must be >= 1"),
    (["spectrum=true", "batch_size=4", "spectrum.examples=8"], "spectrum.examples=8: at most batch_size=4"),
    (["spectrum=true", "depth=4", "spectrum.layers=[1,9]"], "spectrum.layers: 9 is not a block (1..depth=4)"),
    (["spectrum.layers=[0]"], "spectrum.layers: 0 is not a block"),
    (["spectrum=true", "model.norm=batchnorm"], "spectrum=true: BatchNorm mixes the examples"),
    (["spectrum.method=svd"], "spectrum.method=svd: Invalid value 'svd', expected one of [auto, exact, estimate]"),
    (["spectrum=maybe"], "spectrum=maybe: Invalid type assigned"),
    (["spectrum.exampls=3"], "spectrum.exampls: unknown key; did you mean spectrum.examples?"),
    (["-m", "spectrum=true,false", "spectrum.examples=0"], "spectrum.examples=0: must be >= 1"),
    (["spectrum=true", "spectrum.method=exact", "model=cnn", "model.image_size=512", "width=64"],
     "spectrum.method=exact: the Jacobians need about"),
    (["model=cnn", "width=2", "init=delta_orthogonal"],
     "init=delta_orthogonal: width=2 < model.in_channels=3; an orthogonal centre tap needs out_channels >= in_channels"),
    (["init=lsuv", "init.tol=0"], "init.tol=0.0: must be a finite number > 0"),
    (["init=lsuv", "init.max_iter=0"], "init.max_iter=0: must be >= 1"),
    (["init=lsuv", "init.gain=2"], "init.gain=2: init=lsuv takes only tol, max_iter, bias"),
    (["model=custom", "model._target_=torch.nn.Linear", "model.in_features=4", "model.out_features=4",
      "input.shape=[4]", "spectrum=true"], "spectrum=true: not from the CLI for model=custom"),
    # what a new user tried: each once gave a traceback, a usage text or silence
    (["model.norm=batchnorm", "batch_size=1"], "model.norm=batchnorm needs batch_size >= 2"),
    (["width=1", "batch_size=1"], "every tensor would hold one element, which has no variance"),
    (["depth=${oops}"], "depth=${oops}: Interpolation key 'oops' not found"),
    (["model=cnn", "model.in_channels=1000000000000"], "lower model.in_channels, model.num_classes"),
    (["model=cnn", "model.num_classes=1000000000000"], "lower model.in_channels, model.num_classes"),
    (["-m", "depth=interval(1,5)"], "depth=interval(1,5): an interval needs an optimizing sweeper"),
    (["hydra.run.dir=/dev/null"], "hydra.run.dir=/dev/null: /dev/null is a file, not a folder"),
    (["hydra.run.dir=/dev/null/run"], "hydra.run.dir=/dev/null/run: /dev/null is a file, not a folder"),
    (["hydra.run.dir="], "hydra.run.dir=: empty; give a folder"),
    (["-m", "depth=2,3", "hydra.sweep.dir="], "hydra.sweep.dir=: empty; give a folder"),
    (["+dept=5"], "+dept: unknown key, which propbench would ignore; did you mean depth?"),
    (["+foo=1"], "+foo: unknown key, which propbench would ignore"),
    (["+model.foo=1"], "model.foo: unknown key; model=mlp takes only norm"),
    (["init=scaled", "init.bias=default"], "init.bias=default: init=scaled takes only sigma_w2"),
    (["~depth", "depth=3"], "depth=3: depth was deleted by ~depth; give one of the two"),
    (["experiment=default_init"], "experiment is not in the defaults list; add it with +experiment=default_init"),
    (["hydra.run.dir=out/a", "b"], "b: not KEY=VALUE (a value with spaces must be quoted"),
    (["hydra.run.dir=out/caf\u00e9"], "hydra.run.dir=out/caf\u00e9: Hydra cannot parse this value; quote it"),
    # residual models
    (["model=resmlp", "model.alpha=-1"], "model.alpha=-1: must be a finite number >= 0 or inv_sqrt_depth"),
    (["model=resnet", "model.alpha=sqrt"], "model.alpha=sqrt: must be a finite number >= 0 or inv_sqrt_depth"),
    (["model=resmlp", "model.alpha=nan"], "model.alpha=nan: must be a finite number"),
    (["model=resmlp", "model.branch_layers=0"], "model.branch_layers=0: must be >= 1"),
    (["model=resmlp", "model.order=middle"], "expected one of [pre, post]"),
    (["model=resnet", "model.norm=groupnorm"], "expected one of [none, batchnorm, layernorm]"),
    (["model=resmlp", "model.nf=maybe"], "model.nf=maybe"),
    (["model=resmlp", "model.nf=true", "model.norm=batchnorm"], "model.nf=true: normalizer-free needs model.norm=none"),
    (["model=resnet", "model.nf=true", "model.order=post"], "model.nf=true: normalizer-free blocks are pre-activation"),
    (["model=mlp", "model.alpha=0.5"], "model.alpha=0.5: model=mlp takes only norm"),
    (["model=cnn", "model.branch_layers=2"], "model.branch_layers=2: model=cnn takes only"),
    (["init=fixup"], "init=fixup: only residual models take it (model=resmlp or model=resnet, not model=mlp)"),
    (["model=cnn", "init=fixup"], "init=fixup: only residual models take it"),
    (["model=resmlp", "init=fixup", "model.nf=true"], "init=fixup: zeroes layers that weight standardization"),
    (["-m", "model=resmlp", "model.alpha=1,-2"], "model.alpha=-2: must be a finite number >= 0"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path, args, message):
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("propbench: error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a folder


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
    for line in ("model: cnn, custom, mlp, resmlp, resnet, torch_transformer, transformer",
                 "act: elu, gelu", "init: default, delta_orthogonal, fixup, kaiming"):
        assert line in proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["act=nope"], ["-m", "act=relu,nope"]])
def test_help_and_rejected_overrides_do_not_import_torch(tmp_path, args):
    """What needs no network answers without torch's second of imports (the benchmark
    times it; a stray import once took a rejected override from 0.3 s to 2 s)."""
    code = ("import sys; from propbench.cli import main\n"
            f"sys.argv = ['propbench', *{args!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


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
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

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
def test_spectrum_run_writes_spectrum_csv_with_theory(tmp_path):
    """spectrum=true: spectrum.csv (one row per trial, example, layer) with the config
    columns and the theory; a linear orthogonal net is an exact isometry (s = 1 throughout)."""
    out = tmp_path / "run"
    proc = cli("spectrum=true", "spectrum.examples=2", "act=linear", "init=orthogonal", "bias=false",
               "depth=8", "width=32", "batch_size=8", "trials=2", "dtype=float64",
               f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "spectrum:   isometric" in proc.stdout and "spectrum.csv, spectrum.png" in proc.stdout
    spectrum = propbench.load_spectrum(out)
    assert len(spectrum) == 2 * 2 * 4  # trials x examples x layers 1, 2, 4, 8
    assert {"trial", "example", "layer", "mean_sq", "var_sq", "max_s", "min_s", "method", "theory",
            "theory_mean_sq", "model", "act", "init", "depth", "width", "seed"} <= set(spectrum.columns)
    assert (spectrum["max_s"] - 1).abs().max() < 1e-6 and (spectrum["min_s"] - 1).abs().max() < 1e-6
    assert (spectrum["theory"] == 0).all() and (spectrum["theory_mean_sq"] == 1).all()
    summary = json.loads((out / "summary.json").read_text())
    block = summary["spectrum"]
    assert block["verdict"] == "isometric" and block["spread"] < 1e-10
    assert block["theory"]["applies"] and block["theory"]["spread"] == 0
    assert (out / "spectrum.png").stat().st_size > 0


def test_spectrum_false_runs_do_no_spectrum_work(tmp_path, monkeypatch):
    from propbench import compare, spectrum, theory

    def refuse(*args, **kwargs):
        raise AssertionError("spectrum work in a spectrum=false run")

    monkeypatch.setattr(spectrum, "jacobian_spectrum", refuse)
    monkeypatch.setattr(theory, "spectrum_moments", refuse)
    monkeypatch.setattr(compare.theory, "spectrum_moments", refuse)
    result = propbench.run(cfg(*TINY), tmp_path / "run")
    assert result.spectrum is None and "spectrum" not in result.summary
    assert not (tmp_path / "run" / "spectrum.csv").exists()
    assert not (tmp_path / "run" / "spectrum.png").exists()


def test_lsuv_leaves_unit_variance_on_the_clis_own_inputs(tmp_path):
    out = tmp_path / "run"
    proc = cli("init=lsuv", "act=tanh", "depth=10", "width=64", "batch_size=64", "trials=2",
               f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    frame = propbench.load(out)
    pre = frame[(frame.site == "pre") & (frame.quantity == "activation")]
    assert len(pre) == 20 and (pre["var"] - 1).abs().max() <= 0.1
    lsuv = json.loads((out / "summary.json").read_text())["lsuv"]
    assert lsuv["tol"] == 0.1 and lsuv["max_iter"] == 10 and lsuv["within_tol"]
    for trial, record in enumerate(lsuv["trials"]):
        measured = pre[pre.trial == trial].sort_values("layer")["var"].to_numpy()
        assert record["variances"] == pytest.approx(list(measured), rel=1e-5)
        assert len(record["iterations"]) == 10
def test_a_read_only_run_folder_is_refused(small_disk, tmp_path):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = cli(*TINY, f"hydra.run.dir={small_disk / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"propbench: error: hydra.run.dir={small_disk / 'run'}: "
                                   f"{small_disk} is not writable (read-only or no permission)")


def test_a_full_disk_ends_a_run_in_one_line_and_marks_nothing_complete(small_disk, tmp_path):
    from tests.conftest import fill

    fill(small_disk, leave=40_000)  # .hydra fits, the figure does not
    run = small_disk / "run"
    proc = cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("propbench: error: ") and "No space left on device" in line
    assert not (run / "summary.json").exists()
    with pytest.raises(propbench.errors.ResultsError):
        propbench.load(run)


def test_resume_reruns_a_folder_whose_summary_is_broken(tmp_path):
    run = tmp_path / "run"
    assert cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    (run / "summary.json").write_text("[1, 2]\n")  # valid JSON, not an object
    proc = cli(*TINY, f"hydra.run.dir={run}", "resume=true", cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "wrote" in proc.stdout
    assert propbench.load(run)["depth"].eq(5).all()


def test_a_console_that_cannot_show_a_character_gets_it_escaped(tmp_path):
    proc = cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
               env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    assert "mlp \\xb7 act=relu" in proc.stdout  # the middle dot, escaped


def test_messages_are_logged_to_the_run_folder_and_quiet_keeps_only_warnings(tmp_path):
    loud = cli("init=default", "act=relu", "depth=500", "width=64", "batch_size=32",
               f"hydra.run.dir={tmp_path / 'loud'}", cwd=tmp_path)
    quiet = cli("init=default", "act=relu", "depth=500", "width=64", "batch_size=32",
                f"hydra.run.dir={tmp_path / 'quiet'}", "quiet=true", cwd=tmp_path)
    assert loud.returncode == quiet.returncode == 0
    assert "gradient:   vanishing" in loud.stdout and quiet.stdout == ""
    for proc in (loud, quiet):  # the warning on stderr either way
        assert proc.stderr.startswith("propbench: warning: gradient underflowed to 0")
    log = (tmp_path / "quiet" / "propbench.log").read_text()  # the log file gets everything
    assert "[propbench][INFO] -   gradient:   vanishing" in log
    assert "[propbench][WARNING] - gradient underflowed to 0" in log


def test_a_folder_in_use_is_refused_in_one_line(tmp_path):
    from propbench.results import folder_lock

    run = tmp_path / "run"
    with folder_lock(run):  # this process is writing into it
        proc = cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
        with pytest.raises(propbench.errors.ResultsError, match="in use by another propbench run"):
            propbench.run(cfg(*TINY), run)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"propbench: error: hydra.run.dir={run}: in use by another "
                                   "propbench process; wait for it to end or choose another folder")
    assert [p.name for p in run.iterdir()] == [".propbench.lock"]
    assert propbench.run(cfg(*TINY), run).folder == run  # free again


def test_concurrent_runs_into_one_folder_leave_one_consistent_result(tmp_path):
    """Two runs of different configs into one folder at once: one is refused in one line, or
    they run one after the other; either way the folder holds one whole run."""
    import os

    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    procs = [subprocess.Popen([sys.executable, "-m", "propbench", "depth=60", "width=128",
                               f"act={act}", f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for act in ("relu", "tanh")]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert {status for status, _ in outcomes} <= {0, 2} and any(s == 0 for s, _ in outcomes)
    for status, err in outcomes:
        assert "Traceback" not in err
        if status == 2:
            assert "in use by another propbench" in err and len(err.strip().splitlines()) == 1
    frame = propbench.load(run)  # complete, and every file of one attempt
    summary = json.loads((run / "summary.json").read_text())
    assert frame["act"].nunique() == 1 and frame["act"][0] == summary["config"]["act"]["name"]
    assert not list(run.glob(".*.tmp"))


def test_progress_line_on_a_terminal(monkeypatch):
    import io

    from propbench import logs

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock = iter(range(1000))
    progress = logs.Progress(depth=4, trials=8, stream=Terminal(), after=3, every=1,
                             clock=lambda: next(clock))
    progress.chunk(range(4, 8))
    for layer in range(1, 5):
        progress.layer("forward", layer)
    shown = progress.stream.getvalue()
    assert "trials 5-8 of 8, forward layer 3/4, 3 s" in shown  # from 3 s on, once a second
    assert "layer 1/4" not in shown and "layer 2/4" not in shown
    progress.close()
    assert progress.stream.getvalue().endswith("\r")  # the line cleared for the results
    silent = logs.Progress(depth=4, trials=1, stream=io.StringIO(), after=0, every=0)
    silent.layer("forward", 1)
    assert silent.stream.getvalue() == ""  # not a terminal


def test_a_run_reports_progress_through_both_passes(monkeypatch):
    import io

    from propbench import logs

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    monkeypatch.setattr(logs.Progress, "__init__", _eager_init(logs.Progress.__init__, stream))
    propbench.run(cfg("depth=6", "width=16", "batch_size=8", "trials=3", "trial_batch=2"), progress=True)
    shown = stream.getvalue()
    assert "trials 1-2 of 3, forward layer 6/6" in shown and "trial 3 of 3, backward layer 1/6" in shown


def _eager_init(init, stream):
    def eager(self, depth, trials, **kwargs):
        init(self, depth, trials, stream=stream, after=0, every=0)
    return eager


@pytest.mark.parametrize("overrides, rtol", [
    ((), 2e-6),  # the default MLP
    (("model.norm=batchnorm", "act=tanh"), 2e-6),
    (("model=cnn", "model.image_size=8", "depth=4", "batch_size=16"), 2e-6),
], ids=["mlp", "batchnorm", "cnn"])
def test_the_thread_count_changes_only_the_summation_order_at_width_256(overrides, rtol):
    """What the README states: 1 thread (a joblib worker) and 2 (a run alone here) agree to
    float32 round-off (2e-6): torch's kernels and the statistics' float32 sums add in another
    order; same thread count, same bytes (tested elsewhere)."""
    import numpy as np
    import torch

    before, frames = torch.get_num_threads(), {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            frames[threads] = propbench.run(cfg("width=256", *overrides)).frame
    finally:
        torch.set_num_threads(before)
    one, two = frames[1], frames[2]
    scale = np.sqrt(one["second_moment"].to_numpy())
    for column in ("var", "second_moment", "channel_var", "channel_mean_sq"):
        np.testing.assert_allclose(two[column], one[column], rtol=rtol, atol=0, equal_nan=True)
    # a mean near 0 is held to the tensor's scale, sqrt(E[x^2])
    assert (np.abs(two["mean"] - one["mean"]) <= rtol * scale).all()


@pytest.mark.slow
def test_width_256_bytes_alone_and_under_joblib_with_the_same_thread_count(tmp_path):
    alone = tmp_path / "alone"
    proc = cli("seed=1", f"hydra.run.dir={alone}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "sweep"
    proc = cli("-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((sweep / "1" / "summary.json").read_text())["determinism"]["threads"] == 1
    assert (sweep / "1" / "stats.csv").read_bytes() == (alone / "stats.csv").read_bytes()
