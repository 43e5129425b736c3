import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import propbench  # noqa: E402
from propbench.plots import MIN_DECADES, save_propagation  # noqa: E402
from tests.conftest import cfg  # noqa: E402


def test_two_labelled_log_panels_titled_with_the_config():
    frame = propbench.run(cfg("depth=6", "width=16", "batch_size=8", "act=prelu", "init=kaiming",
                              "trials=2"))
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


def test_deep_frame_renders(tmp_path):
    layers = np.arange(1, 1001)
    rows = [pd.DataFrame(dict(layer=layers, site=s, quantity=q, var=0.9**layers, nonfinite=0,
                              trial=0)) for s in ("pre", "post") for q in ("activation", "gradient")]
    path = tmp_path / "deep.png"
    save_propagation(pd.concat(rows), path)
    assert path.stat().st_size > 10_000


def test_a_constant_signal_is_marked_as_constant_not_underflow():
    frame = pd.DataFrame(dict(layer=np.arange(1, 5), site="post", quantity="activation",
                              var=[1.0, 0.8, 0.0, 0.0], nonfinite=0, trial=0))
    labels = propbench.plot_variance(frame, "activation").get_legend_handles_labels()[1]
    assert "constant (variance 0) from layer 3" in labels
    assert not any("underflow" in label for label in labels)
