"""``python -m propbench [-m] KEY=VALUE ...``: a thin Hydra CLI over :func:`propbench.runner.execute`.

Before Hydra starts, every override (every value of a sweep, one at a time) is composed
and validated here, so a mistake ends with one line on stderr and exit status 2 -- before
any run folder exists and before torch is imported, unless the config is valid and only
the device or memory check remains. ``HYDRA_FULL_ERROR=1`` shows Hydra's own report instead.
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
from typing import Any, Iterable, Optional

from propbench.config import CONF_DIR, compose, register_configs, settings
from propbench.errors import ConfigError, PropbenchError

PROG = "propbench"
_MULTIRUN_FLAGS = ("-m", "--multirun")
# the override lists check() composed and validated; the propbench sweeper
# (hydra_plugins/propbench_sweeper) does not compose these jobs again
PRECHECKED: set[frozenset[str]] = set()
# config groups (folders of conf/ and experiments/): overriding one recomposes the defaults
_GROUPS = {p.name for d in (CONF_DIR, CONF_DIR.parent / "experiments") for p in d.iterdir()
           if p.is_dir()} | {"schema"}


def fail(message: str, status: int = 2) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(status)


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _known_keys() -> list[str]:
    from omegaconf import OmegaConf

    def walk(node: Any, prefix: str) -> Iterable[str]:
        for key, value in node.items():
            yield prefix + key
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")

    base = OmegaConf.to_container(compose([]), enum_to_str=True)
    base.pop("hydra", None)
    return list(walk(base, ""))


def _suggest(key: str) -> str:
    """'; did you mean depth?' for dept, '; did you mean model.norm?' for norm, or ''."""
    known = _known_keys()
    nested = [k for k in known if k.endswith("." + key)]
    close = nested or difflib.get_close_matches(key, known, n=1)
    if close:
        return f"; did you mean {close[0]}?"
    parent = key.rpartition(".")[0]
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
    return f"; {parent} has {', '.join(siblings)}" if parent and siblings else ""


def explain(err: BaseException, override: str) -> str:
    """Hydra's and OmegaConf's multi-line composition errors as one line."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        options = [o for o in (err.options or []) if not o.startswith("_")]
        if group and options:
            return f"{group}={option}: no such option; choose one of {', '.join(options)}"
        return _first_line(err)
    cause = err.__cause__ or err
    key = getattr(cause, "full_key", None) or override.split("=", 1)[0].lstrip("+~")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return f"{key}: unknown key{_suggest(key)}"
    if isinstance(cause, ValidationError):
        value = override.split("=", 1)[1] if "=" in override else ""
        return f"{key}={value}: {_first_line(cause)}"
    return f"{override}: {_first_line(err)}" if override else _first_line(err)


def _combinations(overrides: list[str]) -> tuple[list[list[str]], Optional[str]]:
    """Override lists to check -- all first values, then each further sweep value alone --
    and the first sweep override, if any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise ConfigError(_first_line(err)) from None
    choices: list[list[str]] = []
    sweep = None
    for o in parsed:
        glob = o.value_type is not None and o.value_type.name.startswith("GLOB")
        if o.is_hydra_override() or o.is_interval_sweep() or glob:
            continue  # Hydra's own settings, and sweeps only Hydra can enumerate
        if o.is_sweep_override():
            sweep = sweep or o.input_line
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    base = [c[0] for c in choices if c]
    combos = [base]
    for i, values in enumerate(choices):
        combos += [base[:i] + [v] + base[i + 1:] for v in values[1:]]
    return combos, sweep


def check(argv: list[str]) -> None:
    """Compose and validate what ``argv`` asks for; raise ConfigError with one line."""
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from propbench.devices import check_memory, resolve_device

    multirun = any(a in _MULTIRUN_FLAGS for a in argv)
    overrides = [a for a in argv if a not in _MULTIRUN_FLAGS]
    combos, sweep = _combinations(overrides)
    PRECHECKED.clear()
    base = None
    for i, combo in enumerate(combos):
        changed = [o for o, b in zip(combo, combos[0]) if o != b]  # each combo differs once
        try:
            cfg = _updated(base, changed[0]) if len(changed) == 1 else None
            if cfg is None:
                cfg = compose(combo, return_hydra_config=i == 0)
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(explain(err, _culprit(err, combo) or "".join(changed[:1]))) from None
        if i == 0:  # an experiment may switch to multirun itself (hydra.mode)
            multirun = multirun or str(cfg.hydra.mode) == "RunMode.MULTIRUN"
            if sweep and not multirun:
                raise ConfigError(f"{sweep}: a list of values is a sweep; add -m")
            with open_dict(cfg):
                del cfg["hydra"]  # its job-time interpolations cannot resolve here
            base = cfg
        s = settings(cfg)
        check_memory(s, resolve_device(s.device))
        PRECHECKED.add(frozenset(combo))


def _updated(base: Any, changed: str) -> Any:
    """The composed ``base`` with the override ``changed`` set the way Hydra sets a value
    after composing (``OmegaConf.update``, type-checked by the schema); None where that
    override needs a full composition (a config group, ``+``, ``~``), which a sweep of one
    value at a time would otherwise pay for every value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf

    override = OverridesParser.create().parse_override(changed)
    key = override.key_or_group
    if override.type != OverrideType.CHANGE or override.package is not None or (
        "/" in key or key in _GROUPS
    ):
        return None
    cfg = copy.deepcopy(base)
    OmegaConf.update(cfg, key, override.value(), merge=True)
    return cfg


