"""One run: build, initialize and probe the configured network ``trials`` times, set the
theory beside it, summarize, and (optionally) write the run folder."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import warnings

import numpy as np
import pandas as pd
import torch

from propbench import __version__
from propbench.compare import Theory
from propbench.config import InputKind, PropbenchConfig, settings
from propbench.devices import check_memory, device_name, resolve_device, trials_at_once
from propbench.errors import ProbeWarning, PropbenchError, WriteError
from propbench.logs import Progress
from propbench.models import build_model, draw_inputs
from propbench.probes import probe, probe_trials
from propbench.results import (CONFIG_COLUMNS, FIGURE, SPECTRUM_FIGURE, completed_config,
                               folder_lock, load_run, start_attempt, typed,
                               write_spectrum, write_stats, write_summary)
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
    # spectrum=true: one row per (trial, example, layer) (spectrum.csv), and the singular
    # values at the deepest layer (trials * examples rows) where they were computed exactly
    spectrum: Optional[pd.DataFrame] = None
    singular_values: Optional[np.ndarray] = None


@dataclass
class _Measured:
    frame: pd.DataFrame
    theory: Theory
    spectrum: Optional[pd.DataFrame] = None
    singular_values: Optional[np.ndarray] = None
    calibration: Optional[list[dict[str, Any]]] = None  # per trial, data-dependent inits
    spectrum_s: float = 0.0  # seconds spent on the spectra


def setup(cfg: Any) -> Setup:
    """Validate ``cfg`` (see :func:`propbench.config.settings`), choose the device, and
    refuse a run the free memory cannot hold; ConfigError with one line otherwise."""
    s = settings(cfg)
    device = resolve_device(s.device)
    if s.model.name == "custom":  # built once to check it; no memory estimate; one trial at a time
        from propbench.external import check_model, original

        check_model(original(build_model(s)))
        return Setup(s, device, 1)
    at_once = trials_at_once(s, device)
    check_memory(s, device, at_once)
    return Setup(s, device, at_once)


def run(cfg: Any, out_dir: Optional[str | Path] = None, *, progress: bool = False) -> RunResult:
    """Probe the network ``cfg`` describes; return its frame and summary, and with
    ``out_dir`` write the run folder there (``stats.csv``, ``propagation.png``, then
    ``summary.json``), holding the folder's lock: a folder another process is writing into
    is refused (ResultsError); a failed write raises WriteError.

    ``cfg`` is a composed config (:func:`propbench.compose`), a
    :class:`propbench.PropbenchConfig`, or a :class:`Setup`. ``progress=True`` shows a
    progress line on stderr while the network is probed, if it is a terminal and the run
    takes more than a few seconds (:class:`propbench.logs.Progress`).

    >>> import propbench
    >>> result = propbench.run(propbench.compose(["depth=5", "width=64", "init=kaiming"]))
    >>> sorted(result.frame.quantity.unique()), result.summary["activation"]["verdict"]
    (['activation', 'gradient'], 'stable')
    """
    job = cfg if isinstance(cfg, Setup) else setup(cfg)
    if out_dir is None:
        return _run(job, None, progress)
    folder = Path(out_dir)
    try:
        with folder_lock(folder):
            if job.settings.resume and _same_run(job.settings, folder):
                return RunResult(*load_run(folder), folder, resumed=True)
            return _run(job, folder, progress)
    except OSError as err:  # a full disk, a folder made read-only or removed meanwhile
        raise WriteError(f"{folder}: could not write the run ({err.strerror or err}); "
                         "it is not marked complete") from None


def _run(job: Setup, folder: Optional[Path], progress: bool) -> RunResult:
    started = time.perf_counter()
    measured = _measure(job, Progress(job.settings.depth, job.settings.trials) if progress else None)
    elapsed = time.perf_counter() - started
    frame = _annotate(measured.frame, job.settings, measured.theory)
    spectrum = measured.spectrum
    if spectrum is not None:
        spectrum = _annotate_spectrum(spectrum, job.settings, measured.theory)
    summary = _summary(frame, job, measured.theory, elapsed)
    if spectrum is not None:
        summary["spectrum"] = {**measured.theory.spectrum_summary(spectrum),
                               "elapsed_s": round(measured.spectrum_s, 3)}
    if measured.calibration is not None:
        summary["lsuv"] = _calibration_summary(job.settings, measured.calibration)
    result = RunResult(frame, summary, folder, spectrum=spectrum,
                       singular_values=measured.singular_values)
    if folder is not None:
        _write(result)
    return result


def execute(cfg: Any, out_dir: Optional[str | Path] = None) -> RunResult:
    """The former name of :func:`run`."""
    return run(cfg, out_dir)


def _same_run(s: PropbenchConfig, folder: Path) -> bool:
    """A complete run of the same config in ``folder``, whatever ``resume``, ``trial_batch``
    and ``quiet`` say (how the run is done, not what it measures)."""
    done = completed_config(folder)
    how = {"resume": None, "trial_batch": None, "objective": None, "quiet": None}
    return done is not None and {**done, **how} == {**s.to_dict(), **how}


def _chunks(trials: int, at_once: int) -> Iterator[range]:
    for start in range(0, trials, at_once):
        yield range(start, min(start + at_once, trials))


def _track(model: torch.nn.Module, progress: Progress) -> None:
    """Hooks that tell ``progress`` which block each pass has reached (forward, then the
    gradient flowing back through the block's output); they go with the model."""
    for layer, block in enumerate(model.blocks, start=1):
        def forward(module: Any, args: Any, output: torch.Tensor, layer: int = layer) -> None:
            progress.layer("forward", layer)
            if output.requires_grad:
                output.register_hook(lambda grad: progress.layer("backward", layer))
        block.register_forward_hook(forward)


def _measure(job: Setup, progress: Optional[Progress] = None) -> _Measured:
    """Every trial's frame, ``at_once`` trials stacked into one network per pass (a single
    network is one trial), and the theory of the first trial's network; with
    ``spectrum=true`` each trial's Jacobian spectrum, taken before the stacking."""
    s, frames, theory = job.settings, [], None
    if s.model.name == "custom":
        return _Measured(_measure_custom(job), Theory(s.model.theory_gap()))
    spectra, values, calibration, spectrum_s = [], [], [], 0.0
    try:
        for trials in _chunks(s.trials, job.at_once):
            seeds = [trial_seeds(s.seed, t) for t in trials]
            models = [build_model(s, seed=seed.weights, input_seed=seed.inputs) for seed in seeds]
            if theory is None:  # it reads the layers' fans (LSUV: their weights)
                theory = Theory.of(s, models[0])
            inputs = [draw_inputs(s, models[0].input_shape, seed.inputs) for seed in seeds]
            if s.init.data_dependent:
                calibration += [model.calibration for model in models]
            if s.spectrum.enabled:
                started = time.perf_counter()
                for t, model, x, seed in zip(trials, models, inputs, seeds):
                    spectrum = _spectrum(s, model.to(job.device), x, seed.cotangent)
                    spectrum.frame.insert(0, "trial", t)
                    spectra.append(spectrum.frame)
                    values.append(spectrum.values.get(int(spectrum.frame["layer"].max())))
                spectrum_s += time.perf_counter() - started
            stacked = stack(models).to(job.device)
            del models  # the stacked copy holds their weights now
            if progress is not None:
                progress.chunk(trials)
                _track(stacked, progress)
            frame = probe_trials(stacked, inputs, seeds=[seed.cotangent for seed in seeds],
                                 pairs=s.correlation is not None, keep_grads=False)
            del stacked
            frame["trial"] += trials.start
            frames.append(frame)
    except torch.cuda.OutOfMemoryError:  # the class torch >= 2.5 also names torch.OutOfMemoryError
        raise PropbenchError(
            f"out of memory on {job.device} at depth={s.depth}, width={s.width}, "
            f"batch_size={s.batch_size}; lower one of them"
        ) from None
    finally:
        if progress is not None:
            progress.close()
    measured = _Measured(pd.concat(frames, ignore_index=True), theory, spectrum_s=spectrum_s)
    if spectra:
        measured.spectrum = pd.concat(spectra, ignore_index=True)
        if all(v is not None for v in values):
            measured.singular_values = np.concatenate(values)
    if calibration:
        measured.calibration = calibration
    return measured


def _spectrum(s: PropbenchConfig, model: Any, inputs: torch.Tensor, seed: int) -> Any:
    """The Jacobian spectrum of one trial's network at its first ``spectrum.examples``
    inputs (the estimator's probes drawn with the trial's cotangent stream)."""
    from propbench.spectrum import jacobian_spectrum

    return jacobian_spectrum(model, inputs[:s.spectrum.examples], layers=s.spectrum.layers,
                             method=s.spectrum.method.value, seed=seed % 2**62)


def _annotate_spectrum(spectrum: pd.DataFrame, s: PropbenchConfig, theory: Theory) -> pd.DataFrame:
    """The theory of each spectrum row (``theory``: var of lambda, ``theory_mean_sq``: its
    mean) and the config columns."""
    spectrum["theory"], spectrum["theory_mean_sq"] = theory.spectrum_columns(spectrum)
    return _add_config(spectrum, s, theory)


def _calibration_summary(s: PropbenchConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's ``lsuv`` block: per trial, the rescalings and the reached output
    variance of every Linear/Conv in forward order, and whether all are within ``tol``."""
    within = all(abs(v - 1) <= s.init.tol for r in records for v in r["variances"])
    return {"tol": s.init.tol, "max_iter": s.init.max_iter, "within_tol": within,
            "trials": records}


def custom_inputs(s: PropbenchConfig, seed: int) -> torch.Tensor:
    """``batch_size`` examples of ``input.shape``: standard normal, or (``input.kind=tokens``)
    integer ids uniform below ``input.vocab_size``."""
    if s.input.kind == InputKind.tokens:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, s.input.vocab_size, (s.batch_size, *s.input.shape),
                             generator=generator)
    return draw_inputs(s, tuple(s.input.shape), seed)  # correlation is refused for custom


def _measure_custom(job: Setup) -> pd.DataFrame:
    """``model=custom``: each trial's model built by its factory, probed by blocks; the
    probe's warnings and what it chose (the output, the blocks) go to the frame's attrs."""
    s, frames, notes = job.settings, [], {}
    blocks = {"auto": "auto", "none": False}.get(s.probe.blocks, s.probe.blocks)
    try:
        for t in range(s.trials):
            seed = trial_seeds(s.seed, t)
            model = build_model(s, seed=seed.weights).to(job.device)
            x = custom_inputs(s, seed.inputs).to(job.device)
            devices = [job.device] if job.device.type == "cuda" else []
            with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices):
                warnings.simplefilter("always", ProbeWarning)
                torch.manual_seed(seed.cotangent)  # dropout in train mode: reproducible masks
                frame = probe(model, x, blocks=blocks, output=s.probe.output,
                              sites=dict(s.probe.sites), backward_from=s.probe.backward_from,
                              seed=seed.cotangent, keep_grads=False)
            for warning in caught:
                if issubclass(warning.category, ProbeWarning):
                    notes.setdefault(str(warning.message), None)
                else:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                           warning.lineno)
            frame.insert(0, "trial", t)
            frames.append(frame)
            del model
    except torch.cuda.OutOfMemoryError:  # torch >= 2.5 also names it torch.OutOfMemoryError
        raise PropbenchError(f"out of memory on {job.device} at batch_size={s.batch_size}; "
                             "lower it or input.shape") from None
    out = pd.concat(frames, ignore_index=True)
    out.attrs = {**frames[0].attrs, "warnings": list(notes)}
    return out


def config_columns(s: PropbenchConfig) -> dict[str, Any]:
    """The config values every row of the frame carries (results.CONFIG_COLUMNS)."""
    values = {"model": s.model.name, "act": s.act.name, "init": s.init.name,
              "norm": s.model.norm.value, "dtype": s.dtype.value}
    if s.model.name == "custom":  # the factory's name; its layers, init and width are its own
        values.update(model=s.model._target_, act="own", init="own", norm="own", width=0)
    values.update({key: getattr(s, key) for key in CONFIG_COLUMNS if key not in values})
    return values


def _annotate(frame: pd.DataFrame, s: PropbenchConfig, theory: Theory) -> pd.DataFrame:
    """The theory column, the config columns, and the effective sigma_w^2 = fan_in Var(W)
    and sigma_b^2 = Var(b) of a middle layer."""
    frame["theory"] = theory.column(frame)
    _add_config(frame, s, theory)
    if s.model.name == "custom":  # depth: the blocks (or layers) found
        frame["depth"] = int(frame["layer"].max()) if len(frame) else 0
    return typed(frame)


def _add_config(frame: pd.DataFrame, s: PropbenchConfig, theory: Theory) -> pd.DataFrame:
    """``frame`` with the config columns on every row, and the effective sigma_w^2 and
    sigma_b^2 (NaN where the theory has none)."""
    for column, value in config_columns(s).items():
        frame[column] = value
    frame["sigma_w2"], frame["sigma_b2"] = theory.sigmas or (np.nan, np.nan)
    return frame


def _summary(frame: pd.DataFrame, job: Setup, theory: Theory, elapsed: float) -> dict[str, Any]:
    s = job.settings
    probed = {key: frame.attrs[key] for key in ("output", "blocks", "warnings") if key in frame.attrs}
    return {
        **summarize(frame),
        **({"probe": probed} if probed else {}),
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
    """The run folder: the previous attempt's files removed, then statistics, figure, and
    last the summary that marks them complete (with their attempt id and checksums)."""
    from propbench.plots import save_propagation

    attempt = start_attempt(result.folder)
    write_stats(result.folder, result.frame)
    save_propagation(result.frame, result.folder / FIGURE)
    if result.spectrum is not None:
        from propbench.plots import save_spectrum

        write_spectrum(result.folder, result.spectrum)
        save_spectrum(result.spectrum, result.folder / SPECTRUM_FIGURE, result.singular_values)
    write_summary(result.folder, result.summary, attempt)
