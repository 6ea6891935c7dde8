import torch

from regptq_lite import viz


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
