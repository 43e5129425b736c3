"""Plots of a frame. Each function is pure: ``plot_x(frame, ax=None) -> Axes``; with no axes
given it makes a pyplot figure (so notebooks show it), otherwise it draws into yours.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from propbench.verdict import (SIGNALS, first_constant_layer, first_inf_variance_layer,
                               first_nonfinite_layer, first_zero_layer, layer_variance,
                               signal_site)

SITE_STYLE = {  # site -> (label, colour)
    "pre": ("pre-activation (Linear/Conv output)", "C0"),
    "norm": ("normalized (BatchNorm output)", "C2"),
    "post": ("post-activation", "C1"),
    "block": ("block output (the stream between blocks)", "C4"),
    "weight": ("weight", "C3"),
    "branch": ("residual branch (before alpha)", "C5"),
}
RESIDUAL_SITES = ("block", "branch")  # what a residual frame shows unless asked for more
# The backward signal is the gradient of L = <output, cotangent> (a standard-normal cotangent)
PANELS = {  # quantity -> (panel title, label prefix)
    "activation": ("Forward: activation variance", ""),
    "gradient": ("Backward: gradient variance", "\u2202L/\u2202 "),
}


MIN_DECADES = 2.0  # a log axis spans at least this much, so flat lines look flat


def format_axes(ax: Any, title: str, xlabel: str, ylabel: str, log_y: bool = True,
                legend: bool = True) -> Any:
    """The one formatting helper: title, labelled axes, log y (at least MIN_DECADES tall,
    so finite-width wiggles of a stable signal do not look like a trend, with ticks at
    evenly spaced decades), light grid, and the legend if anything is labelled, above the
    data: a log axis gets headroom for it, so it never covers a line."""
    # a fixed y: matplotlib otherwise measures every tick label to place the title (~0.1 s)
    ax.set_title(title, fontsize=11, y=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    handles, labels = ax.get_legend_handles_labels()
    legend = legend and bool(handles)
    if log_y:
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        if low > 0:
            low, high = _at_least_decades(low, high)
        place = "upper right"
        if legend and low > 0:  # the top third is the legend's: the data stay below it
            rows = -(-len(labels) // (2 if len(labels) > 3 else 1))
            span = np.log10(high) - np.log10(low)
            top = np.log10(high) + span * (0.12 * rows + 0.1)
            if top > np.log10(LOG_RANGE[1]):  # no room above float's range: the emptiest corner
                place = "best"
            high = 10 ** min(top, np.log10(LOG_RANGE[1]))
        set_log_limits(ax, low, high)
    from matplotlib.ticker import MaxNLocator

    if ax.get_xscale() == "linear":  # whole layers (a log axis keeps its own ticks)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        ax.legend(fontsize=8, loc=place if log_y else "best", ncol=2 if len(labels) > 3 else 1)
    return ax


LOG_RANGE = (1e-300, 1e300)  # ticks beyond these step out of float64


def _at_least_decades(low: float, high: float) -> tuple[float, float]:
    """(low, high), widened about its geometric centre to MIN_DECADES if narrower."""
    if np.log10(high) - np.log10(low) >= MIN_DECADES:
        return low, high
    centre = np.sqrt(low * high)
    return centre / 10 ** (MIN_DECADES / 2), centre * 10 ** (MIN_DECADES / 2)


def set_log_limits(ax: Any, low: float, high: float) -> None:
    """Log y limits with major ticks at every 1, 2, 5, 10, 20, 50 or 100 decades -- whichever
    gives at most 8 -- so the labels read 10^0, 10^-20, 10^-40, never 10^7, 10^-6, 10^-19."""
    from matplotlib.ticker import FixedLocator, LogLocator, NullLocator

    low, high = max(low, LOG_RANGE[0]), min(high, LOG_RANGE[1])
    if not (np.isfinite(low) and np.isfinite(high) and 0 < low < high):
        low, high = 0.1, 10.0
    ax.set_ylim(low, high)
    first, last = np.log10(low), np.log10(high)
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200) if (last - first) / s <= 8)
    decades = np.arange(np.ceil(first / step) * step, last + 1e-9, step)
    ax.yaxis.set_major_locator(FixedLocator(10.0 ** decades))
    # minor ticks at 2 and 5 when decades are labelled one by one, else at every decade
    # (eight per decade cost a quarter of the figure's time)
    if step == 1:
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    elif (last - first) <= 60:
        ax.yaxis.set_minor_locator(FixedLocator(10.0 ** np.arange(np.ceil(first), last + 1e-9)))
    else:
        ax.yaxis.set_minor_locator(NullLocator())
    from matplotlib.ticker import NullFormatter

    ax.yaxis.set_minor_formatter(NullFormatter())


def config_title(frame: pd.DataFrame) -> str:
    """'mlp · act=prelu · init=kaiming · depth 50 · width 256 · batch 256' from the
    frame's config columns (or a neutral title for a frame from ``probe`` alone)."""
    if "model" not in frame.columns:
        blocks = frame.attrs.get("blocks") if (frame["site"] == "block").any() else None
        return blocks or f"{frame['layer'].max()} layers"
    first = frame.iloc[0]
    if first["model"] not in ("mlp", "cnn"):  # model=custom: the factory's own layers
        trials = frame["trial"].nunique() if "trial" in frame.columns else 1
        unit = "block" if (frame["site"] == "block").any() else "layer"
        unit += "s" if first["depth"] != 1 else ""
        return " \u00b7 ".join([str(first["model"]), f"{first['depth']} {unit}",
                                f"batch {first['batch_size']}",
                                f"{trials} trial{'s' if trials > 1 else ''}"])
    parts = [str(first["model"]), f"act={first['act']}", f"init={first['init']}"]
    if first["init"] == "scaled" and "sigma_w2" in frame.columns:
        parts[-1] += f" (\u03c3w\u00b2={first['sigma_w2']:g}, \u03c3b\u00b2={first['sigma_b2']:g})"
    if first.get("norm", "none") != "none":
        parts.append(f"norm={first['norm']}")
    parts += [f"depth {first['depth']}", f"width {first['width']}", f"batch {first['batch_size']}"]
    trials = frame["trial"].nunique() if "trial" in frame.columns else 1
    parts.append(f"{trials} trial{'s' if trials > 1 else ''}")
    return " \u00b7 ".join(parts)


