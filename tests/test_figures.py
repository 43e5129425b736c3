"""Every figure kind renders at its extremes -- one layer, depth 10,000, a signal that
underflows to 0 everywhere, one that overflows everywhere -- without a warning and with
every piece of text inside the figure."""

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from propbench.frames import typed  # noqa: E402
from propbench.plots import propagation_figure, sweep_figures  # noqa: E402

EXTREMES = {  # name -> (depth, variance per layer, nonfinite elements per layer)
    "one layer": (1, lambda layers: np.ones(len(layers)), 0),
    "depth 10000": (10_000, lambda layers: 0.999 ** layers, 0),
    "all underflow": (50, lambda layers: np.zeros(len(layers)), 0),
    "all overflow": (50, lambda layers: np.full(len(layers), np.inf), 7),
    "underflow midway": (200, lambda layers: np.where(layers < 80, 10.0 ** (-layers), 0.0), 0),
    "overflow midway": (200, lambda layers: np.where(layers < 150, 10.0 ** (2 * np.minimum(layers, 149)),
                                                     np.inf), (0, 3)),
}


def job_frame(depth, variance, nonfinite, job=0, act="relu", init="kaiming", trials=2,
              correlation=False, **config):
    layers = np.arange(1, depth + 1)
    var = variance(layers)
    bad = np.where(np.isfinite(var), 0, 9) if nonfinite == (0, 3) else np.full(depth, nonfinite)
    quantities = ["activation", "gradient"] + (["correlation"] if correlation else [])
    parts = [pd.DataFrame(dict(trial=t, layer=layers, module=[f"blocks.{i - 1}" for i in layers],
                               site=site, quantity=q, mean=0.5 if q == "correlation" else 0.0,
                               var=var, second_moment=var, n=64,
                               nonfinite=bad if q != "correlation" else 0,
                               channel_mean_sq=np.nan, channel_var=np.nan,
                               theory=var * 1.1))
             for t in range(trials) for q in quantities for site in ("pre", "post")]
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.assign(model="mlp", act=act, init=init, norm="none", depth=depth, width=256,
                         batch_size=256, seed=0, dtype="float32", sigma_w2=2.0, sigma_b2=0.0,
                         job=job, **config)
    return typed(frame)


def sweep_table(frame, keys):
    rows = []
    for job, group in frame.groupby("job"):
        first = group.iloc[0]
        row = {"job": job, "status": "ok", "error": "", **{k: first[k] for k in keys}}
        for quantity in ("activation", "gradient"):
            var = group[(group.quantity == quantity) & (group.site == "post")]["var"]
            start, end = var.iloc[0], var.iloc[-1]
            with np.errstate(all="ignore"):
                ratio = np.log10(end) - np.log10(start) if start > 0 else np.nan
            row[f"{quantity}_log10_ratio"] = ratio
            row[f"{quantity}_verdict"] = "stable" if np.isfinite(ratio) and abs(ratio) <= 1 else (
                "vanishing" if ratio < -1 else "exploding")
        rows.append(row)
    return pd.DataFrame(rows)


