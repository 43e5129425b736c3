"""One run: build, initialize and probe the configured network ``trials`` times, set the
theory beside it, summarize, and (optionally) write the run folder."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
import torch

from propbench import __version__
from propbench.compare import Theory
from propbench.config import PropbenchConfig, settings
from propbench.devices import check_memory, device_name, resolve_device, trials_at_once
from propbench.errors import PropbenchError
from propbench.models import DTYPES, build_model
from propbench.probes import probe_trials
from propbench.results import (CONFIG_COLUMNS, FIGURE, completed_config, load, read_summary,
                               write_stats, write_summary)
from propbench.seeds import trial_seeds
from propbench.stacked import stack
from propbench.verdict import summarize, token_summary


@dataclass(frozen=True)
class Setup:
    """What a run decides before it starts: the validated config, the device, and how many
    trials one stacked pass probes (checked against the free memory)."""

    settings: PropbenchConfig
    device: Any
    at_once: int


@dataclass
class RunResult:
    frame: pd.DataFrame  # the tidy frame (the stats.csv contract)
    summary: dict[str, Any]  # what summary.json holds
    folder: Optional[Path] = None
    resumed: bool = False  # True: kept from a complete earlier run (resume=true)


def setup(cfg: Any) -> Setup:
    """Validate ``cfg`` (see :func:`propbench.config.settings`), choose the device, and
    refuse a run the free memory cannot hold; ConfigError with one line otherwise."""
    s = settings(cfg)
    device = resolve_device(s.device)
    at_once = trials_at_once(s, device)
    check_memory(s, device, at_once)
    return Setup(s, device, at_once)


def run(cfg: Any, out_dir: Optional[str | Path] = None) -> RunResult:
    """Probe the network ``cfg`` describes; return its frame and summary, and with
    ``out_dir`` write the run folder there (``stats.csv``, ``propagation.png``, then
    ``summary.json``).

    ``cfg`` is a composed config (:func:`propbench.compose`), a
    :class:`propbench.PropbenchConfig`, or a :class:`Setup`.

    >>> import propbench
    >>> result = propbench.run(propbench.compose(["depth=5", "width=64", "init=kaiming"]))
    >>> sorted(result.frame.quantity.unique()), result.summary["activation"]["verdict"]
    (['activation', 'gradient'], 'stable')
    """
    job = cfg if isinstance(cfg, Setup) else setup(cfg)
    folder = None if out_dir is None else Path(out_dir)
    if folder is not None and job.settings.resume and _same_run(job.settings, folder):
        return RunResult(load(folder), read_summary(folder), folder, resumed=True)
    started = time.perf_counter()
    frame, theory = _measure(job)
    elapsed = time.perf_counter() - started
    frame = _annotate(frame, job.settings, theory)
    result = RunResult(frame, _summary(frame, job, theory, elapsed), folder)
    if folder is not None:
        _write(result)
    return result


def execute(cfg: Any, out_dir: Optional[str | Path] = None) -> RunResult:
    """The former name of :func:`run`."""
    return run(cfg, out_dir)


def _same_run(s: PropbenchConfig, folder: Path) -> bool:
    """A complete run of the same config in ``folder``, whatever ``resume`` and
    ``trial_batch`` say (how the run is done, not what it measures)."""
    done = completed_config(folder)
    how = {"resume": None, "trial_batch": None}
    return done is not None and {**done, **how} == {**s.to_dict(), **how}


def draw_inputs(s: PropbenchConfig, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard-normal inputs; with ``correlation=c0``, interleaved pairs (rows 2i, 2i+1)
    x_b = c0 x_a + sqrt(1 - c0^2) n, so that each pair has correlation c0."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((s.batch_size, *shape), generator=generator, dtype=DTYPES[s.dtype])
    if s.correlation is not None:
        c0 = s.correlation
        x[1::2] = c0 * x[0::2] + (1 - c0**2) ** 0.5 * x[1::2]
    return x


def _chunks(trials: int, at_once: int) -> Iterator[range]:
    for start in range(0, trials, at_once):
        yield range(start, min(start + at_once, trials))


def _measure(job: Setup) -> tuple[pd.DataFrame, Theory]:
    """Every trial's frame, ``at_once`` trials stacked into one network per pass (a single
    network is one trial), and the theory of the first trial's network."""
    s, frames, theory = job.settings, [], None
    try:
        for trials in _chunks(s.trials, job.at_once):
            seeds = [trial_seeds(s.seed, t) for t in trials]
            models = [build_model(s, seed=seed.weights) for seed in seeds]
            if theory is None:  # it reads the layers' fans, not their values
                theory = Theory.of(s, models[0])
            inputs = [draw_inputs(s, models[0].input_shape, seed.inputs) for seed in seeds]
            stacked = stack(models).to(job.device)
            del models  # the stacked copy holds their weights now
            frame = probe_trials(stacked, inputs, seeds=[seed.cotangent for seed in seeds],
                                 pairs=s.correlation is not None, keep_grads=False)
            del stacked
            frame["trial"] += trials.start
            frames.append(frame)
    except torch.OutOfMemoryError:
        raise PropbenchError(
            f"out of memory on {job.device} at depth={s.depth}, width={s.width}, "
            f"batch_size={s.batch_size}; lower one of them"
        ) from None
    return pd.concat(frames, ignore_index=True), theory


def config_columns(s: PropbenchConfig) -> dict[str, Any]:
    """The config values every row of the frame carries (results.CONFIG_COLUMNS)."""
    values = {"model": s.model.name, "act": s.act.name, "init": s.init.name,
              "norm": s.model.norm.value, "dtype": s.dtype.value}
    values.update({key: getattr(s, key) for key in CONFIG_COLUMNS if key not in values})
    return values


def _annotate(frame: pd.DataFrame, s: PropbenchConfig, theory: Theory) -> pd.DataFrame:
    """The theory column, the config columns, and the effective sigma_w^2 = fan_in Var(W)
    and sigma_b^2 = Var(b) of a middle layer."""
    frame["theory"] = theory.column(frame)
    for column, value in config_columns(s).items():
        frame[column] = value
    frame["sigma_w2"], frame["sigma_b2"] = theory.sigmas or (np.nan, np.nan)
    return frame


def _summary(frame: pd.DataFrame, job: Setup, theory: Theory, elapsed: float) -> dict[str, Any]:
    s = job.settings
    return {
        **summarize(frame),
        **token_summary(frame),
        "theory": theory.summary(frame),
        "config": s.to_dict(),
        "device": device_name(job.device),
        "trials": s.trials,
        "trials_at_once": job.at_once,
        "elapsed_s": round(elapsed, 3),
        "versions": {
            "propbench": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "python": platform.python_version(),
        },
        "determinism": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "threads": torch.get_num_threads(),
            "seeds": [vars(trial_seeds(s.seed, t)) for t in range(s.trials)],
        },
        "command": " ".join(sys.argv),
    }


def _write(result: RunResult) -> None:
    """The run folder: statistics, figure, and last the summary that marks it complete."""
    from propbench.plots import save_propagation

    result.folder.mkdir(parents=True, exist_ok=True)
    write_stats(result.folder, result.frame)
    save_propagation(result.frame, result.folder / FIGURE)
    write_summary(result.folder, result.summary)
