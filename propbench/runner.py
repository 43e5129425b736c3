"""One run: build, initialize and probe the configured network ``trials`` times, then
(optionally) write the run folder."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from propbench import __version__, compare
from propbench.config import as_dict, settings
from propbench.devices import check_memory, device_name, resolve_device, trials_at_once
from propbench.errors import PropbenchError
from propbench.models import DTYPES, build_model
from propbench.probes import probe, probe_trials
from propbench.results import (CONFIG_COLUMNS, FIGURE, completed_config, load, read_summary,
                               write_error, write_stats, write_summary)
from propbench.seeds import trial_seeds
from propbench.stacked import stack
from propbench.verdict import summarize


@dataclass
class RunResult:
    frame: pd.DataFrame
    summary: dict[str, Any]
    folder: Optional[Path] = None
    resumed: bool = False  # True: kept from a complete earlier run (resume=true)


def _same_run(done: Optional[dict[str, Any]], config: dict[str, Any]) -> bool:
    """The same composed config, whatever ``resume`` and ``trial_batch`` say."""
    how = {"resume": None, "trial_batch": None}  # how the run is done, not what it measures
    return done is not None and {**done, **how} == {**config, **how}


def draw_inputs(s: Any, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard-normal inputs; with ``correlation=c0``, interleaved pairs (rows 2i, 2i+1)
    x_b = c0 x_a + sqrt(1 - c0^2) n, so that each pair has correlation c0."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((s.batch_size, *shape), generator=generator, dtype=DTYPES[s.dtype])
    if s.correlation is not None:
        c0 = s.correlation
        x[1::2] = c0 * x[0::2] + (1 - c0**2) ** 0.5 * x[1::2]
    return x


def _trials(s: Any, trials: range, device: torch.device) -> tuple[pd.DataFrame, Any]:
    """The frame of ``trials`` probed in one pass (stacked when more than one), and the
    first trial's network."""
    seeds = [trial_seeds(s.seed, t) for t in trials]
    models = [build_model(s, seed=seed.weights) for seed in seeds]
    pairs = s.correlation is not None
    if len(models) == 1:
        model = models[0].to(device)
        inputs = draw_inputs(s, model.input_shape, seeds[0].inputs).to(device)
        frame = probe(model, inputs, model.probed_modules(), seed=seeds[0].cotangent,
                      pairs=pairs, keep_grads=False)
        frame.insert(0, "trial", 0)
    else:
        stacked = stack(models).to(device)
        del models[1:]  # the stacked copy holds their weights now
        inputs = [draw_inputs(s, models[0].input_shape, seed.inputs) for seed in seeds]
        frame = probe_trials(stacked, inputs, seeds=[seed.cotangent for seed in seeds],
                             pairs=pairs, keep_grads=False)
        del stacked
    frame["trial"] += trials.start
    return frame, models[0]


def config_columns(s: Any) -> dict[str, Any]:
    """The config values every row of the frame carries (results.CONFIG_COLUMNS)."""
    values = {"model": s.model.name, "act": s.act.name, "init": s.init.name, "norm": s.model.norm}
    values.update({key: getattr(s, key) for key in CONFIG_COLUMNS if key not in values})
    return values


def execute(cfg: Any, out_dir: Optional[Path] = None, background: bool = False) -> RunResult:
    """Validate ``cfg``, probe every trial, summarize; write the run folder if given.

    With ``background=True`` the figure and ``summary.json`` are written by a forked child
    (:mod:`propbench.background`), and the folder is complete once that child is done."""
    s = settings(cfg)
    if s.resume and out_dir is not None and _same_run(completed_config(Path(out_dir)), as_dict(s)):
        return RunResult(load(out_dir), read_summary(out_dir), Path(out_dir), resumed=True)
    device = resolve_device(s.device)
    at_once = trials_at_once(s, device)
    check_memory(s, device, at_once)
    started = time.perf_counter()
    frames, predicted = [], None
    try:
        for start in range(0, s.trials, at_once):
            frame, model = _trials(s, range(start, min(start + at_once, s.trials)), device)
            if start == 0:  # the prediction needs the layers' fans, not their values
                predicted, note, sigmas = compare.prediction(s, model)
            frames.append(frame)
            del model
    except torch.OutOfMemoryError:
        raise PropbenchError(
            f"out of memory on {device} at depth={s.depth}, width={s.width}, "
            f"batch_size={s.batch_size}; lower one of them"
        ) from None
    elapsed = time.perf_counter() - started
    frame = pd.concat(frames, ignore_index=True)
    frame["theory"] = compare.theory_column(frame, predicted)
    for column, value in config_columns(s).items():
        frame[column] = value
    # the effective sigma_w^2 = fan_in Var(W) and sigma_b^2 = Var(b) of a middle layer
    frame["sigma_w2"], frame["sigma_b2"] = sigmas if sigmas else (np.nan, np.nan)
    summary = {
        **summarize(frame),
        "theory": compare.summary(frame, s, note, sigmas),
        "config": as_dict(s),
        "device": device_name(device),
        "trials": s.trials,
        "trials_at_once": at_once,
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
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_stats(out_dir, frame)
        from propbench.plots import save_propagation

        def finish() -> None:
            save_propagation(frame, out_dir / FIGURE)
            write_summary(out_dir, summary)  # last: marks the folder complete

        if background:
            from propbench import background as jobs

            jobs.submit(finish, lambda err, text: write_error(out_dir, err, text))
        else:
            finish()
    return RunResult(frame, summary, out_dir)


def run(cfg: Any, out_dir: Optional[str | Path] = None) -> pd.DataFrame:
    """Probe the network ``cfg`` describes and return the tidy frame (see README).

    ``cfg`` is a composed config (:func:`propbench.compose`), a ``PropbenchConfig`` or a
    dict of the same shape. With ``out_dir`` the run folder is written there too.

    >>> import propbench
    >>> frame = propbench.run(propbench.compose(["depth=5", "width=64"]))
    >>> sorted(frame.quantity.unique())
    ['activation', 'gradient']
    """
    return execute(cfg, None if out_dir is None else Path(out_dir)).frame
