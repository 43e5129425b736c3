"""Sweeps: a manifest of the jobs when a multirun starts, and one aggregation of whatever
the job folders hold -- after the sweep, or later with ``python -m propbench.report``.

A sweep folder holds ``jobs.json`` (every job's number and overrides, written before any job
runs) and one folder per job (``0/``, ``1/``, ...). A job is ``ok`` when its folder has a
complete ``summary.json``, ``failed`` when it has ``error.json``, ``incomplete`` when it
started but was stopped, ``missing`` when it never started. Aggregation writes, into the
sweep folder:

- ``sweep.csv``: every ok job's ``stats.csv`` stacked, with ``job`` and the sweep's
  override columns;
- ``sweep_summary.csv``: one row per job: status, error, overrides, the two
  ``log10_ratio``s and verdicts, and for transformers the ``VALUE_COLUMNS`` (token
  similarity and attention entropy at the last block, the weight-gradient log10 ratio);
- ``summary.md``: the same as a table, and the experiment's claim check if there is one;
- ``grid_depth<D>.png`` and ``heatmap_depth<D>.png`` per depth.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback

from propbench.errors import ConfigError, ResultsError, first_line
from propbench.results import ERROR, MANIFEST, SUMMARY, atomic_write
from propbench.verdict import SIGNALS

# quantities an expectation checks by a value in the table (``between``), not a verdict:
# summary key -> (the table's column, the summary's field); see verdict.token_summary
VALUE_COLUMNS = {
    "token_similarity": ("token_similarity", "last_block"),
    "attention_entropy": ("attention_entropy", "last_block"),
    "weight_gradient": ("weight_gradient_log10_ratio", "log10_ratio"),
}

SWEEP_CSV, SWEEP_SUMMARY, SWEEP_MD = "sweep.csv", "sweep_summary.csv", "summary.md"


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


def read_manifest(sweep_dir: Path) -> dict[int, list[str]]:
    """Job number -> overrides, from jobs.json (or, without it, from each job's .hydra)."""
    manifest = sweep_dir / MANIFEST
    if manifest.exists():
        return {j["job"]: j["overrides"] for j in json.loads(manifest.read_text())["jobs"]}
    import yaml

    jobs = {}
    for folder in sweep_dir.iterdir():
        overrides = folder / ".hydra" / "overrides.yaml"
        if folder.name.isdigit() and overrides.exists():
            jobs[int(folder.name)] = yaml.safe_load(overrides.read_text()) or []
    return jobs


def job_status(folder: Path) -> tuple[str, str]:
    """(status, first line of the error) of one job folder."""
    if (folder / ERROR).exists():
        return "failed", json.loads((folder / ERROR).read_text()).get("error", "")
    if (folder / SUMMARY).exists():
        return "ok", ""
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

    from propbench.results import load, read_summary

    folder = Path(sweep_dir)
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such sweep folder")
    jobs = read_manifest(folder)
    if not jobs:
        raise ResultsError(f"{folder}: not a propbench sweep (no {MANIFEST} and no job folders)")
    keys = list(dict.fromkeys(_key(o) for overrides in jobs.values() for o in overrides))
    rows, frames = [], []
    for job, overrides in sorted(jobs.items()):
        status, error = job_status(folder / str(job))
        row = {"job": job, "status": status, "error": error, "overrides": " ".join(overrides)}
        row.update({_key(o): _value(o) for o in overrides})
        if status == "ok":
            try:
                summary, stats = read_summary(folder / str(job)), load(folder / str(job))
            except (ResultsError, ValueError) as err:  # a file edited or cut short by hand
                status, error = "corrupt", str(err)
                row.update(status=status, error=error)
        if status == "ok":
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
        rows.append(row)
    table = pd.DataFrame(rows)
    for quantity in SIGNALS:
        for column, fill in ((f"{quantity}_log10_ratio", math.nan), (f"{quantity}_verdict", "")):
            if column not in table.columns:
                table[column] = fill
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    report = SweepReport(folder, table, frame, claim=check_claim(folder, table))
    _write(report, keys, figures)
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
        got = (match[f"{quantity}_verdict"].tolist() if quantity not in VALUE_COLUMNS
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
    values = [c for c, _ in VALUE_COLUMNS.values() if c in table and table[c].notna().any()]
    header = ["job", *shown, "activation", "gradient", *values, "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row["job"]), *(str(row[k]) for k in shown)]
        for quantity in SIGNALS:
            verdict, ratio = row[f"{quantity}_verdict"], row[f"{quantity}_log10_ratio"]
            cells.append(f"{verdict} ({_format_ratio(ratio)})" if verdict else "")
        cells += [f"{row[c]:.3f}" for c in values]
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


def _write(report: SweepReport, keys: list[str], figures: bool) -> None:
    folder = report.folder
    if len(report.frame):
        atomic_write(folder / SWEEP_CSV,
                     lambda tmp: report.frame.to_csv(tmp, index=False, float_format="%.9g"))
    atomic_write(folder / SWEEP_SUMMARY, lambda tmp: report.table.to_csv(tmp, index=False))
    text = markdown(report, keys)
    atomic_write(folder / SWEEP_MD, lambda tmp: tmp.write_text(text))
    if figures and len(report.frame):
        from propbench.plots import save_sweep_figures

        swept = [k for k in keys if report.table[k].astype(str).nunique() > 1]
        report.figures = save_sweep_figures(report.frame, report.table, folder, swept)


def progress(sweep_dir: Path) -> tuple[int, int]:
    """(jobs finished, jobs in the sweep), read from the sweep folder."""
    jobs = read_manifest(sweep_dir)
    done = sum(job_status(sweep_dir / str(j))[0] in ("ok", "failed") for j in jobs)
    return done, len(jobs)


# The report of the last sweep this process ran; the CLI turns it into its exit status.
LAST_REPORT: Optional[SweepReport] = None


class SweepCallback(Callback):
    """Writes the manifest when a multirun starts and aggregates when it ends."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        params = config.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params) if params is not None else {}
        overrides = list(config.hydra.overrides.task)
        try:
            jobs = plan_jobs(params, overrides)
        except ConfigError:  # a sweep only Hydra's sweeper can enumerate (glob, interval)
            return
        write_manifest(Path(config.hydra.sweep.dir), jobs)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        global LAST_REPORT
        LAST_REPORT = aggregate(Path(config.hydra.sweep.dir))
        print(f"\nSweep {LAST_REPORT.folder}:\n")
        print((LAST_REPORT.folder / SWEEP_MD).read_text())
