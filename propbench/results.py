"""A run folder on disk: written atomically, read back only from CSV and JSON.

A run folder holds ``stats.csv`` (the frame), ``propagation.png`` and ``summary.json``.
One attempt at a run writes them all, holding the folder's lock (:func:`folder_lock`: a
second process is refused): it first removes the previous attempt's summary (and error),
then writes each file to a unique temporary name and renames it into place, and last the
summary, with ``"complete": true``, the attempt's id and the SHA-256 of every file it wrote.
So a folder is complete only when its summary says so and every file is the one that
attempt wrote (:func:`check_run`, which :func:`load` applies); anything else is incomplete or
corrupt. Nothing is unpickled and nothing in a folder is executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from propbench.errors import FolderInUseError, ResultsError
from propbench.frames import CONFIG_COLUMNS, COLUMN_TYPES, OPTIONAL_COLUMN_TYPES, typed  # noqa: F401

STATS = "stats.csv"
STATS_PARQUET = "stats.parquet"  # beside stats.csv when pyarrow is installed
SUMMARY = "summary.json"
FIGURE = "propagation.png"
ERROR = "error.json"  # a sweep job that failed: its error instead of a summary
MANIFEST = "jobs.json"  # a sweep folder: every job's number and overrides
SWEEP_CSV = "sweep.csv"
SPECTRUM = "spectrum.csv"  # spectrum=true: one row per (trial, example, layer)
SPECTRUM_FIGURE = "spectrum.png"
LOCK = ".propbench.lock"  # held (flock) by the process writing into a run or sweep folder
RESULT_FILES = [STATS, STATS_PARQUET, FIGURE, SPECTRUM, SPECTRUM_FIGURE]  # what an attempt writes before its summary



def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` then rename tmp onto ``path`` (atomic on POSIX). The temporary
    name is unique (``.<name>.<random>.tmp``), so writers never share one."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "run") -> Iterator[None]:
    """Hold ``folder``'s lock (an flock on ``.propbench.lock``, released when the process
    ends, however it ends) while writing into it; ResultsError, one line, if another
    process holds it. Without ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderInUseError(f"{folder}: in use by another propbench {what} ({holder}); "
                               "wait for it to end or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def folder_in_use(folder: Path) -> bool:
    """Whether another process holds ``folder``'s lock now (nothing is created)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    try:
        with open(folder / LOCK) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no lock file, or not a folder: nobody writes there
        return False
    return False


def start_attempt(folder: Path) -> str:
    """Remove what a previous attempt left in ``folder`` (its summary first, so the folder
    is never complete with a mix of files) and return a new attempt's id."""
    for name in (SUMMARY, ERROR, *RESULT_FILES):
        (folder / name).unlink(missing_ok=True)
    return uuid.uuid4().hex


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ResultsError (one line) for anything else."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing") from None
    except IsADirectoryError:
        raise ResultsError(f"{path}: corrupt (a folder, not a file)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: unreadable ({err})") from None
    except ValueError as err:
        raise ResultsError(f"{path}: corrupt (not JSON: {str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ResultsError(f"{path}: corrupt (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: corrupt (a JSON {type(data).__name__}, not an object)")
    return data


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
    """stats.csv, and with pyarrow installed stats.parquet (exact floats, the dtypes kept)."""
    path = folder / STATS
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.9g"))
    if has_parquet():
        atomic_write(folder / STATS_PARQUET, lambda tmp: frame.to_parquet(tmp, index=False))
    return path


def has_parquet() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def write_spectrum(folder: Path, frame: pd.DataFrame) -> Path:
    path = folder / SPECTRUM
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.9g"))
    return path


def load_spectrum(path: str | os.PathLike) -> pd.DataFrame:
    """The ``spectrum.csv`` of a run folder (or the file itself)."""
    path = Path(path)
    csv = path / SPECTRUM if path.is_dir() else path
    if not csv.exists():
        raise ResultsError(f"{path}: no {SPECTRUM} (run with spectrum=true)")
    return pd.read_csv(csv)


def write_summary(folder: Path, summary: dict[str, Any], attempt: str = "") -> Path:
    """The summary, last: ``"complete": true``, the attempt's id and the SHA-256 of each of
    the attempt's files in ``folder``."""
    path = folder / SUMMARY
    files = {name: _sha256(folder / name) for name in RESULT_FILES if (folder / name).is_file()}
    record = {**summary, "complete": True, "attempt": attempt or uuid.uuid4().hex, "files": files}
    text = json.dumps(_json_safe(record), indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def write_error(folder: Path, err: BaseException, trace: str) -> Path:
    """Record why a sweep job failed (its first line, type and traceback), in place of
    whatever this or an earlier attempt wrote."""
    path = folder / ERROR
    message = next((l for l in str(err).splitlines() if l.strip()), type(err).__name__)
    folder.mkdir(parents=True, exist_ok=True)
    attempt = start_attempt(folder)
    text = json.dumps({"status": "failed", "error": message, "type": type(err).__name__,
                       "attempt": attempt, "traceback": trace}, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def check_run(folder: Path) -> dict[str, Any]:
    """The summary of the complete run in ``folder``: ``"complete": true``, and each file
    it lists holds the bytes its attempt wrote. ResultsError (one line) otherwise."""
    summary = read_json(folder / SUMMARY)
    if summary.get("complete") is not True:
        raise ResultsError(f"{folder}: incomplete run ({SUMMARY} does not say complete); rerun it")
    files = summary.get("files", {})  # absent from results written before attempts had ids
    if not isinstance(files, dict):
        raise ResultsError(f"{folder / SUMMARY}: corrupt (files is not an object)")
    for name, digest in files.items():
        path = folder / str(name)
        if not path.is_file():
            state = "not a file" if path.exists() else "missing"
            raise ResultsError(f"{folder}: incomplete run ({name} {state}); rerun it")
        if _sha256(path) != digest:
            raise ResultsError(f"{path}: not the file of this run's attempt (changed since); rerun it")
    return summary


def completed_config(folder: Path) -> dict[str, Any] | None:
    """The config of the complete run in ``folder`` (None if there is none or it is broken)."""
    try:
        return check_run(folder).get("config")
    except ResultsError:
        return None


def _stats_path(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """The table to read at ``path``, and the summary of the run folder it is in (checked
    by :func:`check_run`; None for a file or a sweep folder)."""
    if not path.exists():
        raise ResultsError(f"{path}: no such file or folder")
    if path.is_file():
        return path, None
    if (path / MANIFEST).exists() or (path / SWEEP_CSV).exists():
        sweep = path / SWEEP_CSV
        if not sweep.exists():
            raise ResultsError(f"{path}: sweep not aggregated yet; run python -m propbench.report {path}")
        return sweep, None
    stats = path / STATS
    if not stats.exists() and (path / STATS_PARQUET).exists():
        stats = path / STATS_PARQUET
    if not stats.exists():
        if (path / ".hydra").exists() or (path / ERROR).exists():
            raise ResultsError(f"{path}: incomplete run (stopped or failed before {STATS})")
        raise ResultsError(f"{path}: not a propbench run folder (no {STATS})")
    if not (path / SUMMARY).exists():
        raise ResultsError(f"{path}: incomplete run ({STATS} without {SUMMARY}); rerun it")
    return stats, check_run(path)


def load(path: str | os.PathLike) -> pd.DataFrame:
    """The frame of a run folder (its ``stats.csv``, or ``stats.parquet`` alone), a sweep
    folder (its ``sweep.csv``: every job stacked, with a ``job`` column), a CSV or a Parquet
    file, with the contract's column types (:mod:`propbench.frames`).

    >>> import propbench
    >>> frame = propbench.load("results/runs/...")  # doctest: +SKIP
    """
    return _load(Path(path))[0]


def load_run(folder: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(:func:`load`, :func:`read_summary`) of a complete run folder, its files checked once."""
    frame, summary = _load(Path(folder))
    if summary is None:
        raise ResultsError(f"{folder}: not a run folder")
    return frame, summary


def _load(path: Path) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    stats, summary = _stats_path(path)
    if stats.suffix == ".parquet" and not has_parquet():
        raise ResultsError(f"{stats}: reading Parquet needs pyarrow (pip install 'propbench[parquet]')")
    try:
        frame = pd.read_parquet(stats) if stats.suffix == ".parquet" else pd.read_csv(stats)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ResultsError(f"{stats}: not a readable CSV ({str(err).splitlines()[0]})") from None
    except OSError as err:  # a folder named stats.csv, a permission
        raise ResultsError(f"{stats}: unreadable ({err.strerror or err})") from None
    required = [*COLUMN_TYPES, *(CONFIG_COLUMNS if path.is_dir() else [])]  # a run's or sweep's
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ResultsError(f"{stats}: missing column(s) {', '.join(missing)}")
    for column in OPTIONAL_COLUMN_TYPES:
        if column not in frame.columns:
            frame[column] = float("nan")
    try:
        return typed(frame), summary
    except (ValueError, TypeError) as err:
        raise ResultsError(f"{stats}: malformed values ({str(err).splitlines()[0]})") from None


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """The ``summary.json`` of a complete run folder (:func:`check_run`)."""
    folder = Path(path)
    summary = _stats_path(folder)[1]
    return summary if summary is not None else check_run(folder)
