"""``python -m propbench [-m] KEY=VALUE ...``: a thin Hydra CLI over :func:`propbench.runner.run`.

Before Hydra starts, the config is composed and validated once -- every job of a sweep, each
on its own -- so a mistake ends with one line on stderr and exit status 2 before any run
folder exists, wherever it sits in a sweep. A single run also chooses its device and checks
its memory estimate here; a sweep's jobs do that where they run (a cluster node, say). The
validated configs are handed on to the jobs. ``HYDRA_FULL_ERROR=1`` (or any of Hydra's own
flags) hands everything to Hydra instead, and each job validates its own config.

Exit status: 0 when everything ran (and a sweep's claim held); 2 for a mistake in the
command; 1 when a run could not be written, or a sweep had a failed, unfinished or corrupt
job, a claim that did not hold, or could not be aggregated; 130 after Ctrl-C. Messages go
through :mod:`propbench.logs`.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

# propbench.config (it loads Hydra) is imported inside the functions, after main() has
# installed its Ctrl-C handler, so that an interrupt during start-up ends in one line too.
from propbench.errors import ConfigError, FolderInUseError, PropbenchError, WriteError, first_line
from propbench.logs import log

PROG = "propbench"
_MULTIRUN_FLAGS = ("-m", "--multirun")
INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


def fail(message: str, status: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


class _Interrupt:
    """Ctrl-C: remembered, then raised as KeyboardInterrupt. A job checks the flag when it
    starts and when it fails, so an interrupt that library code swallowed (or turned into
    another error) still stops the sweep at the next job, and is never recorded as that
    job's failure."""

    seen = False
    run_dir: Optional[str] = None  # a single run's folder, once Hydra has made it

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        cls.seen = True
        raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        if cls.seen:
            raise KeyboardInterrupt

    @staticmethod
    def unraisable(unraisable: Any) -> None:
        """An interrupt that landed in a finalizer: no "Exception ignored" report, the flag
        stops the sweep at the next job; nor for a file that could not be flushed on close."""
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            return
        if issubclass(unraisable.exc_type, OSError) and isinstance(unraisable.object, io.IOBase):
            return  # a log file that could not be flushed (a full disk): the error line says so
        sys.__unraisablehook__(unraisable)


def prepare(argv: list[str]) -> Optional[dict[frozenset[str], Any]]:
    """Compose and validate what ``argv`` asks for: each job's overrides (as Hydra will
    record them) -> its validated config (a single run: its :class:`propbench.runner.Setup`).
    None for a sweep only Hydra's sweeper can enumerate (glob, interval): its jobs validate
    themselves. Raises ConfigError with one line."""
    from hydra.errors import HydraException
    from hydra.types import RunMode

    from propbench.config import compose, settings
    from propbench.sweep import plan_jobs

    overrides = [a for a in argv if a not in _MULTIRUN_FLAGS]
    parsed = _parse(overrides)
    try:  # the first value of each sweep, as in the first job, for Hydra's mode and params
        first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
                 if o.is_sweep_override() else o.input_line for o in parsed]
    except HydraException:  # a glob or an interval: only Hydra's sweeper lists its values
        _check_intervals(parsed)
        return None
    base = compose(first, return_hydra_config=True)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    if not (set(argv) & set(_MULTIRUN_FLAGS) or base.hydra.mode == RunMode.MULTIRUN):
        if sweeps:
            raise ConfigError(f"{sweeps[0]}: a list of values is a sweep; add -m")
        from propbench.runner import setup  # imports torch: after the config is valid

        ready = {frozenset(task): setup(base)}
        _check_folder(base, "run")
        return ready
    params = base.hydra.sweeper.get("params") or {}
    try:
        jobs = plan_jobs({k: str(v) for k, v in params.items()}, task)
    except ConfigError:
        _check_folder(base, "sweep")
        return None
    first_job = frozenset(line for line, o in zip(first, parsed) if not o.is_hydra_override())
    ready = {frozenset(job): settings(base if frozenset(job) == first_job else compose(job))
             for job in jobs}
    _check_folder(base, "sweep")
    return ready


def _parse(overrides: list[str]) -> list[Any]:
    """Hydra's parse of the overrides; ConfigError naming the one it cannot read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except HydraException:
            if "=" not in override:
                raise ConfigError(f"{override}: not KEY=VALUE (a value with spaces must be "
                                  "quoted as a whole: 'key=\"a b\"')") from None
            raise ConfigError(f"{override}: Hydra cannot parse this value; quote it, e.g. "
                              f"'{override.split('=', 1)[0]}=\"...\"'") from None
    return parser.parse_overrides(overrides)


def _check_intervals(parsed: list[Any]) -> None:
    """An interval has no list of values: only an optimizing sweeper (Optuna, ...) samples
    it, not Hydra's basic one."""
    from propbench.config import compose

    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeper = str(compose(plain, return_hydra_config=True).hydra.sweeper.get("_target_", ""))
    for o in parsed:
        if o.is_interval_sweep() and sweeper.endswith(".BasicSweeper"):
            raise ConfigError(f"{o.input_line}: an interval needs an optimizing sweeper "
                              "(hydra/sweeper=optuna ...); list the values instead, e.g. depth=1,2,5")


