"""propbench: measure signal propagation through deep PyTorch networks at initialization.

The public API, loaded lazily so that ``import propbench`` (and the CLI's config checks)
do not pay for torch or matplotlib until they are used:

- :func:`compose` -- the config ``python -m propbench OVERRIDES`` would run;
- :func:`build_model` -- the initialized network a config describes;
- :func:`probe` -- per-layer statistics of one forward+backward of any ``nn.Module``;
- :func:`stack`, :func:`probe_trials` -- T networks of one config as one, probed in one pass;
- :func:`run` -- a config's trials as one tidy frame (optionally writing a run folder);
- :func:`load` -- the frame of a run folder; :func:`summarize` -- its verdict;
- :func:`aggregate` -- a sweep folder's tables and figures (what ``propbench.report`` does);
- :func:`plot_propagation`, :func:`plot_variance`, :func:`plot_sweep_grid`,
  :func:`plot_ratio_heatmap` -- the plots.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "compose": "propbench.config",
    "build_model": "propbench.models",
    "probe": "propbench.probes",
    "probe_trials": "propbench.probes",
    "stack": "propbench.stacked",
    "run": "propbench.runner",
    "load": "propbench.results",
    "summarize": "propbench.verdict",
    "plot_propagation": "propbench.plots",
    "plot_variance": "propbench.plots",
    "plot_sweep_grid": "propbench.plots",
    "plot_ratio_heatmap": "propbench.plots",
    "aggregate": "propbench.sweep",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'propbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
