"""Sweeps: a manifest of the jobs when a multirun starts, and one aggregation of whatever
the job folders hold -- after the sweep, or later with ``python -m propbench.report``.

A sweep folder holds ``jobs.json`` (every job's number and overrides, written before any job
runs) and one folder per job (``0/``, ``1/``, ...). A job is ``ok`` when its folder has a
complete ``summary.json``, ``failed`` when it has ``error.json``, ``incomplete`` when it
started but was stopped, ``missing`` when it never started, ``corrupt`` when a file is not
what its run wrote. The sweep holds the folder's lock while it runs; its own messages go to
``sweep.log``. Aggregation writes, into the sweep folder:

- ``sweep.csv``: every ok job's ``stats.csv`` stacked, with ``job`` and the sweep's
  override columns;
- ``sweep_summary.csv``: one row per job: status, error, overrides, the two
  ``log10_ratio``s and verdicts, and for transformers the ``VALUE_COLUMNS`` (token
  similarity and attention entropy at the last block, the weight-gradient log10 ratio);
- ``summary.md``: the same as a table, and the experiment's claim check if there is one;
- ``grid_depth<D>.png`` and ``heatmap_depth<D>.png`` per depth;
- with ``spectrum=true`` jobs: ``spectrum.csv`` (their spectrum.csv stacked, with ``job``
  and the override columns), ``spectrum.png`` (the spread against depth, a line per job),
  and the spread, its theory and the spectrum verdict in the table.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback

from propbench.errors import ConfigError, ResultsError, first_line
from propbench.logs import log
from propbench.results import (ERROR, MANIFEST, SPECTRUM, SUMMARY, atomic_write, check_run,
                               folder_lock, read_json)
from propbench.verdict import SIGNALS

# quantities an expectation checks by a value in the table (``between``), not a verdict:
# summary key -> (the table's column, the summary's field); see verdict.token_summary
VALUE_COLUMNS = {
    "token_similarity": ("token_similarity", "last_block"),
    "attention_entropy": ("attention_entropy", "last_block"),
    "weight_gradient": ("weight_gradient_log10_ratio", "log10_ratio"),
}

SWEEP_CSV, SWEEP_SUMMARY, SWEEP_MD = "sweep.csv", "sweep_summary.csv", "summary.md"
SPECTRUM_COLUMNS = {"spectrum_spread": math.nan, "spectrum_theory_spread": math.nan,
                    "spectrum_verdict": ""}


def plan_jobs(params: dict[str, Any], overrides: list[str]) -> list[list[str]]:
    """The overrides of each job, numbered as Hydra's basic sweeper numbers them: the
    product of every override's values, a config's ``hydra.sweeper.params`` first, the
    command line's after (a key given twice keeps its first place and its last values).
    ConfigError for a sweep only Hydra can enumerate (glob, interval)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    arguments = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    values: dict[str, list[str]] = {}
    try:
        for override in OverridesParser.create().parse_overrides(arguments):
            key = override.get_key_element()
            if not override.is_sweep_override():
                values[key] = [f"{key}={override.get_value_element_as_str()}"]
            elif override.is_discrete_sweep():
                values[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
            else:
                raise ConfigError(f"{override.input_line}: only Hydra's sweeper can list its values")
    except HydraException as err:
        raise ConfigError(first_line(err)) from None
    return [list(job) for job in itertools.product(*values.values())]


def write_manifest(sweep_dir: Path, jobs: list[list[str]]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"jobs": [{"job": i, "overrides": o} for i, o in enumerate(jobs)]}, indent=1)
    atomic_write(sweep_dir / MANIFEST, lambda tmp: tmp.write_text(text + "\n"))


def _overrides(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(o, str) for o in value)