def _check_folder(base: Any, mode: str) -> None:
    """``hydra.run.dir`` (or ``sweep.dir``) must name a folder propbench can create and
    write, that no other propbench process is writing into."""
    from omegaconf import OmegaConf

    from propbench.results import folder_in_use

    raw = str(OmegaConf.to_container(base.hydra[mode], resolve=False).get("dir") or "").strip()
    key = f"hydra.{mode}.dir"
    if not raw:
        raise ConfigError(f"{key}=: empty; give a folder (the default is under results/)")
    try:
        folder = Path(base.hydra[mode].dir)
    except Exception as err:  # noqa: BLE001 -- an interpolation that does not resolve
        raise ConfigError(f"{key}={raw}: {first_line(err)}") from None
    chain = [folder.absolute(), *folder.absolute().parents]
    existing = next(p for p in chain if p.exists() or p == p.parent)
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"{key}={folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={folder}: {existing} is not writable (read-only or no permission)")
    missing = chain[:chain.index(existing)]
    try:  # the only sure test: make the folders, then remove them again
        for path in reversed(missing):
            path.mkdir()
    except OSError as err:
        raise ConfigError(f"{key}={folder}: cannot create {path} ({err.strerror or err})") from None
    finally:
        for path in missing:
            if path.exists():
                path.rmdir()
    if folder_in_use(folder):
        raise ConfigError(f"{key}={folder}: in use by another propbench process; "
                          "wait for it to end or choose another folder")


def _checkable(argv: list[str]) -> bool:
    """Only plain overrides (and -m) are checked here; Hydra's own flags go straight to it."""
    return not os.environ.get("HYDRA_FULL_ERROR") and all(
        a in _MULTIRUN_FLAGS or not a.startswith("-") for a in argv
    )


def _task(cfg: Any, ready: Optional[dict[frozenset[str], Any]]) -> Optional[float]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from propbench.plots import config_title
    from propbench.runner import run
    from propbench.verdict import SIGNALS, describe, describe_spectrum

    hydra_cfg = HydraConfig.get()
    job = (ready or {}).get(frozenset(hydra_cfg.overrides.task), cfg)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return _sweep_job(job, hydra_cfg)
    _Interrupt.run_dir = hydra_cfg.runtime.output_dir
    try:
        result = run(job, hydra_cfg.runtime.output_dir, progress=not _quiet(job))
    except WriteError as err:
        fail(str(err), status=1)
    except PropbenchError as err:
        fail(str(err))
    summary = result.summary
    log.info(f"{PROG}: {config_title(result.frame)} on {summary['device']}, {summary['elapsed_s']:.2f} s")
    probed = summary.get("probe")
    if probed:
        log.info(f"  probed: {probed.get('blocks') or 'no repeated blocks: layers by projection'}; "
                 f"backpropagated from {'the output' if probed['output'] == 'output' else probed['output']}")
    for quantity in SIGNALS:
        if quantity in summary:
            log.info("  " + describe(quantity, summary[quantity]))
    if "spectrum" in summary:
        log.info("  " + describe_spectrum(summary["spectrum"]))
    if "token_similarity" in summary:
        tokens = summary["token_similarity"]
        log.info(f"  tokens:     similarity {tokens['first_block']:.3f} at the first block, "
              f"{tokens['last_block']:.3f} at the last (1 = collapsed)")
    if result.resumed:
        log.info(f"  kept {result.folder}/: complete for this config (resume=true)")
    else:
        spectrum = ", spectrum.csv, spectrum.png" if result.spectrum is not None else ""
        log.info(f"  wrote {result.folder}/ (stats.csv, summary.json, propagation.png{spectrum})")
    _warn_range(summary)


def _quiet(job: Any) -> bool:
    from propbench.runner import Setup

    return bool(job.settings.quiet if isinstance(job, Setup) else getattr(job, "quiet", False))


def _warn_range(summary: dict[str, Any]) -> None:
    from propbench.verdict import range_warning

    for warning in summary.get("probe", {}).get("warnings", []):
        log.warning(warning)
    warning = range_warning(summary, summary["config"]["dtype"])
    if warning:
        log.warning(warning)


