"""Plots of a frame. Each function is pure: ``plot_x(frame, ax=None) -> Axes``; with no axes
given it makes a pyplot figure (so notebooks show it), otherwise it draws into yours.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from propbench.verdict import (SIGNALS, first_constant_layer, first_inf_variance_layer,
                               first_nonfinite_layer, first_zero_layer, layer_variance)

SITE_STYLE = {  # site -> (label, colour)
    "pre": ("pre-activation (Linear/Conv output)", "C0"),
    "norm": ("normalized (BatchNorm output)", "C2"),
    "post": ("post-activation", "C1"),
    "weight": ("weight", "C3"),
}
PANELS = {  # quantity -> (panel title, label prefix)
    "activation": ("Forward: activation variance", ""),
    "gradient": ("Backward: gradient variance", "\u2202/\u2202 "),
}


MIN_DECADES = 2.0  # a log axis spans at least this much, so flat lines look flat


def format_axes(ax: Any, title: str, xlabel: str, ylabel: str, log_y: bool = True) -> Any:
    """The one formatting helper: title, labelled axes, log y (at least MIN_DECADES tall,
    so finite-width wiggles of a stable signal do not look like a trend), light grid,
    legend if anything is labelled."""
    # a fixed y: matplotlib otherwise measures every tick label to place the title (~0.1 s)
    ax.set_title(title, fontsize=11, y=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
        from matplotlib.ticker import LogLocator, NullFormatter

        # minor ticks at 2 and 5 only: eight per decade cost a quarter of the figure's time
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        low, high = ax.get_ylim()
        if low > 0 and np.log10(high / low) < MIN_DECADES:
            centre = np.sqrt(low * high)
            ax.set_ylim(centre / 10 ** (MIN_DECADES / 2), centre * 10 ** (MIN_DECADES / 2))
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return ax


def config_title(frame: pd.DataFrame) -> str:
    """'mlp · act=prelu · init=kaiming · depth 50 · width 256 · batch 256' from the
    frame's config columns (or a neutral title for a frame from ``probe`` alone)."""
    if "model" not in frame.columns:
        return f"{frame['layer'].max()} layers"
    first = frame.iloc[0]
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
    overflow = first_nonfinite_layer(frame, quantity)
    if overflow is not None:
        ax.axvline(overflow, color="red", ls=":", lw=1.2,
                   label=f"inf/NaN from layer {overflow}")
    beyond = first_inf_variance_layer(frame, quantity)
    if beyond is not None:
        ax.axvline(beyond, color="red", ls="--", lw=1.0,
                   label=f"variance beyond float64 from layer {beyond}")
    first_zero = first_zero_layer(frame, quantity)
    if first_zero is not None:
        ax.axvline(first_zero, color="grey", ls=":", lw=1.2,
                   label=f"underflow to 0 from layer {first_zero}")
    constant = first_constant_layer(frame, quantity)
    if constant is not None:
        ax.axvline(constant, color="grey", ls="-.", lw=1.2,
                   label=f"constant (variance 0) from layer {constant}")


