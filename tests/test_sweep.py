"""Sweeps through the CLI: aggregation, launchers, failed and interrupted sweeps, report."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import propbench
from propbench.sweep import aggregate
from tests.conftest import cli, toy_experiment

TINY = ("width=8", "batch_size=4")


def report(folder, *args):
    return subprocess.run([sys.executable, "-m", "propbench.report", str(folder), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("basic")
    proc = cli("-m", "depth=2,3", "act=relu,tanh", "init=default,kaiming", *TINY,
               f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "sweep", proc


def test_sweep_folder_has_every_artifact(basic_sweep):
    folder, proc = basic_sweep
    names = {p.name for p in folder.iterdir()}
    assert {"jobs.json", "sweep.csv", "sweep_summary.csv", "summary.md", "grid_depth2.png",
            "grid_depth3.png", "heatmap_depth2.png", "heatmap_depth3.png"} <= names
    assert "8 jobs: 8 ok" in proc.stdout  # the table is printed at the end
    assert "[8/8]" in proc.stdout  # progress: jobs done / total
    first = next(line for line in proc.stdout.splitlines() if line.startswith("[1/8]"))
    assert " elapsed, about " in first and first.endswith(" left")  # time, and time left
    assert "8 jobs: 8 ok" in (folder / "sweep.log").read_text()  # the sweep's own log


def test_sweep_tables_agree_with_each_job(basic_sweep):
    folder, _ = basic_sweep
    table = pd.read_csv(folder / "sweep_summary.csv")
    assert list(table["job"]) == list(range(8)) and set(table["status"]) == {"ok"}
    for _, row in table.iterrows():
        summary = json.loads((folder / str(row["job"]) / "summary.json").read_text())
        assert summary["config"]["act"]["name"] == row["act"]
        assert row["activation_verdict"] == summary["activation"]["verdict"]
        assert row["gradient_log10_ratio"] == pytest.approx(summary["gradient"]["log10_ratio"])
    frame = propbench.load(folder)  # the sweep's sweep.csv, every job stacked
    assert sorted(frame["job"].unique()) == list(range(8))
    job5 = propbench.load(folder / "5")
    pd.testing.assert_frame_equal(
        frame[frame.job == 5].drop(columns="job").reset_index(drop=True)[job5.columns],
        job5, check_dtype=False, check_categorical=False)  # the sweep's categories span all jobs


def test_report_reaggregates_a_finished_sweep(basic_sweep):
    folder, _ = basic_sweep
    proc = report(folder, "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert "8 jobs: 8 ok" in proc.stdout


@pytest.mark.parametrize("launcher", [
    ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
    pytest.param(("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"),
                 marks=pytest.mark.slow),
], ids=["joblib", "submitit_local"])
def test_launchers_give_the_same_numbers_as_the_basic_one(basic_sweep, tmp_path, launcher):
    proc = cli("-m", "depth=2,3", "act=relu,tanh", "init=default,kaiming", *TINY, *launcher,
               f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ours, basic = propbench.load(tmp_path / "sweep"), propbench.load(basic_sweep[0])
    pd.testing.assert_frame_equal(ours.sort_values(["job", "trial", "quantity", "layer", "site"])
                                  .reset_index(drop=True),
                                  basic.sort_values(["job", "trial", "quantity", "layer", "site"])
                                  .reset_index(drop=True))


def test_a_failed_job_is_reported_and_the_others_kept(tmp_path):
    # HYDRA_FULL_ERROR skips the up-front check, so the bad job reaches its own run.
    proc = cli("-m", "depth=2,0,3", *TINY, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path,
               env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1
    assert "1 failed" in proc.stderr
    table = pd.read_csv(tmp_path / "s" / "sweep_summary.csv")
    assert list(table["status"]) == ["ok", "failed", "ok"]
    assert "depth=0: must be >= 1" in table.loc[1, "error"]
    assert (tmp_path / "s" / "2" / "summary.json").exists()
    assert not (tmp_path / "s" / "1" / "stats.csv").exists()
    row = next(line for line in (tmp_path / "s" / "summary.md").read_text().splitlines()
               if line.startswith("| 1 |"))
    assert "nan" not in row and "inf/NaN" not in row and "failed: depth=0" in row
    again = report(tmp_path / "s", "--no-figures")
    assert again.returncode == 1 and "failed: job 1 (depth=0" in again.stderr
    # the value fixed and resumed: the job runs again and its old error.json goes with it
    fixed = cli("-m", "depth=2,1,3", *TINY, f"hydra.sweep.dir={tmp_path / 's'}", "resume=true",
                cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert "3 jobs: 3 ok" in fixed.stdout and not (tmp_path / "s" / "1" / "error.json").exists()
    assert fixed.stdout.count("(kept: resume=true)") == 2


def test_report_on_an_interrupted_sweep(tmp_path):
    sweep = tmp_path / "s"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "propbench", "-m", "depth=2,3,4,5,6,7,8,9,10,11,12,13", *TINY,
         f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (sweep / "1" / "summary.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    result = report(sweep, "--no-figures")
    assert result.returncode == 1
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(table) == 12 and table.loc[0, "status"] == "ok" and table.loc[1, "status"] == "ok"
    assert {"missing"} <= set(table["status"])
    assert "missing: job 11 (depth=13" in result.stderr


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "no such sweep folder"),
    (lambda p: p, "not a propbench sweep"),
])
def test_report_refuses_what_is_not_a_sweep(tmp_path, make, message):
    proc = report(make(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("propbench.report: error:") and message in proc.stderr


def test_aggregate_without_manifest_uses_job_folders(basic_sweep, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep[0], copy)
    (copy / "jobs.json").unlink()
    assert len(aggregate(copy, figures=False).table) == 8


def test_shipped_slurm_settings_compose(tmp_path):
    proc = cli("--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "SlurmLauncher" in proc.stdout and "gpus_per_node: 1" in proc.stdout
    assert "partition: gpu" in proc.stdout


def test_an_interrupted_sweep_resumes_without_redoing_finished_jobs(tmp_path):
    sweep = tmp_path / "s"
    args = ["-m", "depth=2,3,4,5,6,7,8,9", *TINY, f"hydra.sweep.dir={sweep}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "propbench", *args], cwd=tmp_path, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (sweep / "2" / "summary.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    done = {j: (sweep / str(j) / "summary.json").stat().st_mtime_ns
            for j in range(8) if (sweep / str(j) / "summary.json").exists()}
    assert 3 <= len(done) < 8
    resumed = cli(*args, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("(kept: resume=true)") == len(done)
    for job, stamp in done.items():  # not redone
        assert (sweep / str(job) / "summary.json").stat().st_mtime_ns == stamp
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert set(table["status"]) == {"ok"} and len(table) == 8


def test_report_marks_a_hand_edited_job_corrupt(basic_sweep, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep[0], copy)
    stats = copy / "3" / "stats.csv"
    stats.write_text(stats.read_text()[:200])  # cut short
    proc = report(copy, "--no-figures")
    assert proc.returncode == 1
    assert "corrupt: job 3" in proc.stderr
    table = pd.read_csv(copy / "sweep_summary.csv")
    assert table.loc[3, "status"] == "corrupt" and set(table.drop(3)["status"]) == {"ok"}


def test_reading_results_never_executes_code(basic_sweep, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep[0], copy)
    marker = tmp_path / "pwned"
    (copy / "0" / ".hydra" / "config.yaml").write_text(
        f"!!python/object/apply:os.system ['touch {marker}']\n")
    aggregate(copy, figures=False)
    propbench.load(copy)
    assert not marker.exists()


def test_check_claim_holds_fails_and_lists_what_it_could_not_check(tmp_path):
    from propbench.sweep import check_claim

    hydra = tmp_path / "0" / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(
        "depth: 10\n"
        "experiment:\n  name: toy\n  claim: ReLU keeps it, tanh does not.\n  source: a paper\n"
        "  expect:\n"
        "    - {where: {act: relu}, quantity: activation, verdict: [stable]}\n"
        "    - {where: {act: tanh, depth: 10}, quantity: gradient, verdict: [exploding, vanishing]}\n"
        "    - {where: {act: gelu}, quantity: activation, verdict: [stable]}\n")
    table = pd.DataFrame({"act": ["relu", "relu", "tanh"], "depth": ["10", "20", "10"],
                          "activation_verdict": ["stable", "stable", "stable"],
                          "gradient_verdict": ["stable", "stable", "vanishing"]})
    claim = check_claim(tmp_path, table)
    assert (claim["name"], claim["source"]) == ("toy", "a paper")
    assert [c["held"] for c in claim["checks"]] == [True, True, None]  # gelu: no such job
    assert claim["checks"][1]["got"] == ["vanishing"] and claim["held"]
    table.loc[1, "activation_verdict"] = "exploding"
    assert not check_claim(tmp_path, table)["held"]
    (hydra / "config.yaml").write_text("depth: 10\n")
    assert check_claim(tmp_path, table) is None  # not an experiment


# --- interruption, concurrency, full disks, corrupt files ---------------------------------

SWEEP4 = ("-m", "depth=2,3", "seed=0,1", *TINY)
# when Ctrl-C comes: as soon as this file exists
POINTS = {"started": "jobs.json", "job 1 begun": "1/.hydra/hydra.yaml",
          "job 1 writing": "1/stats.csv", "job 2 done": "2/summary.json"}


def interrupt_then_resume(tmp_path, point):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) at ``point``: the sweep
    stops with one line and status 130, records no failure, and resume=true finishes it."""
    sweep = tmp_path / "s"
    args = [*SWEEP4, f"hydra.sweep.dir={sweep}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "propbench", *args], cwd=tmp_path, env=env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    marker = sweep / POINTS[point]
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-1].startswith("propbench: error: interrupted"), err
    assert not list(sweep.glob("*/error.json"))  # an interrupt is no job's failure
    resumed = cli(*args, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    first = next(line for line in resumed.stdout.splitlines() if re.match(r"\[\d+/", line))
    assert first.startswith("[1/4] job 0")  # it counts this launch's jobs
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert list(table["status"]) == ["ok"] * 4
    assert not list(sweep.glob("*/error.json")) and not list(sweep.glob("*/.*.tmp"))
    for job in range(4):  # every job whole, of its own config
        assert propbench.load(sweep / str(job))["seed"].eq(job % 2).all()


def test_ctrl_c_stops_a_sweep_and_resume_finishes_it(tmp_path):
    interrupt_then_resume(tmp_path, "job 1 begun")


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(5))
@pytest.mark.parametrize("point", POINTS)
def test_ctrl_c_at_every_point_again_and_again(tmp_path, point, repeat):
    interrupt_then_resume(tmp_path, point)