def assert_clean(figure):
    """Drawn without warnings; everything drawn (tick labels, titles, legends, colour-bar
    labels) lies inside the figure, as matplotlib measures it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        canvas = FigureCanvasAgg(figure)  # what savefig draws with
        canvas.draw()
        renderer = canvas.get_renderer()
        box = figure.bbox
        parts = [*figure.axes, *figure.legends, *figure.texts]
        parts += [figure._suptitle] if figure._suptitle is not None else []
        for part in parts:
            extent = part.get_tightbbox(renderer)
            assert (extent.x0 >= box.x0 - 1 and extent.y0 >= box.y0 - 1
                    and extent.x1 <= box.x1 + 1 and extent.y1 <= box.y1 + 1), \
                f"{part} reaches outside the figure: {extent} vs {box.extents}"


@pytest.mark.parametrize("name", EXTREMES)
def test_run_figure_at_the_extremes(name):
    depth, variance, nonfinite = EXTREMES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = propagation_figure(job_frame(depth, variance, nonfinite, correlation=True))
    assert_clean(figure)


@pytest.mark.parametrize("name", EXTREMES)
def test_sweep_figures_at_the_extremes(name):
    depth, variance, nonfinite = EXTREMES[name]
    extreme = job_frame(depth, variance, nonfinite, job=0, init="default")
    normal = job_frame(depth, lambda layers: 0.9 ** layers, 0, job=1)
    other_act = job_frame(depth, lambda layers: 1.1 ** np.minimum(layers, 3000), 0, job=2,
                          act="tanh", init="default")
    frame = typed(pd.concat([extreme, normal, other_act], ignore_index=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = sweep_figures(frame, sweep_table(frame, ["act", "init", "depth"]),
                                swept=["act", "init"])
    assert set(figures) == {f"grid_depth{depth}.png", f"heatmap_depth{depth}.png"}
    for figure in figures.values():
        assert_clean(figure)


@pytest.mark.parametrize("name", ["one layer", "all underflow", "all overflow"])
def test_phase_figure_at_the_extremes(name):
    depth, variance, nonfinite = EXTREMES[name]
    jobs = [job_frame(depth, variance if (w, b) == (1.0, 0.0) else (lambda layers: 0.5 ** layers),
                      0 if (w, b) != (1.0, 0.0) else nonfinite, job=i, act="tanh", init="scaled",
                      **{"init.sigma_w2": w, "init.sigma_b2": b})
            for i, (w, b) in enumerate([(1.0, 0.0), (2.0, 0.0), (1.0, 0.1), (2.0, 0.1)])]
    frame = typed(pd.concat(jobs, ignore_index=True))
    table = sweep_table(frame, ["act", "init", "depth", "init.sigma_w2", "init.sigma_b2"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = sweep_figures(frame, table, swept=["init.sigma_w2", "init.sigma_b2"])
    assert set(figures) == {f"phase_depth{depth}.png"}
    assert_clean(figures[f"phase_depth{depth}.png"])


def test_the_grid_overlays_setups_shares_y_and_marks_range_exits():
    depth, variance, nonfinite = EXTREMES["underflow midway"]
    frame = typed(pd.concat([job_frame(depth, variance, nonfinite, job=0, init="default"),
                             job_frame(depth, lambda layers: 0.99 ** layers, 0, job=1)],
                            ignore_index=True))
    figure = sweep_figures(frame, sweep_table(frame, ["act", "init", "depth"]),
                           swept=["init"])[f"grid_depth{depth}.png"]
    forward, backward = figure.axes[:2]  # one row: both inits in each panel
    assert len(figure.axes) == 2
    solid = [line for line in forward.get_lines() if line.get_linestyle() == "-"]
    dashed = [line for line in forward.get_lines() if line.get_linestyle() == "--"]
    assert len(solid) == 2 and len(dashed) == 2  # measured and theory, per init
    crosses = [line for line in forward.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_xdata()[0] == 79  # last layer before the 0s
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:2] == ["init=default", "init=kaiming"] and "mean-field theory (dashed)" in labels
    ticks = np.log10(forward.get_yticks())
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0]) and steps[0] in (1, 2, 5, 10, 20, 50, 100)
    assert figure._suptitle.get_text().endswith("lines: mean over 2 trials")


def test_long_line_labels_keep_the_legend_inside():
    jobs = [job_frame(24, lambda layers: 0.8 ** layers, 0, job=i, init="kaiming",
                      **{"init.mode": mode, "model.norm": norm})
            for i, (mode, norm) in enumerate([("fan_in", "none"), ("fan_in", "batchnorm"),
                                              ("fan_out", "none"), ("fan_out", "batchnorm")])]
    frame = typed(pd.concat(jobs, ignore_index=True))
    table = sweep_table(frame, ["act", "init", "depth", "init.mode", "model.norm"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = sweep_figures(frame, table, swept=["init.mode", "model.norm"])
    for figure in figures.values():
        assert_clean(figure)