def plot_variance(frame: pd.DataFrame, quantity: str = "activation", ax: Optional[Any] = None,
                  sites: Optional[Sequence[str]] = None) -> Any:
    """Variance against layer for one quantity, one line per site, on a log y axis.

    With several trials the line is the mean over trials and the band spans min..max.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    rows = frame[(frame["quantity"] == quantity) & (frame["layer"] >= 1)]
    sites = sites or [s for s in SITE_STYLE if s in set(rows["site"])]
    depth = int(rows["layer"].max()) if not rows.empty else 0
    marker = "o" if depth <= 30 else None
    several_trials = "trial" in rows.columns and rows["trial"].nunique() > 1
    drawn = theory_drawn = False
    title, prefix = PANELS[quantity]
    for site in sites:
        by_layer = rows[rows["site"] == site].groupby("layer")["var"]
        stats = by_layer.agg(["mean", "min", "max"]).reset_index()
        # Zero or non-finite variances have no place on a log axis; they are marked instead.
        ok = np.isfinite(stats["mean"]) & (stats["mean"] > 0)
        drawn = drawn or bool(ok.any())
        label, colour = SITE_STYLE[site]
        ax.plot(stats["layer"][ok], stats["mean"][ok], color=colour, marker=marker,
                markersize=3, lw=1.5, label=prefix + label)
        if several_trials:
            ax.fill_between(stats["layer"][ok], stats["min"][ok], stats["max"][ok],
                            color=colour, alpha=0.2, lw=0)
        if "theory" in rows.columns:  # beside the measurement: where it is on the axis too
            predicted = rows[rows["site"] == site].groupby("layer")["theory"].first()
            shown = (np.isfinite(predicted.to_numpy()) & (predicted.to_numpy() > 0)
                     & ok.to_numpy())
            if shown.any():
                ax.plot(predicted.index[shown], predicted.to_numpy()[shown], color=colour,
                        ls="--", lw=1.2, alpha=0.9)
                theory_drawn = True
    if theory_drawn:
        ax.plot([], [], color="grey", ls="--", lw=1.2, label="mean-field theory (dashed)")
    _mark_range_exits(ax, frame, quantity)
    shown = rows["var"][np.isfinite(rows["var"]) & (rows["var"] > 0)]
    if len(shown) and shown.max() > 1e250:  # log ticks above that step out of float64
        ax.set_ylim(max(shown.min() / 10, 1e-300), 1e250)
    if not drawn:
        ax.text(0.5, 0.5, "no finite, non-zero variance to show", transform=ax.transAxes,
                ha="center", va="center", color="grey")
    ax.set_xlim(0.5 if depth <= 30 else 0, depth + (0.5 if depth <= 30 else 0))
    return format_axes(ax, title, "layer (block index)", "variance (log scale)")


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
    return format_axes(ax, "Correlation of input pairs", "layer (block index)",
                       "mean cosine similarity", log_y=False)


def plot_propagation(frame: pd.DataFrame, axes: Optional[Sequence[Any]] = None) -> Sequence[Any]:
    """Activations (forward) and gradients (backward), and the correlation of input pairs
    when the frame has it, titled with the config."""
    with_pairs = bool((frame["quantity"] == "correlation").any())
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 3 if with_pairs else 2, figsize=(18 if with_pairs else 12, 4.5),
                               layout="constrained")
    for ax, quantity in zip(axes, PANELS):
        plot_variance(frame, quantity, ax=ax)
    if with_pairs:
        plot_correlation(frame, ax=axes[2])
    axes[0].figure.suptitle(config_title(frame), fontsize=12)
    return axes


def _save(figure: Any, path: Any, dpi: int) -> None:
    from pathlib import Path

    from propbench.results import atomic_write

    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))


def save_propagation(frame: pd.DataFrame, path: Any) -> None:
    """Render :func:`plot_propagation` to ``path`` (atomically, without pyplot)."""
    from matplotlib.figure import Figure

    panels = 3 if (frame["quantity"] == "correlation").any() else 2
    figure = Figure(figsize=(6 * panels, 4.5))
    # fixed margins: the layout is always the same, and a layout engine costs ~0.25 s a figure
    figure.subplots_adjust(left=0.07 / panels * 2, right=0.975, bottom=0.11, top=0.86,
                           wspace=0.22)
    plot_propagation(frame, figure.subplots(1, panels))
    _save(figure, path, dpi=110)


# --- sweeps -----------------------------------------------------------------------------

SIGNAL_LABELS = {"activation": "post-activation variance",
                 "gradient": "\u2202/\u2202 pre-activation variance"}


def _label(keys: Sequence[str], values: Any) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values))


def plot_sweep_grid(frame: pd.DataFrame, line_by: Sequence[str] = ("init",),
                    axes: Optional[Any] = None) -> Any:
    """Rows: activation; columns: activation and gradient variance; one line per value of
    ``line_by`` (default: the init); x = layer, log y. ``frame`` is a sweep's (one depth)."""
    acts = list(dict.fromkeys(frame["act"]))
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(len(acts), 2, figsize=(11, 3.2 * len(acts)), squeeze=False,
                               layout="constrained")
    for row, act in zip(axes, acts):
        rows = frame[frame["act"] == act]
        for ax, quantity in zip(row, PANELS):
            site = SIGNALS[quantity][0]
            for values, group in rows.groupby(list(line_by), sort=True):
                var = layer_variance(group, quantity, site)
                ok = np.isfinite(var.to_numpy()) & (var.to_numpy() > 0)
                ax.plot(var.index[ok], var.to_numpy()[ok], lw=1.5, label=_label(line_by, values))
            format_axes(ax, f"act={act}: {SIGNAL_LABELS[quantity]}", "layer (block index)",
                        "variance (log scale)")
    return axes


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
        keyed = rows.groupby(["_row", column], sort=False)
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
    _ratio_colorbar(ax, image, bound, "log10 ratio (0 = preserved, \u00b11 = verdict)")
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
    _ratio_colorbar(ax, mesh, bound, f"{quantity} log10 ratio (0 = preserved)")
    ax.set_xlim(edges(xs)[0], edges(xs)[-1])
    ax.set_ylim(edges(ys)[0], edges(ys)[-1])
    ax.set_xlabel("\u03c3w\u00b2 (weight variance \u00d7 fan_in)")
    ax.set_ylabel("\u03c3b\u00b2 (bias variance)")
    ax.set_title(f"act={act}: {SIGNAL_LABELS[quantity]}, end to end", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return ax


def save_sweep_figures(frame: pd.DataFrame, table: pd.DataFrame, folder: Any,
                       swept: Sequence[str] = ()) -> list[Any]:
    """One grid and one heatmap per depth, written into the sweep folder without pyplot.

    Lines and heatmap rows are labelled by the overridden keys that vary (``swept``) other
    than act and depth, or by the init if none does."""
    from pathlib import Path

    from matplotlib.figure import Figure

    folder = Path(folder)
    jobs = frame.groupby("job")[["act", "init", "depth"]].first()
    table = table[table["status"] == "ok"].drop(columns=["act", "init", "depth"], errors="ignore")
    table = table.join(jobs, on="job")
    line_by = [k for k in swept if k not in ("act", "depth")] or ["init"]
    phase = all(k in swept for k in PHASE_KEYS) and table["act"].nunique() == 1
    paths = []
    for depth, rows in frame.groupby("depth"):
        first = rows.iloc[0]
        if phase:  # a (sigma_w2, sigma_b2) plane: one phase diagram per quantity
            figure = Figure(figsize=(13, 5), layout="constrained")
            for ax, quantity in zip(figure.subplots(1, 2), PANELS):
                plot_phase_diagram(table[table["depth"] == depth], first["act"], quantity, ax)
            figure.suptitle(f"{first['model']} \u00b7 act={first['act']} \u00b7 init=scaled "
                            f"\u00b7 depth {depth} \u00b7 width {first['width']}")
            paths.append(folder / f"phase_depth{depth}.png")
            _save(figure, paths[-1], dpi=100)
            continue
        grid = Figure(figsize=(11, 3.2 * rows["act"].nunique() + 0.6), layout="constrained")
        plot_sweep_grid(rows, line_by, grid.subplots(rows["act"].nunique(), 2, squeeze=False))
        grid.suptitle(f"{first['model']} \u00b7 depth {depth} \u00b7 width {first['width']} "
                      f"\u00b7 batch {first['batch_size']} \u00b7 mean over trials")
        paths.append(folder / f"grid_depth{depth}.png")
        _save(grid, paths[-1], dpi=100)

        jobs_here = table[table["depth"] == depth]
        bound = ratio_bound(jobs_here[[f"{q}_log10_ratio" for q in PANELS]])
        n_rows = len(jobs_here[line_by].drop_duplicates())
        act_per_row = jobs_here.groupby(line_by)["act"].nunique().max() == 1
        if act_per_row or jobs_here["act"].nunique() == 1:
            heat = Figure(figsize=(7, 1.6 + 0.4 * n_rows), layout="constrained")
            plot_ratio_heatmap(jobs_here, row_by=line_by, column=None, ax=heat.subplots(),
                               bound=bound)
        else:
            heat = Figure(figsize=(12, 2.4 + 0.45 * n_rows), layout="constrained")
            for ax, quantity in zip(heat.subplots(1, 2), PANELS):
                plot_ratio_heatmap(jobs_here, quantity, line_by, ax=ax, bound=bound)
        heat.suptitle(f"{first['model']} \u00b7 depth {depth} \u00b7 width {first['width']}")
        paths.append(folder / f"heatmap_depth{depth}.png")
        _save(heat, paths[-1], dpi=100)
    return paths


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
    groups = frame.groupby(list(line_by), sort=True) if line_by else [((), frame)]
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
            ax.fill_between(stats["layer"][ok], stats["min"][ok].clip(lower=1e-300),
                            stats["max"][ok], color=colour, alpha=0.2, lw=0)
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
    if notes:
        ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7,
                color="grey", va="bottom")
    if not drawn and not theory_drawn:  # an exact isometry: nothing above the floor
        ax.set_ylim(SPREAD_FLOOR / 10, 10)
        layers = frame["layer"]
        ax.set_xlim(layers.min() / 1.2, layers.max() * 1.2)
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import FuncFormatter

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