def read_manifest(sweep_dir: Path) -> dict[int, list[str]]:
    """Job number -> overrides, from jobs.json (or, without it, from each job's .hydra);
    ResultsError (one line) if either is corrupt."""
    manifest = sweep_dir / MANIFEST
    if manifest.exists():
        entries = read_json(manifest).get("jobs")
        if not isinstance(entries, list):
            raise ResultsError(f"{manifest}: corrupt (no list of jobs)")
        jobs = {}
        for entry in entries:
            if not (isinstance(entry, dict) and type(entry.get("job")) is int and entry["job"] >= 0
                    and _overrides(entry.get("overrides"))):
                raise ResultsError(f"{manifest}: corrupt (an entry needs a job number and a list "
                                   f"of overrides: {json.dumps(entry)[:60]})")
            jobs[entry["job"]] = entry["overrides"]
        return jobs
    import yaml

    jobs = {}
    for folder in sweep_dir.iterdir():
        overrides = folder / ".hydra" / "overrides.yaml"
        if folder.name.isdigit() and overrides.is_file():
            try:
                value = yaml.safe_load(overrides.read_text()) or []
            except (yaml.YAMLError, OSError, UnicodeDecodeError, RecursionError):
                value = None
            if not _overrides(value):
                raise ResultsError(f"{overrides}: corrupt (not a list of overrides)")
            jobs[int(folder.name)] = value
    return jobs


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A summary's config as override strings' keys and values: a group's name under the
    group's key (``act=relu``), its parameters dotted (``act.slope=0.25``)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key == "experiment":
            continue
        if isinstance(value, dict):
            for sub, text in _flat(value, f"{name}.").items():
                out[name if sub == f"{name}.name" else sub] = text
        elif value is None:
            out[name] = "null"
        elif isinstance(value, bool):
            out[name] = str(value).lower()
        else:
            out[name] = str(value)
    return out


def run_folders(folder: Path) -> dict[int, tuple[str, list[str]]]:
    """A folder of run folders (``run(cfg, out_dir=folder / NAME)``, or copied together):
    job number (by folder name) -> (folder name, overrides), where the overrides are the
    config keys whose values differ between the runs."""
    runs = sorted(f for f in folder.iterdir() if f.is_dir() and ((f / SUMMARY).exists()
                                                                  or (f / ERROR).exists()))
    configs = []
    for run in runs:
        try:
            configs.append(_flat(json.loads((run / SUMMARY).read_text()).get("config", {})))
        except (OSError, ValueError, AttributeError):  # failed or unreadable: no config
            configs.append({})
    def varies(key: str) -> bool:
        """A key differs between runs; a group's parameter (init.gain) only counts between
        runs of the same option (every kaiming run), as the option implies its defaults."""
        group = key.split(".")[0] if "." in key else None
        same = [[c for c in configs if c and c.get(group) == option]
                for option in {c.get(group) for c in configs}] if group else [configs]
        return any(len({c.get(key) for c in runs if c}) > 1 for runs in same)

    keys = [k for k in dict.fromkeys(k for c in configs for k in c) if varies(k)]
    return {job: (run.name, [f"{k}={c[k]}" for k in keys if k in c])
            for job, (run, c) in enumerate(zip(runs, configs))}


def job_status(folder: Path) -> tuple[str, str]:
    """(status, first line of the error) of one job folder."""
    if (folder / SUMMARY).exists():
        try:
            check_run(folder)
        except ResultsError as err:
            return "corrupt", str(err)
        return "ok", ""
    if (folder / ERROR).exists():
        try:
            return "failed", str(read_json(folder / ERROR).get("error", ""))
        except ResultsError as err:
            return "corrupt", str(err)
    return ("incomplete", "stopped before it finished") if folder.exists() else ("missing", "")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


@dataclass
class SweepReport:
    folder: Path
    table: Any  # pandas DataFrame, one row per job
    frame: Any  # pandas DataFrame, the ok jobs' stats stacked
    claim: Optional[dict[str, Any]] = None
    spectrum: Any = None  # pandas DataFrame, the spectrum=true jobs' spectrum.csv stacked
    figures: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[int]:
        return self.table.loc[self.table["status"] == "failed", "job"].tolist()

    @property
    def corrupt(self) -> list[int]:
        return self.table.loc[self.table["status"] == "corrupt", "job"].tolist()

    @property
    def unfinished(self) -> list[int]:
        return self.table.loc[self.table["status"].isin(["missing", "incomplete"]), "job"].tolist()

    @property
    def ok(self) -> bool:
        claim_held = self.claim is None or self.claim["held"]
        return not self.failed and not self.corrupt and not self.unfinished and claim_held


