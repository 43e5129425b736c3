"""propbench: measure signal propagation through deep PyTorch networks at initialization.

The public API, loaded lazily so that ``import propbench`` (and the CLI's config checks)
do not pay for torch or matplotlib until they are used:

- :func:`compose` -- the config ``python -m propbench OVERRIDES`` would run;
  :func:`settings` -- it validated, as a :class:`PropbenchConfig`;
- :func:`build_model` -- the initialized network a config describes;
- :func:`probe` -- per-layer statistics of one forward+backward of any ``nn.Module``;
- :func:`stack`, :func:`probe_trials` -- T networks of one config as one, probed in one pass;
- :func:`run` -- a config's trials as a :class:`RunResult`: ``.frame``, the tidy frame, and
  ``.summary``, its verdicts and theory (optionally writing a run folder);
- :func:`load` -- the frame of a run or sweep folder; :func:`summarize` -- its verdict;
- :func:`run_sweep` -- a sweep from Python, as ``python -m propbench -m`` runs it;
  :func:`aggregate` -- a sweep folder's (or a folder of run folders') tables and figures
  (what ``propbench.report`` does); :func:`load_sweep` -- its table, one row per job;
- :func:`predict`, :func:`predict_residual`, :func:`depth_scales`, :func:`critical_sigma_w2`,
  :func:`auto_gain` -- the mean-field theory (:mod:`propbench.theory`);
- :func:`jacobian_spectrum` -- singular values of the input-output Jacobian at chosen layers
  of any ``nn.Module`` (exact, or estimated where that does not fit);
  :func:`spectrum_moments` -- their free-probability theory; :func:`load_spectrum` -- a run's
  ``spectrum.csv``; :func:`plot_spread`, :func:`plot_singular_values` -- their plots;
- :func:`plot_propagation`, :func:`plot_variance`, :func:`plot_correlation`,
  :func:`plot_sweep_grid`, :func:`plot_ratio_heatmap`, :func:`plot_phase_diagram`,
  :func:`plot_signal_propagation` -- the plots.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "compose": "propbench.config",
    "settings": "propbench.config",
    "PropbenchConfig": "propbench.config",
    "build_model": "propbench.models",
    "probe": "propbench.probes",
    "probe_trials": "propbench.probes",
    "stack": "propbench.stacked",
    "run": "propbench.runner",
    "RunResult": "propbench.runner",
    "load": "propbench.results",
    "summarize": "propbench.verdict",
    "jacobian_spectrum": "propbench.spectrum",
    "Spectrum": "propbench.spectrum",
    "load_spectrum": "propbench.results",
    "spectrum_moments": "propbench.theory",
    "plot_spread": "propbench.plots",
    "plot_singular_values": "propbench.plots",
    "predict": "propbench.theory",
    "predict_residual": "propbench.theory",
    "depth_scales": "propbench.theory",
    "critical_sigma_w2": "propbench.theory",
    "auto_gain": "propbench.theory",
    "plot_propagation": "propbench.plots",
    "plot_variance": "propbench.plots",
    "plot_correlation": "propbench.plots",
    "plot_sweep_grid": "propbench.plots",
    "plot_ratio_heatmap": "propbench.plots",
    "plot_phase_diagram": "propbench.plots",
    "plot_signal_propagation": "propbench.plots",
    "aggregate": "propbench.sweep",
    "run_sweep": "propbench.sweep",
    "load_sweep": "propbench.sweep",
}
__all__ = [*_API, "__version__"]

if TYPE_CHECKING:  # what editors and type checkers see; at run time __getattr__ loads them
    from propbench.config import PropbenchConfig, compose, settings
    from propbench.models import build_model
    from propbench.plots import (plot_correlation, plot_phase_diagram, plot_propagation,
                                 plot_ratio_heatmap, plot_signal_propagation,
                                 plot_singular_values, plot_spread, plot_sweep_grid,
                                 plot_variance)
    from propbench.probes import probe, probe_trials
    from propbench.results import load, load_spectrum
    from propbench.runner import RunResult, run
    from propbench.spectrum import Spectrum, jacobian_spectrum
    from propbench.stacked import stack
    from propbench.sweep import aggregate, load_sweep, run_sweep
    from propbench.theory import (auto_gain, critical_sigma_w2, depth_scales, predict,
                                  predict_residual, spectrum_moments)
    from propbench.verdict import summarize


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'propbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