def test_a_failed_aggregation_is_a_failure(tmp_path):
    sweep = tmp_path / "s"
    (sweep / "sweep.csv").mkdir(parents=True)  # where the table goes: not writable as a file
    proc = cli("-m", "depth=2,3", *TINY, f"hydra.sweep.dir={sweep}", "quiet=true", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # quiet: no Hydra lines, no job lines; the error still shows
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"propbench: error: sweep {sweep}: not aggregated (IsADirectoryError")
    assert last.endswith(f"the jobs' folders are kept: python -m propbench.report {sweep}")
    assert all(propbench.load(sweep / str(job)) is not None for job in (0, 1))


def test_a_sweep_on_a_disk_that_fills_up_fails_in_one_line_and_resumes(small_disk, tmp_path):
    from tests.conftest import fill

    filler = fill(small_disk, leave=150_000)  # room for two or three jobs
    sweep = small_disk / "s"
    args = ["-m", "depth=2,3,4,5,6", *TINY, f"hydra.sweep.dir={sweep}"]
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "No space left on device" in proc.stderr.strip().splitlines()[-1]
    filler.unlink()
    resumed = cli(*args, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert list(pd.read_csv(sweep / "sweep_summary.csv")["status"]) == ["ok"] * 5
    assert not list(sweep.glob("*/error.json"))


def test_two_sweeps_into_one_folder(tmp_path):
    """The second is refused in one line while the first runs (or runs after it)."""
    sweep = tmp_path / "s"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    first = subprocess.Popen([sys.executable, "-m", "propbench", "-m", "depth=2,3,4", *TINY,
                              f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (sweep / "jobs.json").exists() and first.poll() is None:
        time.sleep(0.01)
    second = cli("-m", "depth=5,6", "act=tanh", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    if second.returncode == 2:
        assert second.stderr.strip().splitlines() == [
            f"propbench: error: hydra.sweep.dir={sweep}: in use by another propbench process; "
            "wait for it to end or choose another folder"]
        assert list(pd.read_csv(sweep / "sweep_summary.csv")["depth"]) == [2, 3, 4]
    else:  # it started after the first had ended
        assert second.returncode == 0, second.stderr
        assert list(pd.read_csv(sweep / "sweep_summary.csv")["depth"]) == [5, 6]
    assert report(sweep, "--no-figures").returncode == 0


def report_here(folder, capsys):
    """``python -m propbench.report FOLDER --no-figures`` in this process: (status, out, err)."""
    from propbench.report import main

    capsys.readouterr()
    status = main([str(folder), "--no-figures"])
    out, err = capsys.readouterr()
    return status, out, err


def _break(folder, job, name, content):
    path = folder / str(job) / name
    if content is None:  # a folder in its place
        path.unlink()
        path.mkdir()
    else:
        path.write_text(content)


CORRUPT_JOB = [  # (what is broken, how), each one job of a finished sweep: that job is corrupt
    ("summary.json", "[1, 2]\n", "corrupt (a JSON list, not an object)"),
    ("summary.json", "[" * 200_000 + "]" * 200_000, "corrupt (nested too deeply)"),
    ("summary.json", "{\"complete\": tru", "corrupt (not JSON"),
    ("stats.csv", None, "incomplete run (stats.csv not a file)"),
    ("stats.csv", "trial,layer\n0,1\n", "stats.csv: not the file of this run's attempt"),
]


@pytest.mark.parametrize("name, content, message", CORRUPT_JOB,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CORRUPT_JOB)])
def test_report_names_a_corrupt_job(basic_sweep, tmp_path, capsys, name, content, message):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep[0], copy)
    _break(copy, 3, name, content)
    status, _, err = report_here(copy, capsys)
    table = pd.read_csv(copy / "sweep_summary.csv")
    assert status == 1 and list(table["status"]) == ["ok"] * 3 + ["corrupt"] + ["ok"] * 4
    assert err.splitlines() == [f"corrupt: job 3 ({table.loc[3, 'overrides']}): {table.loc[3, 'error']}"]
    assert message in err


def test_report_names_an_error_json_that_is_not_json(basic_sweep, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep[0], copy)
    (copy / "2" / "summary.json").unlink()
    (copy / "2" / "error.json").write_text("{oops")
    status, _, err = report_here(copy, capsys)
    assert status == 1 and "corrupt: job 2" in err and "error.json: corrupt (not JSON" in err


@pytest.mark.parametrize("manifest, message", [
    ("{oops", "jobs.json: corrupt (not JSON"),
    ("", "jobs.json: corrupt (not JSON"),
    ("[1, 2]", "jobs.json: corrupt (a JSON list, not an object)"),
    ('{"jobs": 3}', "jobs.json: corrupt (no list of jobs)"),
    ('{"jobs": [{"job": 0}]}', "jobs.json: corrupt (an entry needs a job number and a list of overrides"),
    ('{"jobs": [{"job": "0", "overrides": ["depth=2"]}]}', "an entry needs a job number"),
], ids=["not-json", "empty", "list", "jobs-not-list", "no-overrides", "string-job"])
def test_report_refuses_a_corrupt_manifest_in_one_line(basic_sweep, tmp_path, capsys, manifest, message):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep[0], copy)
    (copy / "jobs.json").write_text(manifest)
    status, _, err = report_here(copy, capsys)
    assert status == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("propbench.report: error: ") and message in line


def test_check_claim_holds_a_log10_ratio_between_two_numbers(tmp_path):
    from propbench.sweep import SweepReport, check_claim, markdown

    table = toy_experiment(tmp_path, "doubles per block",
                           "{where: {depth: 10}, quantity: activation, between: [2.6, 2.8]}",
                           depth="10", activation_verdict="exploding", activation_log10_ratio=2.71)
    claim = check_claim(tmp_path, table)
    assert claim["held"] and claim["checks"][0]["ratios"] == [2.71]
    text = markdown(SweepReport(tmp_path, table, pd.DataFrame(), claim), ["depth"])
    assert "activation expected log10 ratio in [+2.60, +2.80], got exploding (+2.71)" in text
    table.loc[0, "activation_log10_ratio"] = 2.9
    assert not check_claim(tmp_path, table)["held"]