def _mark_range_exits(ax: Any, frame: pd.DataFrame, quantity: str) -> None:
    """Show where the signal left float range instead of letting the log axis drop it."""
    marks = (  # (the layer it starts at, colour, line style, width, label)
        (first_nonfinite_layer, "red", ":", 1.2, "inf/NaN from layer {}"),
        (first_inf_variance_layer, "red", "--", 1.0, "variance beyond float64 from layer {}"),
        (first_zero_layer, "grey", ":", 1.2, "underflow to 0 from layer {}"),
        (first_constant_layer, "grey", "-.", 1.2, "constant (variance 0) from layer {}"),
    )
    for find, color, style, width, label in marks:
        layer = find(frame, quantity)
        if layer is not None:
            ax.axvline(layer, color=color, ls=style, lw=width, label=label.format(layer))


def _per_layer(rows: pd.DataFrame) -> Any:
    """``var`` per layer: over a block's sublayers first (the mean), then across trials."""
    keys = ["trial", "layer"] if "trial" in rows.columns else ["layer"]
    return rows.groupby(keys)["var"].mean().groupby("layer")


def plot_variance(frame: pd.DataFrame, quantity: str = "activation", ax: Optional[Any] = None,
                  sites: Optional[Sequence[str]] = None) -> Any:
    """Variance against layer for one quantity, one line per site, on a log y axis.

    With several trials the line is the mean over trials and the band spans min..max.
    ``sites`` default to every site in the frame; for a frame with ``block`` rows (a
    residual network, or blocks found by :func:`propbench.probe`) to the stream and the
    branch (a branch's sublayers are averaged per block): a block holds many projections,
    whose mean would be no one tensor's variance.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    rows = frame[(frame["quantity"] == quantity) & (frame["layer"] >= 1)]
    present = set(rows["site"])
    default = RESIDUAL_SITES if "block" in present else SITE_STYLE
    sites = sites or [s for s in default if s in present]
    depth = int(rows["layer"].max()) if not rows.empty else 0
    marker = "o" if depth <= 30 else None
    several_trials = "trial" in rows.columns and rows["trial"].nunique() > 1
    drawn = theory_drawn = False
    title, prefix = PANELS[quantity]
    shown_values = []  # what the y range must hold (matplotlib's own autoscale overflows near 1e300)
    for site in sites:
        by_layer = _per_layer(rows[rows["site"] == site])
        stats = by_layer.agg(["mean", "min", "max"]).reset_index()
        # Zero or non-finite variances have no place on a log axis; they are marked instead.
        ok = np.isfinite(stats["mean"]) & (stats["mean"] > 0)
        drawn = drawn or bool(ok.any())
        label, colour = SITE_STYLE[site]
        ax.plot(stats["layer"][ok], stats["mean"][ok], color=colour, marker=marker,
                markersize=3, lw=1.5, label=prefix + label)
        shown_values.append(stats["mean"][ok].to_numpy())
        if several_trials:
            # arrays, not Series: matplotlib 3.7.0 cannot mask a pandas Series
            ax.fill_between(stats["layer"][ok].to_numpy(float), stats["min"][ok].to_numpy(float),
                            stats["max"][ok].to_numpy(float), color=colour, alpha=0.2, lw=0)
            band = stats[["min", "max"]][ok].to_numpy().ravel()
            shown_values.append(band[np.isfinite(band) & (band > 0)])
        if "theory" in rows.columns:  # beside the measurement: where it is on the axis too
            predicted = rows[rows["site"] == site].groupby("layer")["theory"].mean()
            shown = (np.isfinite(predicted.to_numpy()) & (predicted.to_numpy() > 0)
                     & ok.to_numpy())
            if shown.any():
                ax.plot(predicted.index[shown], predicted.to_numpy()[shown], color=colour,
                        ls="--", lw=1.2, alpha=0.9)
                shown_values.append(predicted.to_numpy()[shown])
                theory_drawn = True
    if theory_drawn:
        ax.plot([], [], color="grey", ls="--", lw=1.2, label="mean-field theory (dashed)")
    _mark_range_exits(ax, frame, quantity)
    if not drawn:
        ax.text(0.5, 0.5, "no finite, non-zero variance to show", transform=ax.transAxes,
                ha="center", va="center", color="grey")
        ax.set_ylim(0.1, 10)
    else:
        values = np.concatenate(shown_values)
        ax.set_ylim(max(values.min(), LOG_RANGE[0]) / 2, min(values.max(), LOG_RANGE[1]) * 2)
    set_layer_limits(ax, depth)
    return format_axes(ax, title, "layer (block index)", "variance (log scale)")


def set_layer_limits(ax: Any, depth: int) -> None:
    """x from layer 1 to ``depth``; half a layer of margin where each layer has a marker."""
    ax.set_xlim(0.5 if depth <= 30 else 0, depth + (0.5 if depth <= 30 else 0))


def plot_correlation(frame: pd.DataFrame, ax: Optional[Any] = None) -> Any:
    """The mean cosine similarity of input pairs per layer (``correlation`` rows), with the
    c-map prediction dashed; it tends to 1 in the ordered phase and to c* < 1 in the chaotic."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    rows = frame[(frame["quantity"] == "correlation") & (frame["layer"] >= 1)]
    for site in ("pre", "post"):
        by_layer = rows[rows["site"] == site].groupby("layer")
        if not len(by_layer):
            continue
        label, colour = SITE_STYLE[site]
        measured = by_layer["mean"].mean()
        ax.plot(measured.index, measured.to_numpy(), color=colour, lw=1.5, label=label,
                marker="o" if len(measured) <= 30 else None, markersize=3)
        if "theory" in rows.columns and by_layer["theory"].first().notna().any():
            predicted = by_layer["theory"].first()
            ax.plot(predicted.index, predicted.to_numpy(), color=colour, ls="--", lw=1.2,
                    label="c-map (mean-field theory)")
    ax.set_ylim(min(-0.05, float(rows["mean"].min()) - 0.05) if len(rows) else -0.05, 1.05)
    set_layer_limits(ax, int(rows["layer"].max()) if len(rows) else 1)
    return format_axes(ax, "Correlation of input pairs", "layer (block index)",
                       "mean cosine similarity", log_y=False)


