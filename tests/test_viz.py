import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from regptq_lite import analysis, viz


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_the_levels_plot_draws_one_row_per_grid_first_on_top():
    fig = viz.plot_channel_levels({"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([-1.0, 0.5, 2.0])}, "title")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "a"]  # from the bottom up
    assert [len(c.get_positions()) for c in ax.collections] == [3, 2]


def test_the_unit_loss_plot_draws_the_run_and_its_two_references():
    fig = viz.plot_unit_losses([1.0, 0.5, 0.25], nearest=0.8, learned=0.3, title="unit")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == [
        "soft rounding (each iteration's batch)",
        "rounded to nearest",
        "learned rounding, hard",
    ]
    assert ax.lines[1].get_ydata()[0] == 0.8 and ax.get_yscale() == "log"


def test_the_regularizer_plot_draws_one_curve_per_beta_zero_at_decided_roundings():
    curve = analysis.regularizer_curve(betas=(20, 2), points=11)
    fig = viz.plot_regularizer_curve(curve)
    lines = fig.axes[0].lines
    assert [line.get_label() for line in lines] == ["beta = 20", "beta = 2"]
    for line in lines:
        h, values = line.get_xdata(), line.get_ydata()
        assert len(h) == 11 and values[0] == pytest.approx(0, abs=1e-6) and values[-1] == pytest.approx(0, abs=1e-6)
        assert values[5] == pytest.approx(1, abs=1e-6)  # h = 0.5, undecided: the largest penalty


def test_the_filter_plot_names_its_iou_threshold_when_given():
    image = np.zeros((32, 32, 3))
    boxes = torch.tensor([[2.0, 2.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])
    keep, confident = torch.tensor([True, False]), torch.tensor([True, True])
    titles = [ax.get_title() for ax in viz.plot_filter(image, boxes, boxes + 1, confident, keep, 0.7).axes]
    assert titles == ["kept: confident and IoU >= theta_I = 0.7 (1)", "dropped: confident, IoU < theta_I = 0.7 (1)"]
    assert "IoU < theta_I (1)" in viz.plot_filter(image, boxes, boxes, confident, keep).axes[1].get_title()
