import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from regptq_lite import toy
from regptq_lite.cli import main


@pytest.fixture(scope="module")
def regressor():
    return toy.train_task("regressor", seed=0, epochs=60)


def test_training_and_noise_are_deterministic(regressor):
    again = toy.train_task("regressor", seed=0, epochs=60)
    for a, b in zip(toy.weights(regressor.model), toy.weights(again.model)):
        assert torch.equal(a, b)
    first = toy.noise_sensitivity(regressor, (0.0, 0.1), "uniform", draws=3, seed=4)
    assert first == toy.noise_sensitivity(again, (0.0, 0.1), "uniform", draws=3, seed=4)
    assert first[0] == [0.0, 0.0]  # no noise, no degradation


def test_models_have_about_the_same_size():
    sizes = {name: sum(p.numel() for p in toy.train_task(name, epochs=1).model.parameters()) for name in toy.TASKS}
    assert abs(sizes["regressor"] - sizes["classifier"]) < 0.1 * sizes["regressor"]


def test_iris_file_is_the_classic_table():
    x, y = toy.iris_data()
    assert x.shape == (150, 4) and torch.bincount(y).tolist() == [50, 50, 50]


def test_constant_error_is_what_a_constant_prediction_scores(regressor):
    assert regressor.constant_error() == 1.0
    assert regressor.error(lambda x: regressor.y.median(0).values.expand(len(x), -1)) == pytest.approx(1.0)
    classifier = toy.train_task("classifier", epochs=1)
    assert classifier.constant_error() == pytest.approx(2 / 3)
    always_first = torch.tensor([1.0, 0.0, 0.0])
    assert classifier.error(lambda x: always_first.expand(len(x), -1)) == pytest.approx(classifier.constant_error())


def test_unknown_task_noise_and_loss_are_rejected(regressor):
    with pytest.raises(ValueError, match="unknown toy task"):
        toy.train_task("segmenter")
    with pytest.raises(ValueError, match="unknown regression loss"):
        toy.train_task("regressor", loss="l3")
    with pytest.raises(ValueError, match="unknown noise"):
        toy.noise_sensitivity(regressor, (0.1,), "cauchy")


def test_exact_hessian_equals_double_backprop():
    torch.manual_seed(0)
    task = toy.ToyTask("regressor", toy.mlp(3, 2, hidden=3), torch.randn(16, 3), torch.randn(16, 2), loss="l2")
    params = list(task.model.parameters())
    grads = torch.cat(
        [g.flatten() for g in torch.autograd.grad(task.loss_fn(task.model(task.x)), params, create_graph=True)]
    )
    rows = [torch.cat([h.flatten() for h in torch.autograd.grad(g, params, retain_graph=True)]) for g in grads]
    assert torch.allclose(toy.exact_hessian(task), torch.stack(rows), atol=1e-6)


def test_diagonal_fisher_is_the_mean_squared_per_sample_gradient(regressor):
    params = list(regressor.model.parameters())
    total = 0
    for i in range(5):
        loss = regressor.loss_fn(regressor.model(regressor.x[i : i + 1]), regressor.y[i : i + 1])
        total = total + torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).pow(2)
    small = toy.ToyTask("regressor", regressor.model, regressor.x[:5], regressor.y[:5])
    assert torch.allclose(toy.diagonal_fisher(small), total / 5, atol=1e-7)


def test_kurtosis_and_laws_of_known_samples():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(200_000, generator=g)
    u = torch.rand(200_000, generator=g) - 0.5
    laplace = -torch.sign(u) * torch.log1p(-2 * u.abs())
    assert abs(toy.excess_kurtosis(gauss)) < 0.1
    assert abs(toy.excess_kurtosis(laplace) - 3) < 0.3
    assert abs(toy.excess_kurtosis(u) + 1.2) < 0.05
    assert toy.fit_laws(laplace)["loglik_laplace"] > toy.fit_laws(laplace)["loglik_gauss"]
    assert toy.fit_laws(gauss)["loglik_gauss"] > toy.fit_laws(gauss)["loglik_laplace"]