def _sweep_job(job: Any, hydra_cfg: Any) -> float:
    """One job of a sweep: never raises, so the other jobs run; a failure is recorded in
    the job's error.json and counted when the sweep is aggregated. Returns the job's
    ``objective`` for Hydra's sweeper (verdict.objective; NaN for a failed job)."""
    import traceback
    from pathlib import Path

    from propbench.results import write_error
    from propbench.runner import run
    from propbench.sweep import progress
    from propbench.verdict import SIGNALS, objective

    _Interrupt.check()
    folder = Path(hydra_cfg.runtime.output_dir)
    value = float("nan")
    overrides = " ".join(hydra_cfg.overrides.task)
    try:
        result = run(job, folder)
        summary = result.summary
        outcome = ", ".join(f"{q} {summary[q]['verdict']}" for q in SIGNALS if q in summary)
        outcome += " (kept: resume=true)" if result.resumed else ""
        value = objective(summary, summary["config"]["objective"])
        _warn_range(summary)
    except Exception as err:  # noqa: BLE001 -- any failure of one job is that job's result
        _Interrupt.check()
        outcome = f"FAILED: {first_line(err)}"
        if not isinstance(err, FolderInUseError):  # not into a folder another process writes
            try:
                write_error(folder, err, traceback.format_exc())
            except OSError as write_err:  # a full disk: the job stays incomplete
                outcome += f" (error.json not written: {write_err.strerror or write_err})"
    done, total, timing = progress(Path(hydra_cfg.sweep.dir))
    log.info(f"[{done}/{total or '?'}] job {hydra_cfg.job.num} ({overrides}): {outcome}{timing}")
    return value


def _finish() -> None:
    """The sweep's exit status: 1, with one line saying why, if anything went wrong."""
    from propbench import sweep

    if sweep.LAST_ERROR is not None:
        fail(sweep.LAST_ERROR, status=1)
    report = sweep.LAST_REPORT
    if report is not None and not report.ok:
        problems = [f"{len(report.failed)} failed" if report.failed else "",
                    f"{len(report.corrupt)} corrupt" if report.corrupt else "",
                    f"{len(report.unfinished)} unfinished" if report.unfinished else "",
                    "claim not held" if report.claim and not report.claim["held"] else ""]
        fail(f"sweep {report.folder}: " + ", ".join(p for p in problems if p), status=1)


def _interrupted() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: we are already leaving
    from propbench import sweep

    folder = sweep.LAST_SWEEP_DIR
    if _Interrupt.run_dir is not None:
        fail(f"interrupted; {_Interrupt.run_dir} holds no new result (a complete earlier one "
             "is kept)", INTERRUPTED)
    if folder is None:
        fail("interrupted before anything was written", INTERRUPTED)
    done, total, _ = sweep.progress(folder)
    fail(f"interrupted; sweep {folder}: {done} of {total or '?'} jobs done; run the same "
         "command with resume=true to finish it", INTERRUPTED)


def main() -> None:
    """Console entry point (``propbench`` and ``python -m propbench``)."""
    signal.signal(signal.SIGINT, _Interrupt.handler)
    sys.unraisablehook = _Interrupt.unraisable
    try:
        _main(sys.argv[1:])
    except KeyboardInterrupt:
        _Interrupt.seen = True
    if _Interrupt.seen:
        _interrupted()
    _finish()


def _main(argv: list[str]) -> None:
    import logging

    import hydra

    from propbench.config import CONF_DIR, expand_aliases, register_configs

    argv = expand_aliases(argv)  # spectrum=true -> spectrum.enabled=true, for Hydra too
    sys.argv[1:] = argv
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show a character escapes it
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    logging.raiseExceptions = False  # a log file on a full disk: no traceback per message
    register_configs()
    ready, checked = None, _checkable(argv)
    if checked:
        try:
            ready = prepare(argv)
        except PropbenchError as err:
            fail(str(err))

    def task(cfg: Any) -> Optional[float]:
        logging.raiseExceptions = False  # also in a launcher's worker process
        return _task(cfg, ready)

    if not checked:  # Hydra's flags, or HYDRA_FULL_ERROR: Hydra reports as it does
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own failures (writing .hydra/) reach us
    try:
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)()
    except OSError as err:  # a full disk, a folder removed or made read-only meanwhile
        from propbench import sweep

        why = err.strerror or str(err)
        if sweep.LAST_SWEEP_DIR is not None:
            fail(f"sweep {sweep.LAST_SWEEP_DIR}: could not write ({why}); it stopped, the complete "
                 "jobs are kept: rerun the same command with resume=true", status=1)
        fail(f"could not write the run folder ({why}); nothing in it is marked complete", status=1)