def plot_token_similarity(frame: pd.DataFrame, ax: Optional[Any] = None) -> Any:
    """The mean cosine similarity between the tokens of a sequence per block
    (``token_similarity`` rows): 1 means every token is the same vector (rank collapse,
    Dong et al. 2021). With several trials the line is their mean, the band min..max."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    rows = frame[(frame["quantity"] == "token_similarity") & (frame["layer"] >= 1)]
    keys = ["trial", "layer"] if "trial" in rows.columns else ["layer"]
    stats = rows.groupby(keys)["mean"].mean().groupby("layer").agg(["mean", "min", "max"])
    label, colour = SITE_STYLE["block"]
    ax.plot(stats.index, stats["mean"], color=colour, lw=1.5, label=label,
            marker="o" if len(stats) <= 30 else None, markersize=3)
    if "trial" in rows.columns and rows["trial"].nunique() > 1:
        ax.fill_between(stats.index.to_numpy(float), stats["min"].to_numpy(float),
                        stats["max"].to_numpy(float), color=colour, alpha=0.2, lw=0)
    ax.axhline(1.0, color="grey", ls=":", lw=1.0, label="collapsed (all tokens equal)")
    low = float(stats["min"].min()) if len(stats) else 0.0
    ax.set_ylim(min(-0.05, low - 0.05), 1.05)
    return format_axes(ax, "Token similarity (rank collapse)", "layer (block index)",
                       "mean cosine similarity of tokens", log_y=False)


def _extra_panels(frame: pd.DataFrame) -> list[Any]:
    """The panels after the two variance panels that this frame has data for."""
    quantities = set(frame["quantity"])
    return [plot for quantity, plot in (("correlation", plot_correlation),
                                        ("token_similarity", plot_token_similarity))
            if quantity in quantities]


def plot_propagation(frame: pd.DataFrame, axes: Optional[Sequence[Any]] = None) -> Sequence[Any]:
    """Activations (forward) and gradients (backward), then the correlation of input pairs
    and the token similarity when the frame has them, titled with the config."""
    extra = _extra_panels(frame)
    if axes is None:
        import matplotlib.pyplot as plt

        panels = 2 + len(extra)
        _, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), layout="constrained")
    for ax, quantity in zip(axes, PANELS):
        plot_variance(frame, quantity, ax=ax)
    for ax, plot in zip(axes[2:], extra):
        plot(frame, ax=ax)
    axes[0].figure.suptitle(config_title(frame), fontsize=12)
    return axes


def _save(figure: Any, path: Any, dpi: int) -> None:
    from pathlib import Path

    from propbench.results import atomic_write

    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))


def propagation_figure(frame: pd.DataFrame) -> Any:
    """:func:`plot_propagation` on a new matplotlib Figure (no pyplot)."""
    from matplotlib.figure import Figure

    panels = 2 + len(_extra_panels(frame))
    figure = Figure(figsize=(6 * panels, 4.5))
    # fixed margins: the layout is always the same, and a layout engine costs ~0.25 s a figure
    figure.subplots_adjust(left=0.07 / panels * 2, right=0.975, bottom=0.11, top=0.86,
                           wspace=0.22)
    plot_propagation(frame, figure.subplots(1, panels))
    return figure


def save_propagation(frame: pd.DataFrame, path: Any) -> None:
    """Render :func:`plot_propagation` to ``path`` (atomically, without pyplot)."""
    _save(propagation_figure(frame), path, dpi=110)


# --- sweeps -----------------------------------------------------------------------------

SIGNAL_LABELS = {"activation": "post-activation variance",
                 "gradient": "variance of \u2202L/\u2202(pre-activation)"}
STREAM_LABELS = {"activation": "stream (block output) variance",
                 "gradient": "variance of \u2202L/\u2202(stream)"}


def signal_label(frame: pd.DataFrame, quantity: str) -> str:
    return (STREAM_LABELS if signal_site(frame, quantity) == "block" else SIGNAL_LABELS)[quantity]


def _label(keys: Sequence[str], values: Any) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{k.removeprefix('model.')}={v}" for k, v in zip(keys, values))


def _signal_lines(rows: pd.DataFrame, quantity: str) -> tuple[pd.Series, Optional[pd.Series]]:
    """The measured variance per layer (mean over trials) of one job's signal, and the
    theory's where it has one (the stream's for a frame with block rows)."""
    site = signal_site(rows, quantity)
    var = layer_variance(rows, quantity, site)
    predicted = None
    if "theory" in rows.columns:
        chosen = rows[(rows["quantity"] == quantity) & (rows["site"] == site) & (rows["layer"] >= 1)]
        predicted = chosen.groupby("layer")["theory"].first()
        if not predicted.notna().any():
            predicted = None
    return var, predicted


def _positive(values: pd.Series) -> np.ndarray:
    array = values.to_numpy(dtype=float)
    return np.isfinite(array) & (array > 0)


def legend_columns(names: Sequence[str]) -> int:
    """Columns of the grid's legend below a 12-inch figure: as many as fit its longest name."""
    return max(1, min(len(names), 4, 120 // (max(len(n) for n in names) + 8)))


def plot_sweep_grid(frame: pd.DataFrame, line_by: Sequence[str] = ("init",),
                    axes: Optional[Any] = None, row_by: Optional[str] = None) -> Any:
    """Forward (left) and backward (right) variance against layer of a sweep's jobs (one
    depth), one line per value of ``line_by`` (mean over trials), the mean-field theory
    dashed in the line's colour, a cross where a signal left float range (overflow to
    inf/NaN, or underflow to 0). All lines overlay in one row of panels; with ``row_by``
    (e.g. ``"act"``) each of its values gets a row. The rows of a column share their y range,
    so they compare at a glance. One legend for the figure, below the panels."""
    row_values = list(dict.fromkeys(frame[row_by])) if row_by else [None]
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(len(row_values), 2, figsize=(12, 3.4 * len(row_values) + 1.2),
                               squeeze=False, layout="constrained")
    axes = np.asarray(axes).reshape(len(row_values), 2)
    labels = [_label(line_by, v) for v in
              frame[list(line_by)].drop_duplicates().sort_values(list(line_by)).itertuples(index=False)]
    palette = "tab10" if len(labels) <= 10 else "tab20"
    from matplotlib import colormaps

    colours = {label: colormaps[palette](i % 20) for i, label in enumerate(labels)}
    depth = int(frame["layer"].max())
    marker = "o" if depth <= 30 else None
    extent = {quantity: [np.inf, -np.inf] for quantity in PANELS}
    exits = theory_drawn = False
    for row, row_value in zip(axes, row_values):
        rows = frame if row_by is None else frame[frame[row_by] == row_value]
        for ax, quantity in zip(row, PANELS):
            for values, group in rows.groupby(list(line_by), sort=True, observed=True):
                label = _label(line_by, values)
                var, predicted = _signal_lines(group, quantity)
                ok = _positive(var)
                ax.plot(var.index[ok], var.to_numpy()[ok], lw=1.5, color=colours[label],
                        marker=marker, markersize=3, label=label)
                shown = [var.to_numpy()[ok]]
                if predicted is not None:
                    good = _positive(predicted)
                    ax.plot(predicted.index[good], predicted.to_numpy()[good], lw=1.1, ls="--",
                            color=colours[label], alpha=0.8)
                    shown.append(predicted.to_numpy()[good])
                    theory_drawn = theory_drawn or bool(good.any())
                if not ok.all() and ok.any():  # it left float range: mark the last value
                    last = int(np.nonzero(ok)[0][-1 if SIGNALS[quantity][1] else 0])
                    ax.plot(var.index[last], var.iloc[last], "x", color=colours[label],
                            markersize=9, mew=2)
                    exits = True
                values_shown = np.concatenate(shown)
                if values_shown.size:
                    extent[quantity][0] = min(extent[quantity][0], values_shown.min())
                    extent[quantity][1] = max(extent[quantity][1], values_shown.max())
            where = f"act={row_value}: " if row_by == "act" else (
                f"{row_by}={row_value}: " if row_by else "")
            ax.set_ylim(0.1, 10)  # for now (matplotlib's autoscale overflows near 1e300)
            format_axes(ax, where + signal_label(rows, quantity), "layer (block index)",
                        "variance (log scale)", legend=False)
            set_layer_limits(ax, depth)
    for column, quantity in enumerate(PANELS):  # one y range per column
        low, high = extent[quantity]
        if np.isfinite(low) and np.isfinite(high):
            low, high = _at_least_decades(max(low, LOG_RANGE[0]) / 3, min(high, LOG_RANGE[1]) * 3)
        else:
            for ax in axes[:, column]:
                ax.text(0.5, 0.5, "no finite, non-zero variance to show", color="grey",
                        transform=ax.transAxes, ha="center", va="center")
            low, high = 0.1, 10.0
        for ax in axes[:, column]:
            set_log_limits(ax, low, high)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[label], lw=1.5) for label in labels]
    names = list(labels)
    if theory_drawn:
        handles.append(Line2D([], [], color="grey", ls="--", lw=1.1))
        names.append("mean-field theory (dashed)")
    if exits:
        handles.append(Line2D([], [], ls="", marker="x", color="grey", markersize=9, mew=2))
        names.append("last value before the signal left float range")
    axes[0, 0].figure.legend(handles, names, loc="outside lower center", fontsize=9,
                             ncol=legend_columns(names), frameon=False)
    return axes