def aggregate(sweep_dir: str | Path, figures: bool = True) -> SweepReport:
    """Aggregate a finished, failed or interrupted sweep folder (see the module doc)."""
    import pandas as pd

    from propbench.results import SPECTRUM, load_run, load_spectrum, typed

    folder = Path(sweep_dir)
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such sweep folder")
    jobs = read_manifest(folder)
    names = {job: str(job) for job in jobs}
    if not jobs:  # a folder of run(out_dir=...) results
        runs = run_folders(folder)
        jobs = {job: overrides for job, (_, overrides) in runs.items()}
        names = {job: name for job, (name, _) in runs.items()}
    if not jobs:
        raise ResultsError(f"{folder}: not a propbench sweep (no {MANIFEST}, no job or run folders)")
    keys = list(dict.fromkeys(_key(o) for overrides in jobs.values() for o in overrides))
    rows, frames, spectra, config = [], [], [], None
    for job, overrides in sorted(jobs.items()):
        status, error = job_status(folder / names[job])
        row = {"job": job, "status": status, "error": error, "overrides": " ".join(overrides)}
        row.update({_key(o): _value(o) for o in overrides})
        if status == "ok":
            try:
                stats, summary = load_run(folder / names[job])
            except (ResultsError, ValueError) as err:  # a file edited or cut short by hand
                status, error = "corrupt", str(err)
                row.update(status=status, error=error)
        if status == "ok":
            config = config or summary.get("config")
            for quantity in SIGNALS:
                result = summary.get(quantity, {})
                ratio = result.get("log10_ratio")
                row[f"{quantity}_log10_ratio"] = (
                    ratio if ratio is not None else -math.inf if result.get("verdict") == "vanishing"
                    else math.nan)
                row[f"{quantity}_verdict"] = result.get("verdict", "")
            for quantity, (column, key) in VALUE_COLUMNS.items():
                row[column] = summary.get(quantity, {}).get(key, math.nan)
            stats.insert(0, "job", job)
            for key in keys:
                if key not in stats.columns:
                    stats[key] = row.get(key, "")
            frames.append(stats)
            spectrum = summary.get("spectrum")
            if spectrum and (folder / names[job] / SPECTRUM).exists():
                row["spectrum_spread"] = spectrum["spread"]
                row["spectrum_theory_spread"] = spectrum["theory"].get("spread", math.nan)
                row["spectrum_verdict"] = spectrum["verdict"]
                values = load_spectrum(folder / names[job])
                values.insert(0, "job", job)
                for key in keys:
                    if key not in values.columns:
                        values[key] = row.get(key, "")
                spectra.append(values)
        rows.append(row)
    table = pd.DataFrame(rows)
    for quantity in SIGNALS:
        for column, fill in ((f"{quantity}_log10_ratio", math.nan), (f"{quantity}_verdict", "")):
            if column not in table.columns:
                table[column] = fill
    if spectra:
        for column, fill in SPECTRUM_COLUMNS.items():
            table[column] = table[column].fillna(fill) if column in table.columns else fill
    frame = typed(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
    report = SweepReport(folder, table, frame, claim=check_claim(folder, table),
                         spectrum=pd.concat(spectra, ignore_index=True) if spectra else None)
    _write(report, keys, figures, config)
    return report


def load_sweep(sweep_dir: str | Path) -> Any:
    """A sweep's table, one row per job (its ``sweep_summary.csv``): job, status, error,
    overrides, a column per overridden key, and each quantity's log10 ratio and verdict.

    >>> import propbench
    >>> table = propbench.load_sweep("results/multirun/...")  # doctest: +SKIP
    """
    import pandas as pd

    from propbench.results import load

    folder = Path(sweep_dir)
    if not (folder / SWEEP_SUMMARY).exists():
        load(folder)  # says what the folder is: missing, not aggregated yet, a run
        raise ResultsError(f"{folder}: not a propbench sweep (no {SWEEP_SUMMARY})")
    return pd.read_csv(folder / SWEEP_SUMMARY)


def _override_text(value: Any) -> str:
    if isinstance(value, (list, tuple, range)):
        return ",".join(_override_text(v) for v in value)
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def run_sweep(overrides: Any, out_dir: str | Path, launcher: Optional[str] = None,
              quiet: bool = False) -> SweepReport:
    """Run a sweep as ``python -m propbench -m OVERRIDES hydra.sweep.dir=OUT_DIR`` does and
    return its :class:`SweepReport` (the folder that ``report`` and :func:`aggregate` read).

    ``overrides``: a mapping from key to a value or a list of values (a list is swept), or
    a list of override strings as on the command line. ``launcher``: ``joblib``, ``slurm``,
    ``submitit_local`` or None (one job after the other); its settings go in the overrides
    (``"hydra.launcher.n_jobs": 2``). The sweep runs in a child process, exactly as the
    CLI runs it, so Hydra's global state never touches the caller's; its progress lines are
    echoed unless ``quiet``. A bad override raises ConfigError with the CLI's one line;
    failed jobs do not raise: they are in the report (``report.ok`` is False).

    >>> import propbench
    >>> report = propbench.run_sweep({"depth": [10, 50], "act": ["relu", "tanh"],
    ...                               "init": "kaiming"}, "results/multirun/mine")  # doctest: +SKIP
    >>> report.table[["act", "depth", "gradient_log10_ratio"]]  # doctest: +SKIP
    """
    import os
    import subprocess
    import sys

    if isinstance(overrides, dict):
        args = [f"{key}={_override_text(value)}" for key, value in overrides.items()]
    else:
        args = [str(o) for o in overrides]
    if launcher:
        args.append(f"hydra/launcher={launcher}")
    folder = Path(out_dir).resolve()
    command = [sys.executable, "-m", "propbench", "-m", *args, f"hydra.sweep.dir={folder}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as child:
        for line in child.stdout:
            if not quiet:
                print(line, end="", flush=True)
        errors = child.stderr.read()
    if child.returncode == 2:
        message = next((l for l in errors.splitlines() if l.startswith("propbench: error: ")),
                       errors.strip().splitlines()[-1] if errors.strip() else "failed")
        raise ConfigError(message.removeprefix("propbench: error: "))
    if not (folder / MANIFEST).exists() and not any(folder.glob("*/.hydra")):
        raise ResultsError(f"{folder}: the sweep wrote nothing (exit {child.returncode}): "
                           f"{first_line(errors) if errors.strip() else 'no message'}")
    report = aggregate(folder, figures=False)  # the CLI drew them; this only reads
    report.figures = sorted(folder.glob("*.png"))
    return report


def _experiment(folder: Path) -> Optional[dict[str, Any]]:
    """The experiment block of the sweep's config (any job's .hydra/config.yaml)."""
    import yaml

    for config in sorted(folder.glob("*/.hydra/config.yaml")):
        try:
            experiment = (yaml.safe_load(config.read_text()) or {}).get("experiment")
        except (yaml.YAMLError, AttributeError):  # safe_load: never constructs objects
            continue
        if experiment:
            return experiment
    return None


def check_claim(folder: Path, table: Any) -> Optional[dict[str, Any]]:
    """Hold the sweep's results against its experiment's expectations, if it has any.

    An expectation whose ``where`` matches no job (a reduced sweep) is listed as not
    checked; the claim holds when at least one expectation was checked and all checked held.
    """
    experiment = _experiment(folder)
    if not experiment:
        return None
    checks = []
    for expect in experiment.get("expect", []):
        where = {k: str(v) for k, v in expect["where"].items()}
        match = table
        for key, value in where.items():
            match = match[match[key].astype(str) == value] if key in match else match.iloc[0:0]
        quantity = expect["quantity"]
        column = VALUE_COLUMNS.get(quantity, (f"{quantity}_log10_ratio",))[0]
        ratios = [float(r) for r in match[column]] if column in match else [math.nan] * len(match)
        verdicts = f"{quantity}_verdict"
        got = ((match[verdicts].tolist() if verdicts in match else []) if quantity not in VALUE_COLUMNS
               else [f"{r:.3f}" for r in ratios])
        between = expect.get("between")
        held = all(v in expect["verdict"] for v in got) if expect.get("verdict") else True
        if between:
            held = held and all(between[0] <= r <= between[1] for r in ratios)
        checks.append({
            "where": where, "quantity": expect["quantity"], "expected": expect.get("verdict") or [],
            "between": between, "got": got, "ratios": ratios, "held": None if not got else held,
        })
    checked = [c for c in checks if c["held"] is not None]
    return {
        "name": experiment.get("name", ""), "claim": experiment.get("claim", ""),
        "source": experiment.get("source", ""), "checks": checks,
        "held": bool(checked) and all(c["held"] for c in checked),
    }


def _format_ratio(log10_ratio: float) -> str:
    if math.isnan(log10_ratio):
        return "inf/NaN"
    return f"{log10_ratio:+.2f}" if math.isfinite(log10_ratio) else f"{log10_ratio:+}"


def markdown(report: SweepReport, keys: list[str]) -> str:
    """summary.md: the per-job table, then failures and the claim check."""
    table = report.table
    shown = [k for k in keys if table[k].nunique() > 1] or keys
    with_spectrum = "spectrum_verdict" in table.columns
    values = [c for c, _ in VALUE_COLUMNS.values() if c in table and table[c].notna().any()]
    header = ["job", *shown, "activation", "gradient", *values,
              *(["spectrum: var/mean\u00b2 of s\u00b2 (theory)"] if with_spectrum else []), "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row["job"]), *(str(row[k]) for k in shown)]
        for quantity in SIGNALS:
            verdict, ratio = row[f"{quantity}_verdict"], row[f"{quantity}_log10_ratio"]
            judged = isinstance(verdict, str) and verdict  # a failed job has none (NaN)
            cells.append(f"{verdict} ({_format_ratio(ratio)})" if judged else "")
        cells += [f"{row[c]:.3f}" for c in values]
        if with_spectrum:
            verdict = row["spectrum_verdict"]
            cells.append(f"{verdict} ({row['spectrum_spread']:.3g} ({row['spectrum_theory_spread']:.3g}))"
                         if isinstance(verdict, str) and verdict else "")
        cells.append(row["status"] + (f": {row['error']}" if row["error"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    counts = table["status"].value_counts().to_dict()
    lines.append("")
    lines.append(f"{len(table)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if report.claim:
        claim = report.claim
        lines += ["", f"## Claim ({claim['name']}): {'HELD' if claim['held'] else 'NOT HELD'}",
                  "", claim["claim"].strip(), "", f"Source: {claim['source'].strip()}", ""]
        for check in claim["checks"]:
            where = ", ".join(f"{k}={v}" for k, v in check["where"].items())
            mark = {True: "ok", False: "FAIL", None: "not checked"}[check["held"]]
            expected = [" or ".join(check["expected"])] if check["expected"] else []
            got = ", ".join(check["got"]) or "no such job in this sweep"
            if check.get("between"):
                low, high = check["between"]
                measure = (VALUE_COLUMNS[check["quantity"]][0] if check["quantity"] in VALUE_COLUMNS
                           else "log10 ratio")
                expected.append(f"{measure} in [{low:+.2f}, {high:+.2f}]")
                if check["got"] and check["quantity"] not in VALUE_COLUMNS:
                    got = ", ".join(f"{v} ({_format_ratio(r)})"
                                    for v, r in zip(check["got"], check["ratios"]))
            lines.append(f"- {mark}: {where}: {check['quantity']} expected "
                         f"{', '.join(expected)}, got {got}")
    return "\n".join(lines) + "\n"


def _write(report: SweepReport, keys: list[str], figures: bool,
           config: Optional[dict[str, Any]] = None) -> None:
    folder = report.folder
    if len(report.frame):
        atomic_write(folder / SWEEP_CSV,
                     lambda tmp: report.frame.to_csv(tmp, index=False, float_format="%.9g"))
    atomic_write(folder / SWEEP_SUMMARY, lambda tmp: report.table.to_csv(tmp, index=False))
    text = markdown(report, keys)
    atomic_write(folder / SWEEP_MD, lambda tmp: tmp.write_text(text))
    if report.spectrum is not None:
        atomic_write(folder / SPECTRUM,
                     lambda tmp: report.spectrum.to_csv(tmp, index=False, float_format="%.9g"))
    if figures and len(report.frame):
        from propbench.plots import save_sweep_figures, save_sweep_spectrum

        swept = [k for k in keys if report.table[k].astype(str).nunique() > 1]
        report.figures = save_sweep_figures(report.frame, report.table, folder, swept, config)
        if report.spectrum is not None:
            report.figures.append(save_sweep_spectrum(report.spectrum, folder, swept))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 60 else f"{minutes / 60:.1f} h"


def progress(sweep_dir: Path) -> tuple[int, int, str]:
    """(jobs this launch has finished, jobs in the sweep, "; <elapsed>, about <time> left").

    A launch starts when it writes jobs.json; a job belongs to it when Hydra has written
    the job's ``.hydra/`` since, and ran (rather than being kept by resume=true) when its
    summary or error is newer too; the time left is the time per job that ran so far."""
    try:
        jobs = read_manifest(sweep_dir)
        started = (sweep_dir / MANIFEST).stat().st_mtime
    except (ResultsError, OSError):
        return 0, 0, ""
    done = ran = 0
    for job in jobs:
        folder = sweep_dir / str(job)
        result = folder / SUMMARY if (folder / SUMMARY).exists() else folder / ERROR
        try:
            if (folder / ".hydra" / "hydra.yaml").stat().st_mtime < started:
                continue
            ran += result.stat().st_mtime >= started
        except OSError:  # not started in this launch, or not finished
            continue
        done += 1
    elapsed = time.time() - started
    left = (f", about {_duration(elapsed / ran * (len(jobs) - done))} left"
            if ran and done < len(jobs) else "")
    return done, len(jobs), f"; {_duration(elapsed)} elapsed{left}"


# What the last sweep this process ran left: its folder, its report, or why it could not be
# aggregated; the CLI turns them into its exit status.
LAST_SWEEP_DIR: Optional[Path] = None
LAST_REPORT: Optional[SweepReport] = None
LAST_ERROR: Optional[str] = None
_LOCK = contextlib.ExitStack()  # the sweep folder's lock (not on the callback: launchers pickle it)


class SweepCallback(Callback):
    """Locks the sweep folder and writes the manifest when a multirun starts; aggregates
    and releases the folder when it ends."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        global LAST_SWEEP_DIR
        folder = Path(config.hydra.sweep.dir)
        try:
            _LOCK.enter_context(folder_lock(folder, "sweep"))
        except ResultsError as err:  # Hydra would turn an exception into a warning
            print(f"propbench: error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        LAST_SWEEP_DIR = folder
        if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return  # an optimizing sweeper (Optuna) chooses its jobs as it goes
        params = config.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params) if params is not None else {}
        overrides = list(config.hydra.overrides.task)
        try:
            jobs = plan_jobs(params, overrides)
        except ConfigError:  # a sweep only Hydra's sweeper can enumerate (glob, interval)
            return
        write_manifest(folder, jobs)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from propbench import logs

        global LAST_REPORT, LAST_ERROR
        folder = Path(config.hydra.sweep.dir)
        try:
            logs.configure(folder / "sweep.log", bool(config.get("quiet", False)))
            LAST_REPORT = aggregate(folder)
        except Exception as err:  # noqa: BLE001 -- Hydra would turn it into a warning
            LAST_ERROR = (f"sweep {folder}: not aggregated ({type(err).__name__}: {first_line(err)}); "
                          f"the jobs' folders are kept: python -m propbench.report {folder}")
            return
        finally:
            _LOCK.close()
        log.info(f"\nSweep {LAST_REPORT.folder}:\n")
        log.info((LAST_REPORT.folder / SWEEP_MD).read_text())
