"""``python -m propbench [-m] KEY=VALUE ...``: a thin Hydra CLI over :func:`propbench.runner.run`.

Before Hydra starts, the config is composed and validated once -- every job of a sweep, each
on its own -- so a mistake ends with one line on stderr and exit status 2 before any run
folder exists, wherever it sits in a sweep. A single run also chooses its device and checks
its memory estimate here; a sweep's jobs do that where they run (a cluster node, say). The
validated configs are handed on to the jobs. ``HYDRA_FULL_ERROR=1`` (or any of Hydra's own
flags) hands everything to Hydra instead, and each job validates its own config.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from propbench.config import CONF_DIR, compose, register_configs, settings
from propbench.errors import ConfigError, PropbenchError, first_line

PROG = "propbench"
_MULTIRUN_FLAGS = ("-m", "--multirun")


def fail(message: str, status: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(status)


def prepare(argv: list[str]) -> Optional[dict[frozenset[str], Any]]:
    """Compose and validate what ``argv`` asks for: each job's overrides (as Hydra will
    record them) -> its validated config (a single run: its :class:`propbench.runner.Setup`).
    None for a sweep only Hydra's sweeper can enumerate (glob, interval): its jobs validate
    themselves. Raises ConfigError with one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode

    from propbench.runner import setup
    from propbench.sweep import plan_jobs

    overrides = [a for a in argv if a not in _MULTIRUN_FLAGS]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(first_line(err)) from None
    try:  # the first value of each sweep, as in the first job, for Hydra's mode and params
        first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
                 if o.is_sweep_override() else o.input_line for o in parsed]
    except HydraException:  # a glob or an interval: only Hydra's sweeper lists its values
        return None
    base = compose(first, return_hydra_config=True)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    if not (set(argv) & set(_MULTIRUN_FLAGS) or base.hydra.mode == RunMode.MULTIRUN):
        if sweeps:
            raise ConfigError(f"{sweeps[0]}: a list of values is a sweep; add -m")
        return {frozenset(task): setup(base)}
    params = base.hydra.sweeper.get("params") or {}
    try:
        jobs = plan_jobs({k: str(v) for k, v in params.items()}, task)
    except ConfigError:
        return None
    first_job = frozenset(line for line, o in zip(first, parsed) if not o.is_hydra_override())
    return {frozenset(job): settings(base if frozenset(job) == first_job else compose(job))
            for job in jobs}


def _checkable(argv: list[str]) -> bool:
    """Only plain overrides (and -m) are checked here; Hydra's own flags go straight to it."""
    return not os.environ.get("HYDRA_FULL_ERROR") and all(
        a in _MULTIRUN_FLAGS or not a.startswith("-") for a in argv
    )


def _task(cfg: Any, ready: Optional[dict[frozenset[str], Any]]) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from propbench.plots import config_title
    from propbench.runner import run
    from propbench.verdict import SIGNALS, describe

    hydra_cfg = HydraConfig.get()
    job = (ready or {}).get(frozenset(hydra_cfg.overrides.task), cfg)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return _sweep_job(job, hydra_cfg)
    try:
        result = run(job, hydra_cfg.runtime.output_dir)
    except PropbenchError as err:
        fail(str(err))
    summary = result.summary
    print(f"{PROG}: {config_title(result.frame)} on {summary['device']}, {summary['elapsed_s']:.2f} s")
    for quantity in SIGNALS:
        if quantity in summary:
            print("  " + describe(quantity, summary[quantity]))
    if "token_similarity" in summary:
        tokens = summary["token_similarity"]
        print(f"  tokens:     similarity {tokens['first_block']:.3f} at the first block, "
              f"{tokens['last_block']:.3f} at the last (1 = collapsed)")
    if result.resumed:
        print(f"  kept {result.folder}/: complete for this config (resume=true)")
    else:
        print(f"  wrote {result.folder}/ (stats.csv, summary.json, propagation.png)")
    _warn_range(summary)


def _warn_range(summary: dict[str, Any]) -> None:
    from propbench.verdict import range_warning

    warning = range_warning(summary, summary["config"]["dtype"])
    if warning:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)


def _sweep_job(job: Any, hydra_cfg: Any) -> None:
    """One job of a sweep: never raises, so the other jobs run; a failure is recorded in
    the job's error.json and counted when the sweep is aggregated."""
    import traceback
    from pathlib import Path

    from propbench.results import write_error
    from propbench.runner import run
    from propbench.sweep import progress
    from propbench.verdict import SIGNALS

    folder = Path(hydra_cfg.runtime.output_dir)
    overrides = " ".join(hydra_cfg.overrides.task)
    try:
        result = run(job, folder)
        summary = result.summary
        outcome = ", ".join(f"{q} {summary[q]['verdict']}" for q in SIGNALS if q in summary)
        outcome += " (kept: resume=true)" if result.resumed else ""
        _warn_range(summary)
    except Exception as err:  # noqa: BLE001 -- any failure of one job is that job's result
        write_error(folder, err, traceback.format_exc())
        outcome = f"FAILED: {first_line(err)}"
    done, total = progress(Path(hydra_cfg.sweep.dir))
    print(f"[{done}/{total or '?'}] job {hydra_cfg.job.num} ({overrides}): {outcome}", flush=True)


def main() -> None:
    """Console entry point (``propbench`` and ``python -m propbench``)."""
    import hydra

    argv = sys.argv[1:]
    register_configs()
    ready = None
    if _checkable(argv):
        try:
            ready = prepare(argv)
        except PropbenchError as err:
            fail(str(err))

    def task(cfg: Any) -> None:
        _task(cfg, ready)

    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)()

    from propbench import sweep

    report = sweep.LAST_REPORT
    if report is not None and not report.ok:
        problems = [f"{len(report.failed)} failed" if report.failed else "",
                    f"{len(report.unfinished)} unfinished" if report.unfinished else "",
                    "claim not held" if report.claim and not report.claim["held"] else ""]
        fail(f"sweep {report.folder}: " + ", ".join(p for p in problems if p), status=1)