SPP_PANELS = (  # (site, column, title, y label): Brock et al. 2021's signal propagation plots
    ("block", "channel_mean_sq", "stream: average squared channel mean", "squared channel mean"),
    ("block", "channel_var", "stream: average channel variance", "channel variance"),
    ("branch", "channel_var", "residual branch: average channel variance", "channel variance"),
)


def plot_signal_propagation(frame: pd.DataFrame, line_by: Sequence[str] = (),
                            axes: Optional[Sequence[Any]] = None) -> Sequence[Any]:
    """Signal propagation plots of a residual CNN (Brock et al. 2021, "Characterizing
    signal propagation to close the performance gap in unnormalized ResNets", fig. 1): per
    block, the stream's average squared channel mean and average channel variance, and the
    residual branch's average channel variance (``block`` and ``branch`` activation rows,
    mean over trials); one line per value of ``line_by`` (none: one line)."""
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    rows = frame[(frame["quantity"] == "activation") & frame["site"].isin(["block", "branch"])]
    groups = rows.groupby(list(line_by), sort=True, observed=True) if line_by else [((), rows)]
    for values, group in groups:
        for ax, (site, column, _, _) in zip(axes, SPP_PANELS):
            by_block = group[group["site"] == site].groupby("layer")[column].mean()
            ok = np.isfinite(by_block.to_numpy()) & (by_block.to_numpy() > 0)
            ax.plot(by_block.index[ok], by_block.to_numpy()[ok], lw=1.5, marker="o",
                    markersize=2.5, label=_label(line_by, values) if line_by else None)
    for ax, (_, _, title, ylabel) in zip(axes, SPP_PANELS):
        format_axes(ax, title, "block", f"{ylabel} (log scale)")
    return axes


