"""A run folder on disk: written atomically, read back only from CSV and JSON.

A run folder holds ``stats.csv`` (the frame), ``propagation.png`` and ``summary.json``.
Each file is written to a temporary name and renamed into place, and ``summary.json``
(with ``"complete": true``) comes last, so a folder with a summary is a finished run and
one without it is not. Nothing is unpickled and nothing in a folder is executed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from propbench.errors import ResultsError

STATS = "stats.csv"
SUMMARY = "summary.json"
FIGURE = "propagation.png"
ERROR = "error.json"  # a sweep job that failed: its error instead of a summary
MANIFEST = "jobs.json"  # a sweep folder: every job's number and overrides
SWEEP_CSV = "sweep.csv"

# The frame's contract: columns and their types (config columns follow these).
COLUMN_TYPES = {
    "trial": "int64", "layer": "int64", "module": "string", "site": "string",
    "quantity": "string", "mean": "float64", "var": "float64", "second_moment": "float64",
    "n": "int64", "nonfinite": "int64", "channel_mean_sq": "float64", "channel_var": "float64",
}
# Columns added after the first release: absent from older results, read as empty.
OPTIONAL_COLUMN_TYPES = {
    "theory": "float64",  # the mean-field prediction of var (empty where none applies)
    "sublayer": "Int64",  # the weight layer within a residual branch (empty elsewhere)
}
CONFIG_COLUMNS = ["model", "act", "init", "norm", "depth", "width", "batch_size", "seed", "dtype"]


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` then rename tmp onto ``path`` (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_safe(value: Any) -> Any:
    """JSON has no inf/NaN: write them as null (the verdict says what happened)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_stats(folder: Path, frame: pd.DataFrame) -> Path:
    path = folder / STATS
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.9g"))
    return path


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    path = folder / SUMMARY
    text = json.dumps(_json_safe({**summary, "complete": True}), indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def write_error(folder: Path, err: BaseException, trace: str) -> Path:
    """Record why a sweep job failed (its first line, type and traceback)."""
    path = folder / ERROR
    message = next((l for l in str(err).splitlines() if l.strip()), type(err).__name__)
    text = json.dumps({"status": "failed", "error": message, "type": type(err).__name__,
                       "traceback": trace}, indent=2)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def completed_config(folder: Path) -> dict[str, Any] | None:
    """The config of the complete run in ``folder`` (None if there is none or it is broken)."""
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if summary.get("complete") is not True or not (folder / STATS).exists():
        return None
    return summary.get("config")


def _stats_path(path: Path) -> Path:
    if not path.exists():
        raise ResultsError(f"{path}: no such file or folder")
    if path.is_file():
        return path
    if (path / MANIFEST).exists() or (path / SWEEP_CSV).exists():
        sweep = path / SWEEP_CSV
        if not sweep.exists():
            raise ResultsError(f"{path}: sweep not aggregated yet; run python -m propbench.report {path}")
        return sweep
    stats = path / STATS
    if not stats.exists():
        if (path / ".hydra").exists() or (path / ERROR).exists():
            raise ResultsError(f"{path}: incomplete run (stopped or failed before {STATS})")
        raise ResultsError(f"{path}: not a propbench run folder (no {STATS})")
    if not (path / SUMMARY).exists():
        raise ResultsError(f"{path}: incomplete run ({STATS} without {SUMMARY}); rerun it")
    return stats


def load(path: str | os.PathLike) -> pd.DataFrame:
    """The frame of a run folder, a sweep folder (its ``sweep.csv``: every job stacked, with
    a ``job`` column) or a CSV file, with the contract's column types.

    >>> import propbench
    >>> frame = propbench.load("results/runs/...")  # doctest: +SKIP
    """
    stats = _stats_path(Path(path))
    try:
        frame = pd.read_csv(stats)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ResultsError(f"{stats}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in COLUMN_TYPES if c not in frame.columns]
    if missing:
        raise ResultsError(f"{stats}: missing column(s) {', '.join(missing)}")
    for column in OPTIONAL_COLUMN_TYPES:
        if column not in frame.columns:
            frame[column] = float("nan")
    try:
        return frame.astype({**COLUMN_TYPES, **OPTIONAL_COLUMN_TYPES})
    except (ValueError, TypeError) as err:
        raise ResultsError(f"{stats}: malformed values ({str(err).splitlines()[0]})") from None


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """The ``summary.json`` of a run folder."""
    folder = Path(path)
    _stats_path(folder)
    return json.loads((folder / SUMMARY).read_text())
