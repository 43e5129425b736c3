import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import propbench  # noqa: E402
from propbench.plots import MIN_DECADES, save_propagation  # noqa: E402
from tests.conftest import cfg  # noqa: E402


def test_two_labelled_log_panels_titled_with_the_config():
    frame = propbench.run(cfg("depth=6", "width=16", "batch_size=8", "act=prelu", "init=kaiming",
                              "trials=2")).frame
    axes = propbench.plot_propagation(frame)
    assert [ax.get_yscale() for ax in axes] == ["log", "log"]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in axes)
    title = axes[0].figure._suptitle.get_text()
    for part in ("mlp", "act=prelu", "init=kaiming", "depth 6", "width 16", "2 trials"):
        assert part in title
    labels = axes[0].get_legend_handles_labels()[1]
    assert labels == ["pre-activation (Linear/Conv output)", "post-activation",
                      "mean-field theory (dashed)"]
    dashed = [line for line in axes[0].get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 3  # the predictions for pre and post, and the legend's sample
    assert len(axes[0].collections) == 2  # min..max bands over the two trials
    low, high = axes[0].get_ylim()
    assert np.log10(high / low) >= MIN_DECADES - 1e-9


def test_overflow_and_underflow_are_marked_not_dropped():
    layers = np.arange(1, 7)
    var = [1.0, 1e10, 1e30, np.inf, np.nan, np.nan]
    frame = pd.DataFrame(dict(layer=layers, site="post", quantity="activation", var=var,
                              nonfinite=[0, 0, 0, 5, 9, 9], trial=0))
    ax = propbench.plot_variance(frame, "activation")
    assert "inf/NaN from layer 4" in ax.get_legend_handles_labels()[1]
    zeros = frame.assign(var=[1.0, 1e-20, 1e-40, 0.0, 0.0, 0.0], nonfinite=0)
    ax = propbench.plot_variance(zeros, "activation")
    assert "underflow to 0 from layer 4" in ax.get_legend_handles_labels()[1]
    dead = frame.assign(var=0.0, nonfinite=0)
    ax = propbench.plot_variance(dead, "activation")
    assert "no finite, non-zero variance to show" in [t.get_text() for t in ax.texts]


def test_deep_frame_renders_as_lines_over_every_layer(tmp_path):
    from matplotlib.figure import Figure

    layers = np.arange(1, 1001)
    rows = [pd.DataFrame(dict(layer=layers, site=s, quantity=q, var=0.9**layers, nonfinite=0,
                              trial=0)) for s in ("pre", "post") for q in ("activation", "gradient")]
    frame = pd.concat(rows)
    axes = propbench.plot_propagation(frame, Figure().subplots(1, 2))
    for ax in axes:
        lines = [line for line in ax.get_lines() if line.get_label() and not line.get_label().startswith("_")]
        assert len(lines) == 2 and all(len(line.get_xdata()) == 1000 for line in lines)
        assert all(line.get_marker() in (None, "None", "") for line in lines)  # no markers past 30
        assert ax.get_xlim() == (0, 1000)
    save_propagation(frame, tmp_path / "deep.png")
    assert (tmp_path / "deep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_phase_diagram_draws_the_measured_plane_and_the_critical_line():
    from matplotlib.figure import Figure

    from propbench.theory import critical_sigma_w2

    table = pd.DataFrame({"init.sigma_w2": [1.0, 3.0, 1.0, 3.0], "init.sigma_b2": [0.0, 0.0, 0.1, 0.1],
                          "gradient_log10_ratio": [-4.0, 3.0, -np.inf, np.nan]})
    ax = propbench.plot_phase_diagram(table, "tanh", ax=Figure().subplots())
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["-4.0", "+3.0", "\u2212\u221e", "inf/NaN"])
    (line,) = [line for line in ax.get_lines() if "edge of chaos" in line.get_label()]
    sigma_w2, sigma_b2 = line.get_xdata(), line.get_ydata()
    assert sigma_b2.min() == 0.0 and sigma_b2.max() == 0.1
    assert sigma_w2[0] == pytest.approx(critical_sigma_w2("tanh", 0.0))  # chi_1 = 1: sigma_w2 = 1
    assert sigma_w2[-1] == pytest.approx(critical_sigma_w2("tanh", 0.1))
    assert ax.get_xlim() == pytest.approx((0.0, 4.0)) and ax.get_ylim() == pytest.approx((-0.05, 0.15))


def test_a_constant_signal_is_marked_as_constant_not_underflow():
    frame = pd.DataFrame(dict(layer=np.arange(1, 5), site="post", quantity="activation",
                              var=[1.0, 0.8, 0.0, 0.0], nonfinite=0, trial=0))
    labels = propbench.plot_variance(frame, "activation").get_legend_handles_labels()[1]
    assert "constant (variance 0) from layer 3" in labels
    assert not any("underflow" in label for label in labels)


def test_a_residual_frame_draws_the_stream_and_the_branch_with_their_theory():
    frame = propbench.run(cfg("model=resmlp", "init=kaiming", "depth=6", "width=32",
                              "batch_size=8", "trials=2")).frame
    axes = propbench.plot_propagation(frame)
    labels = axes[0].get_legend_handles_labels()[1]
    assert labels == ["block output (the stream between blocks)", "residual branch (before alpha)",
                      "mean-field theory (dashed)"]
    stream = axes[0].get_lines()[0]
    np.testing.assert_allclose(stream.get_ydata(), 2.0 ** np.arange(1, 7), rtol=0.5)  # doubles
    more = propbench.plot_variance(frame, "activation", sites=["block", "pre", "post"])
    assert len(more.get_legend_handles_labels()[1]) == 4  # three sites and the theory


def test_signal_propagation_plots_of_a_residual_cnn():
    frame = propbench.run(cfg("model=resnet", "model.nf=true", "model.alpha=0.2", "depth=4",
                              "width=8", "model.image_size=8", "batch_size=4")).frame
    axes = propbench.plot_signal_propagation(frame)
    assert [ax.get_title() for ax in axes] == [
        "stream: average squared channel mean", "stream: average channel variance",
        "residual branch: average channel variance"]
    assert all(ax.get_yscale() == "log" and ax.get_xlabel() == "block" for ax in axes)
    variance = axes[1].get_lines()[0].get_ydata()
    blocks = frame[(frame.site == "block") & (frame.quantity == "activation")]
    np.testing.assert_allclose(variance, blocks.channel_var, rtol=1e-12)


def test_a_transformer_gets_a_token_similarity_panel(tmp_path):
    from propbench.plots import plot_token_similarity

    frame = propbench.run(cfg("model=transformer", "depth=3", "width=16", "batch_size=4",
                              "model.tokens=6", "model.heads=2", "trials=2")).frame
    axes = propbench.plot_propagation(frame)
    assert len(axes) == 3 and axes[2].get_yscale() == "linear"
    line = axes[2].get_lines()[0]
    measured = frame[frame.quantity == "token_similarity"].groupby("layer")["mean"].mean()
    np.testing.assert_allclose(line.get_ydata(), measured.to_numpy())
    assert len(axes[2].collections) == 1  # the band over the two trials
    assert axes[2].get_ylim()[1] > 1  # 1 (collapse) is on the axis
    assert "Token similarity" in plot_token_similarity(frame).get_title()
    save_propagation(frame, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