def _culprit(err: BaseException, combo: list[str]) -> str:
    """The override an error is about (Hydra names it in its message), or ''."""
    text = str(err)
    return next((o for o in combo if o in text), "")


def _checkable(argv: list[str]) -> bool:
    """Only plain overrides (and -m) are checked here; Hydra's own flags go straight to it."""
    return not os.environ.get("HYDRA_FULL_ERROR") and all(
        a in _MULTIRUN_FLAGS or not a.startswith("-") for a in argv
    )


def _task(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from propbench.plots import config_title
    from propbench.runner import execute
    from propbench.verdict import describe

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return _sweep_job(cfg, hydra_cfg)
    try:
        result = execute(cfg, hydra_cfg.runtime.output_dir)
    except PropbenchError as err:
        fail(str(err))
    summary = result.summary
    print(f"{PROG}: {config_title(result.frame)} on {summary['device']}, {summary['elapsed_s']:.2f} s")
    for quantity in ("activation", "gradient"):
        if quantity in summary:
            print("  " + describe(quantity, summary[quantity]))
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


def _sweep_job(cfg: Any, hydra_cfg: Any) -> None:
    """One job of a sweep: never raises, so the other jobs run; a failure is recorded in
    the job's error.json and counted when the sweep is aggregated."""
    import traceback
    from pathlib import Path

    from propbench import background
    from propbench.results import write_error
    from propbench.runner import execute
    from propbench.sweep import progress

    folder = Path(hydra_cfg.runtime.output_dir)
    overrides = " ".join(hydra_cfg.overrides.task)
    # one job after another in this process: the figure can be drawn beside the next job
    in_process = str(hydra_cfg.launcher.get("_target_", "")).endswith(".BasicLauncher")
    try:
        result = execute(cfg, folder, background=in_process)
        summary = result.summary
        outcome = ", ".join(f"{q} {summary[q]['verdict']}" for q in ("activation", "gradient")
                            if q in summary)
        outcome += " (kept: resume=true)" if result.resumed else ""
        _warn_range(summary)
    except Exception as err:  # noqa: BLE001 -- any failure of one job is that job's result
        write_error(folder, err, traceback.format_exc())
        outcome = f"FAILED: {_first_line(err)}"
    done, total = progress(Path(hydra_cfg.sweep.dir))
    done += background.pending()  # computed; their figures are still being drawn
    print(f"[{done}/{total or '?'}] job {hydra_cfg.job.num} ({overrides}): {outcome}", flush=True)


def main() -> None:
    """Console entry point (``propbench`` and ``python -m propbench``)."""
    import hydra

    argv = sys.argv[1:]
    if _checkable(argv):
        try:
            check(argv)
        except PropbenchError as err:
            fail(str(err))
    register_configs()
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)()

    from propbench import sweep

    report = sweep.LAST_REPORT
    if report is not None and not report.ok:
        problems = [f"{len(report.failed)} failed" if report.failed else "",
                    f"{len(report.unfinished)} unfinished" if report.unfinished else "",
                    "claim not held" if report.claim and not report.claim["held"] else ""]
        fail(f"sweep {report.folder}: " + ", ".join(p for p in problems if p), status=1)