def test_mse_clip_is_the_best_grid_and_scale_sweep_finds_minima(regressor):
    w = toy.weights(regressor.model)[1]
    lo, hi = toy.mse_clip(w, 4)
    assert lo < 0 < hi <= w.abs().max() * 1.01
    sweep = toy.scale_sweep(regressor, bits=4, ratios=np.linspace(0.2, 1.0, 5))
    for key, ratio in sweep["argmin"].items():
        assert min(r[key] for r in sweep["rows"]) == next(r[key] for r in sweep["rows"] if r["ratio"] == ratio)


@pytest.fixture(scope="module")
def toy_json() -> dict:
    """What ``toy --json --draws 2`` prints (seed 0)."""
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["toy", "--json", "--draws", "2"]) == 0
    return json.loads(printed.getvalue())


def test_toy_json_has_the_documented_fields(toy_json):
    out = toy_json
    for model in toy.TASKS:
        for kind in ("uniform", "gaussian"):
            rows = out["noise"][model][kind]
            assert [r[0] for r in rows] == out["sigmas"]
        assert set(out["scale"][model]) >= {"mse_opt", "task_opt"}
        assert isinstance(out["kurtosis"][model], float)


def test_the_readme_quotes_the_toy_output_where_it_does_not_depend_on_draws(toy_json):
    out, readme = toy_json, (Path(__file__).parents[1] / "README.md").read_text()

    def quoted(row: str) -> list[list[float]]:
        line = next(line for line in readme.splitlines() if line.startswith(f"| {row}"))
        return [[float(v) for v in cell.split(" / ")] for cell in line.strip("|").split("|")[1:]]

    def rank_corr(scale: dict) -> list[float]:
        return [scale["rank_corr"][k] for k in ("weight_mse", "fisher", "hessian")]

    for column, model in enumerate(("regressor", "classifier")):
        scale = out["scale"][model]
        assert quoted("INT4 clip ratio")[column] == pytest.approx([scale["mse_opt"], scale["task_opt"]], abs=1e-9)
        assert quoted("rank correlation")[column] == pytest.approx(rank_corr(scale), abs=0.005)
        assert quoted("excess kurtosis")[column] == pytest.approx([out["kurtosis"][model]], abs=0.005)
    l2 = re.search(r"An L2-trained regressor gives rank correlations ([\d. /-]+) \(seed 1: ([\d. /-]+)\)", readme)
    seed1 = toy.scale_sweep(toy.train_task("regressor", 1, loss="l2"))
    for text, scale in zip(l2.groups(), (out["scale"]["regressor_l2"], seed1)):
        assert [float(v) for v in text.split(" / ")] == pytest.approx(rank_corr(scale), abs=0.005)


def test_the_rectified_gaussian_kurtosis_matches_a_sample():
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    assert toy.rectified_gaussian_kurtosis() == pytest.approx(toy.excess_kurtosis(torch.relu(z)), abs=0.05)
    assert 2.3 < toy.rectified_gaussian_kurtosis() < 2.5


def test_noise_margins_and_order_read_the_noise_table_against_a_constant(regressor):
    classifier = toy.train_task("classifier", seed=0, epochs=60)
    tasks = {"regressor": regressor, "classifier": classifier}
    noise = {  # a hand-made table: s = 0 is left out of both
        "regressor": {"uniform": [[0, 0.0], [0.1, 0.5]], "gaussian": [[0, 0.0], [0.1, 0.2]],
                      "uniform_same_std": [[0, 0.0], [0.1, 0.3]]},
        "classifier": {"uniform": [[0, 0.0], [0.1, 0.4]], "gaussian": [[0, 0.0], [0.1, 0.1]],
                       "uniform_same_std": [[0, 0.0], [0.1, 0.05]]},
    }  # fmt: skip
    constant = classifier.constant_error()
    margins = toy.noise_margins(noise, tasks)
    assert margins["uniform"] == pytest.approx([0.5 - 0.4 / constant])
    assert margins["gaussian"] == pytest.approx([0.2 - 0.1 / constant])
    assert toy.noise_order(noise) == {"regressor": {0.1: True}, "classifier": {0.1: False}}