MAX_LINES = 12  # a figure with more labelled lines than this is not drawn


def plot_token_bars(table: pd.DataFrame, label_by: Sequence[str], ax: Optional[Any] = None) -> Any:
    """A sweep's token similarity at the last block, one horizontal bar per job labelled by
    ``label_by`` (the table's ``token_similarity`` column); 1 = collapsed."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 1.2 + 0.25 * len(table)), layout="constrained")
    rows = table.sort_values(list(label_by))
    labels = [_label(label_by, tuple(v)) for v in rows[list(label_by)].itertuples(index=False)]
    values = rows["token_similarity"].to_numpy(dtype=float)
    ax.barh(np.arange(len(values)), values, color="C4")
    for y, value in enumerate(values):
        ax.text(max(value, 0) + 0.01, y, f"{value:.2f}", va="center", fontsize=7)
    ax.set_yticks(np.arange(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(min(0.0, float(np.nanmin(values)) - 0.05) if len(values) else 0.0, 1.12)
    ax.axvline(1.0, color="grey", ls=":", lw=1.0)
    return format_axes(ax, "at the last block (1 = collapsed)",
                       "mean cosine similarity of tokens", "", log_y=False)


def plot_weight_gradients(frame: pd.DataFrame, line_by: Sequence[str], ax: Optional[Any] = None) -> Any:
    """The weight gradients' variance per block (the mean over a block's weights and over
    trials), one line per value of ``line_by``: where a transformer's gradients sit (Xiong
    et al. 2020: the last blocks for post-LN, the first for pre-LN)."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    rows = frame[(frame["quantity"] == "gradient") & (frame["site"] == "weight")]
    for values, group in rows.groupby(list(line_by), sort=True, observed=True):
        keys = ["trial", "layer"] if "trial" in group.columns else ["layer"]
        var = group.groupby(keys)["var"].mean().groupby("layer").mean()
        ok = np.isfinite(var.to_numpy()) & (var.to_numpy() > 0)
        ax.plot(var.index[ok], var.to_numpy()[ok], lw=1.5, marker="o", markersize=2.5,
                label=_label(line_by, values))
    return format_axes(ax, "\u2202/\u2202 weights: variance per block", "layer (block index)",
                       "variance (log scale)")


def ratio_bound(values: Any) -> float:
    """The colour scale of log10 ratios: the largest finite |value|, at least 2."""
    finite = np.abs(np.asarray(values, dtype=float))
    finite = finite[np.isfinite(finite)]
    return max(2.0, float(finite.max()) if finite.size else 2.0)


def _ratio_norm(bound: float) -> Any:
    """Linear inside the stable band |log10 r| <= 1, logarithmic beyond, so that 1.5 and 29
    both read as "not stable" on one scale."""
    from matplotlib.colors import SymLogNorm

    return SymLogNorm(linthresh=1.0, linscale=1.0, vmin=-bound, vmax=bound, base=10)


def _ratio_colorbar(ax: Any, mappable: Any, bound: float, label: str) -> None:
    bar = ax.figure.colorbar(mappable, ax=ax, label=label)
    bar.set_ticks([t for t in (-100, -30, -10, -3, -1, 0, 1, 3, 10, 30, 100) if abs(t) <= bound])
    bar.ax.yaxis.set_major_formatter(lambda value, _: f"{value:+g}" if value else "0")


