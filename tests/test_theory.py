import numpy as np
import pytest
import torch

from regptq_lite import theory
from regptq_lite.quantizers import UniformQuantizer


@pytest.mark.parametrize("step", [0.01, 0.03, 0.05])
def test_monte_carlo_matches_the_first_order_iou_loss(step):
    mc, stderr = theory.iou_loss_monte_carlo(step, samples=100_000)
    assert stderr < 0.01 * mc
    assert abs(mc - theory.iou_loss_analytic(step)) < 0.05 * theory.iou_loss_analytic(step)


def test_first_order_formula_matches_exact_iou_per_box_for_small_errors():
    deltas = theory.laplace_deltas(2000, scale=0.1, seed=1)
    g = torch.Generator().manual_seed(2)
    noisy = deltas + (torch.rand(deltas.shape, generator=g) - 0.5) * 0.01
    exact, approx = theory.iou_loss(deltas, noisy), theory.iou_loss_first_order(deltas, noisy)
    assert torch.allclose(exact, approx, rtol=0.05, atol=1e-4)


def test_decoding_zero_deltas_gives_the_unit_anchor():
    assert torch.equal(theory.decode(torch.zeros(1, 4)), torch.tensor([[-0.5, -0.5, 0.5, 0.5]]))


def test_likelihood_curves_are_densities_with_the_expected_shapes():
    curves = theory.likelihood_curves(n=1, seed=0)
    for name in theory.LOSSES:
        assert np.trapezoid(curves[name], curves["w"]) == pytest.approx(1.0, abs=1e-6)
    assert theory.curve_kurtosis(curves["w"], curves["l1"]) == pytest.approx(3.0, abs=0.1)  # one point: Laplace
    assert theory.curve_kurtosis(curves["w"], curves["l2"]) == pytest.approx(0.0, abs=0.01)  # Gaussian
    shape = theory.posterior_kurtosis((1, 400), seed=0)
    assert shape[1]["l1"] == pytest.approx(theory.curve_kurtosis(curves["w"], curves["l1"]))
    assert abs(shape[400]["l2"]) < 0.05 and abs(shape[400]["l1"]) < 0.5  # L2 Gaussian for any n; L1 with many points
    # L1: a cusp at the peak (slope jumps there); L2: smooth
    assert curves["l1"].argmax() == np.abs(np.diff(np.log(curves["l1"]), 2)).argmax() + 1


def test_uniform_squared_error_fit_is_a_grid_of_2_to_the_b_levels_with_the_smallest_squared_error():
    columns = theory.laplace_deltas(3000, seed=2).T.contiguous()
    fitted = theory.uniform_squared_error_fit(columns, 3)
    assert fitted.shape == columns.shape
    assert all(len(row.unique()) <= 2**3 for row in fitted)
    lp_fit = UniformQuantizer(3, 0, "mse")  # its clip minimises the L_2.4 error
    lp_fit.init(columns)
    with torch.no_grad():
        squared = {"fit": (fitted - columns).pow(2).mean(1), "L_2.4": (lp_fit(columns) - columns).pow(2).mean(1)}
    assert (squared["fit"] <= squared["L_2.4"] + 1e-9).all()


def test_log_grid_beats_uniform_grid_on_laplace_deltas():
    rows = theory.grid_comparison(bits=(4,), deltas=theory.laplace_deltas(4000))
    by_grid = {r["grid"]: r for r in rows}
    assert by_grid["log"]["mse"] < by_grid["uniform"]["mse"]
    assert by_grid["log"]["iou_loss"] < by_grid["uniform"]["iou_loss"]