def plot_ratio_heatmap(table: pd.DataFrame, quantity: str = "activation",
                       row_by: Sequence[str] = ("init",), column: Optional[str] = "act",
                       ax: Optional[Any] = None, bound: Optional[float] = None) -> Any:
    """``log10_ratio`` per job (``table``: a sweep's sweep_summary) over ``row_by`` x
    ``column``, with a diverging colour map centred on 0 (white: preserved end to end) and
    the numbers in the cells. With ``column=None`` the columns are the two quantities.
    ``bound`` fixes the colour scale (default: the largest finite |log10_ratio|, at least 2).
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    rows = table.assign(_row=[_label(row_by, tuple(r))
                              for r in table[list(row_by)].itertuples(index=False)])
    if column is None:
        grid = rows.groupby("_row", sort=False)[[f"{q}_log10_ratio" for q in PANELS]].first()
        verdicts = rows.groupby("_row", sort=False)[[f"{q}_verdict" for q in PANELS]].first()
        labels = list(PANELS)
    else:
        keyed = rows.groupby(["_row", column], sort=False, observed=True)
        grid = keyed[f"{quantity}_log10_ratio"].first().unstack(column)
        verdicts = keyed[f"{quantity}_verdict"].first().unstack(column)
        labels = [f"{column}={c}" for c in grid.columns]
    data = grid.to_numpy(dtype=float)
    bound = ratio_bound(data) if bound is None else bound
    overflowed = np.isnan(data) & (verdicts.to_numpy() == "exploding")
    norm = _ratio_norm(bound)
    image = ax.imshow(np.clip(np.where(overflowed, bound, data), -bound, bound), cmap="RdBu_r",
                      norm=norm, aspect="auto")
    for (i, j), value in np.ndenumerate(data):
        verdict = verdicts.iat[i, j]
        if not isinstance(verdict, str) or not verdict:
            continue
        text = ("inf/NaN" if np.isnan(value) else "\u2212\u221e" if value == -np.inf
                else f"{value:+.1f}")
        strong = not np.isfinite(value) or abs(norm(value) - 0.5) > 0.3
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="white" if strong else "black")
    ax.set_xticks(range(len(labels)), labels=labels, rotation=30 if column else 0,
                  ha="right" if column else "center")
    ax.set_yticks(range(grid.shape[0]), labels=list(grid.index))
    _ratio_colorbar(ax, image, bound, "log10 ratio (0: preserved)")
    ax.set_title("log10 ratio of the end-to-end variance" if column is None else
                 f"{quantity}: {SIGNAL_LABELS[quantity]}, end to end", fontsize=10)
    return ax


PHASE_KEYS = ("init.sigma_w2", "init.sigma_b2")


def plot_phase_diagram(table: pd.DataFrame, act: str, quantity: str = "gradient",
                       ax: Optional[Any] = None, slope: Optional[float] = None) -> Any:
    """``log10_ratio`` over (sigma_w^2, sigma_b^2) of an ``init=scaled`` sweep, with the
    mean-field critical line chi_1 = 1 (:func:`propbench.theory.critical_sigma_w2`) drawn
    over it: ordered (vanishing) to its left, chaotic (exploding) to its right -- the
    order-to-chaos diagram of Poole et al. 2016 and Schoenholz et al. 2017."""
    from propbench.theory import critical_sigma_w2

    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    x_key, y_key = PHASE_KEYS
    grid = (table.assign(_x=table[x_key].astype(float), _y=table[y_key].astype(float))
            .pivot_table(index="_y", columns="_x", values=f"{quantity}_log10_ratio", aggfunc="first"))
    xs, ys, data = grid.columns.to_numpy(float), grid.index.to_numpy(float), grid.to_numpy(float)

    def edges(values: np.ndarray) -> np.ndarray:
        mids = (values[1:] + values[:-1]) / 2
        first = values[0] - (mids[0] - values[0]) if len(values) > 1 else values[0] - 0.5
        last = values[-1] + (values[-1] - mids[-1]) if len(values) > 1 else values[0] + 0.5
        return np.concatenate([[first], mids, [last]])

    bound = ratio_bound(data)
    shown = np.clip(np.nan_to_num(data, nan=bound, posinf=bound, neginf=-bound), -bound, bound)
    mesh = ax.pcolormesh(edges(xs), edges(ys), shown, cmap="RdBu_r",
                         norm=_ratio_norm(bound))
    for (i, j), value in np.ndenumerate(data):
        text = "inf/NaN" if np.isnan(value) else f"{value:+.1f}" if np.isfinite(value) else "\u2212\u221e"
        ax.text(xs[j], ys[i], text, ha="center", va="center", fontsize=7,
                color="white" if not np.isfinite(value) or abs(value) > 3 else "black")
    sigma_b2 = np.linspace(ys.min(), ys.max(), 40)
    critical = [critical_sigma_w2(act, b, slope) for b in sigma_b2]
    ax.plot(critical, sigma_b2, color="black", lw=2, label="theory: \u03c7\u2081 = 1 (edge of chaos)")
    _ratio_colorbar(ax, mesh, bound, "log10 ratio (0: preserved)")
    ax.set_xlim(edges(xs)[0], edges(xs)[-1])
    ax.set_ylim(edges(ys)[0], edges(ys)[-1])
    ax.set_xlabel("\u03c3w\u00b2 (weight variance \u00d7 fan_in)")
    ax.set_ylabel("\u03c3b\u00b2 (bias variance)")
    ax.set_title(f"act={act}: {SIGNAL_LABELS[quantity]}, end to end", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return ax


def _trials_text(frame: pd.DataFrame, what: str = "lines") -> str:
    counts = frame.groupby("job")["trial"].nunique() if "job" in frame else [frame["trial"].nunique()]
    low, high = int(min(counts)), int(max(counts))
    n = f"{low}" if low == high else f"{low}-{high}"
    return f"{what}: mean over {n} trial{'s' if high > 1 else ''}"


def _width_text(width: int, depth: int, config: Optional[dict[str, Any]]) -> str:
    """'width 256', or for a CNN whose channels grow, 'channels 8 to 256'."""
    model = (config or {}).get("model") or {}
    growth, every = model.get("channel_growth", 1), model.get("stage_every", 0)
    if model.get("name") == "cnn" and growth != 1 and every:
        return f"channels {width} to {int(width * growth ** ((depth - 1) // every))}"
    return f"width {width}"


def save_sweep_figures(frame: pd.DataFrame, table: pd.DataFrame, folder: Any,
                       swept: Sequence[str] = (), config: Optional[dict[str, Any]] = None
                       ) -> list[Any]:
    """The :func:`sweep_figures`, written into the sweep folder; their paths."""
    from pathlib import Path

    paths = []
    for name, figure in sweep_figures(frame, table, swept, config).items():
        paths.append(Path(folder) / name)
        _save(figure, paths[-1], dpi=100)
    return paths


def sweep_figures(frame: pd.DataFrame, table: pd.DataFrame, swept: Sequence[str] = (),
                  config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """File name -> matplotlib Figure (no pyplot): one grid and one heatmap per depth, or one
    phase diagram per depth for a (sigma_w2, sigma_b2) plane.

    Lines and heatmap rows are labelled by the overridden keys that vary (``swept``) other
    than act and depth, or by the init if none does; when those do not already tell the
    activation apart, the grid has a row per activation. ``config``: one job's config
    (its summary's), for what the frame's columns do not say (a CNN's channel growth)."""
    from matplotlib.figure import Figure

    jobs = frame.groupby("job")[["act", "init", "depth"]].first()
    spp = ((frame["site"] == "block") & np.isfinite(frame["channel_var"])).any()
    table = table[table["status"] == "ok"].drop(columns=["act", "init", "depth"], errors="ignore")
    table = table.join(jobs, on="job")
    line_by = [k for k in swept if k not in ("act", "depth")] or ["init"]
    phase = all(k in swept for k in PHASE_KEYS) and table["act"].nunique() == 1
    figures = {}
    for depth, rows in frame.groupby("depth"):
        first = rows.iloc[0]
        size = f"depth {depth} \u00b7 {_width_text(int(first['width']), int(depth), config)}"
        if phase:  # a (sigma_w2, sigma_b2) plane: one phase diagram per quantity
            figure = Figure(figsize=(13, 5.2), layout="constrained")
            for ax, quantity in zip(figure.subplots(1, 2), PANELS):
                plot_phase_diagram(table[table["depth"] == depth], first["act"], quantity, ax)
            figure.suptitle(f"{first['model']} \u00b7 act={first['act']} \u00b7 init=scaled "
                            f"\u00b7 {size} \u00b7 {_trials_text(rows, 'variances')}")
            figures[f"phase_depth{depth}.png"] = figure
            continue
        jobs_here = table[table["depth"] == depth]
        act_per_line = jobs_here.groupby(line_by, observed=True)["act"].nunique().max() == 1
        row_by = None if act_per_line or jobs_here["act"].nunique() == 1 else "act"
        n_rows = rows["act"].nunique() if row_by else 1
        n_lines = len(jobs_here[line_by].drop_duplicates())
        names = [_label(line_by, v) for v in jobs_here[line_by].drop_duplicates().itertuples(index=False)]
        legend_rows = -(-(len(names) + 2) // legend_columns(names + ["mean-field theory (dashed)"]))
        grid = Figure(figsize=(12, 3.6 * n_rows + 1.0 + 0.25 * legend_rows), layout="constrained")
        plot_sweep_grid(rows, line_by, grid.subplots(n_rows, 2, squeeze=False), row_by=row_by)
        grid.suptitle(f"{first['model']} \u00b7 {size} \u00b7 batch {first['batch_size']} "
                      f"\u00b7 {_trials_text(rows)}")
        figures[f"grid_depth{depth}.png"] = grid
        if spp:  # a residual CNN: its signal propagation plots, one line per job's label
            figure = Figure(figsize=(15, 4.4), layout="constrained")
            plot_signal_propagation(rows, line_by, figure.subplots(1, 3))
            norms = rows["norm"].unique()
            norm = f" \u00b7 norm={norms[0]}" if len(norms) == 1 else ""
            figure.suptitle(f"{first['model']}{norm} \u00b7 {size} \u00b7 batch "
                            f"{first['batch_size']} \u00b7 signal propagation plots, "
                            f"{_trials_text(rows)}")
            figures[f"spp_depth{depth}.png"] = figure

        transformer = "token_similarity" in jobs_here and jobs_here["token_similarity"].notna().any()
        if transformer:
            bars = Figure(figsize=(9, 1.4 + 0.22 * len(jobs_here)), layout="constrained")
            plot_token_bars(jobs_here, line_by, bars.subplots())
            bars.suptitle(f"Token similarity \u00b7 {first['model']} \u00b7 {size} \u00b7 batch "
                          f"{first['batch_size']}")
            figures[f"tokens_depth{depth}.png"] = bars
        if transformer and rows.groupby(line_by, observed=True).ngroups <= MAX_LINES:
            figure = Figure(figsize=(8, 5), layout="constrained")
            plot_weight_gradients(rows, line_by, figure.subplots())
            figure.suptitle(f"{first['model']} \u00b7 {size} \u00b7 batch {first['batch_size']} "
                            f"\u00b7 {_trials_text(rows)}")
            figures[f"weight_gradients_depth{depth}.png"] = figure
        bound = ratio_bound(jobs_here[[f"{q}_log10_ratio" for q in PANELS]])
        if row_by is None:
            heat = Figure(figsize=(7, 2.4 + 0.4 * n_lines), layout="constrained")
            plot_ratio_heatmap(jobs_here, row_by=line_by, column=None, ax=heat.subplots(),
                               bound=bound)
        else:
            heat = Figure(figsize=(12, 2.8 + 0.45 * n_lines), layout="constrained")
            for ax, quantity in zip(heat.subplots(1, 2), PANELS):
                plot_ratio_heatmap(jobs_here, quantity, line_by, ax=ax, bound=bound)
        heat.suptitle(f"{first['model']} \u00b7 {size} \u00b7 {_trials_text(rows, 'variances')}")
        figures[f"heatmap_depth{depth}.png"] = heat
    return figures


# --- Jacobian spectra (spectrum.csv) -------------------------------------------------------

# a measured spread below this is round-off of an exact isometry (float32: ~1e-12); it is
# named, not drawn, so that it does not squash the other lines
SPREAD_FLOOR = 1e-3


def _spread(rows: pd.DataFrame) -> pd.DataFrame:
    """Per layer: the normalized spread var(lambda) / mean(lambda)^2 of each (trial,
    example), its mean, min and max, and the theory's."""
    spread = rows.assign(_spread=rows["var_sq"] / rows["mean_sq"] ** 2)
    stats = spread.groupby("layer")["_spread"].agg(["mean", "min", "max"])
    if "theory" in rows.columns:
        theory = rows.groupby("layer")[["theory", "theory_mean_sq"]].first()
        stats["theory"] = theory["theory"] / theory["theory_mean_sq"] ** 2
    return stats.reset_index()


def plot_spread(frame: pd.DataFrame, ax: Optional[Any] = None,
                line_by: Sequence[str] = ()) -> Any:
    """The spread of lambda = s^2, var(lambda) / mean(lambda)^2, against the layer on log
    axes (mean over trials and examples, band min..max), the free-probability theory dashed
    in the same colour; one line per value of ``line_by`` (a sweep's keys) or one line."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    groups = frame.groupby(list(line_by), sort=True, observed=True) if line_by else [((), frame)]
    theory_drawn, zero_theory, tiny, drawn = False, [], [], False
    for i, (values, rows) in enumerate(groups):
        colour = f"C{i % 10}"
        stats = _spread(rows)
        ok = np.isfinite(stats["mean"]) & (stats["mean"] > 0)
        label = _label(line_by, values) if line_by else "measured"
        if ok.any() and stats["mean"][ok].max() < SPREAD_FLOOR:
            tiny.append(f"{label} (at most {stats['mean'][ok].max():.1g})")
            ok[:] = False
        if not ok.any():
            ax.plot([], [], color=colour, marker="o", markersize=3, lw=1.5, label=label)
        else:
            drawn = True
            ax.plot(stats["layer"][ok], stats["mean"][ok], color=colour, marker="o",
                    markersize=3, lw=1.5, label=label)
            ax.fill_between(stats["layer"][ok].to_numpy(float),
                            stats["min"][ok].clip(lower=1e-300).to_numpy(float),
                            stats["max"][ok].to_numpy(float), color=colour, alpha=0.2, lw=0)
        if "theory" in stats.columns and stats["theory"].notna().any():
            shown = np.isfinite(stats["theory"]) & (stats["theory"] > 0)
            ax.plot(stats["layer"][shown], stats["theory"][shown], color=colour, ls="--", lw=1.2)
            theory_drawn = theory_drawn or bool(shown.any())
            if (stats["theory"] == 0).all():
                zero_theory.append(label)
    if theory_drawn:
        ax.plot([], [], color="grey", ls="--", lw=1.2, label="free-probability theory (dashed)")
    notes = []
    if tiny:
        notes.append(f"below {SPREAD_FLOOR:g}, not drawn: " + "; ".join(tiny))
    if zero_theory:
        notes.append("theory 0 (isometry): " + "; ".join(zero_theory))
    if notes:  # under the axes, where no line runs
        ax.annotate("\n".join(notes), xy=(0, 0), xycoords="axes fraction", xytext=(0, -30),
                    textcoords="offset points", fontsize=7, color="grey", va="top")
    if not drawn and not theory_drawn:  # an exact isometry: nothing above the floor
        ax.set_ylim(SPREAD_FLOOR / 10, 10)
        layers = frame["layer"]
        ax.set_xlim(layers.min() / 1.2, layers.max() * 1.2)
    ax.set_xscale("log", base=2)  # the layers 1, 2, 4, ...: a tick at each power of two
    from matplotlib.ticker import FuncFormatter, NullLocator

    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    return format_axes(ax, "Spread of \u03bb = s\u00b2 (singular values of the input-output Jacobian)",
                       "layer (block index, log scale)", "var(\u03bb) / mean(\u03bb)\u00b2 (log scale)")


def plot_singular_values(values: np.ndarray, ax: Optional[Any] = None,
                         layer: Optional[int] = None,
                         theory_mean_sq: Optional[float] = None) -> Any:
    """The distribution of the singular values ``values`` (any shape, e.g. trials*examples x
    k): the fraction in each of 60 bins even on a log s axis; dashed, the theory's
    root-mean-square singular value sqrt(mean lambda)."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    s = np.asarray(values, dtype=float).ravel()
    s = s[np.isfinite(s)]
    # below 1e-7 of the largest a singular value is zero to float32's resolution (a dead
    # ReLU unit makes exact zeros, which an SVD returns as 1e-120 or so)
    zero = s <= 1e-7 * s.max() if len(s) else np.zeros(0, bool)
    shown = s[~zero]
    if len(shown):
        low, high = shown.min(), shown.max()
        if high / low < 1.2:  # an isometric spectrum: a window of +-10% around it
            low, high = min(low, 0.9 * np.sqrt(low * high)), max(high, 1.1 * np.sqrt(low * high))
        bins = np.geomspace(low, high, 60)
        label = f"measured ({len(s)} singular values"
        label += f", {int(zero.sum())} below 1e-7 of the largest not shown)" if zero.any() else ")"
        ax.hist(shown, bins=bins, weights=np.full(len(shown), 1 / len(s)), color="C0",
                alpha=0.7, label=label)
        ax.set_xscale("log")
        ax.axvline(np.sqrt(np.mean(s**2)), color="C0", lw=1.2, label="measured rms")
    if theory_mean_sq is not None and np.isfinite(theory_mean_sq) and theory_mean_sq > 0:
        ax.axvline(np.sqrt(theory_mean_sq), color="black", ls="--", lw=1.2,
                   label="theory rms = sqrt(mean \u03bb)")
    where = f" at layer {layer}" if layer is not None else ""
    return format_axes(ax, f"Singular values{where}", "singular value s (log scale)",
                       "fraction of singular values per bin", log_y=False)


def save_spectrum(frame: pd.DataFrame, path: Any, values: Optional[np.ndarray] = None) -> None:
    """spectrum.png: the spread against depth and, where the singular values are known
    (exact method), their density at the deepest layer."""
    from matplotlib.figure import Figure

    panels = 2 if values is not None else 1
    figure = Figure(figsize=(6.5 * panels, 4.8), layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    plot_spread(frame, axes[0])
    if values is not None:
        last = int(frame["layer"].max())
        theory = frame.loc[frame["layer"] == last, "theory_mean_sq"] if "theory_mean_sq" in frame else None
        plot_singular_values(values, axes[1], last,
                             None if theory is None else float(theory.iloc[0]))
    methods = ", ".join(sorted(set(frame["method"])))
    examples = frame["example"].nunique()
    figure.suptitle(f"{config_title(frame)} \u00b7 {examples} example{'s' if examples > 1 else ''}"
                    f" \u00b7 {methods}", fontsize=11)
    _save(figure, path, dpi=110)


def save_sweep_spectrum(frame: pd.DataFrame, folder: Any, swept: Sequence[str] = ()) -> Any:
    """A sweep's spectrum.png: the spread against depth, one line per job (labelled by the
    swept keys), theory dashed; written without pyplot."""
    from pathlib import Path

    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5.5), layout="constrained")
    line_by = list(swept) or ["job"]
    plot_spread(frame, figure.subplots(), line_by=line_by)
    widths = ", ".join(str(w) for w in sorted(set(frame["width"])))
    examples = frame["example"].nunique()
    figure.suptitle(f"Jacobian spectra \u00b7 width {widths} \u00b7 up to {examples} "
                    f"example{'s' if examples > 1 else ''} per trial \u00b7 mean over trials and examples")
    path = Path(folder) / "spectrum.png"
    _save(figure, path, dpi=100)
    return path
