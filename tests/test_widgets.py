"""The LLAQ explorer of notebook 04, driven from pytest: sliders change what it shows."""

import matplotlib
import pytest
import torch

from regptq_lite import widgets
from regptq_lite.scenes import SceneSet

matplotlib.use("Agg")
LAYER = "head.regression_head.conv.3.0"


@pytest.fixture(scope="module")
def explorer(fp_model):
    weight = fp_model.get_submodule(LAYER).weight.detach()
    probe = widgets.BoxProbe(fp_model, LAYER, SceneSet("calib", size=2).images())
    return weight, probe, widgets.llaq_explorer(weight, probe, bits=4)


def test_explorer_starts_from_the_mse_search(explorer):
    weight, _, box = explorer
    start = widgets.llaq_initial(weight, 4)
    for name in widgets.PARAMS:
        assert box.sliders[name].value == pytest.approx(start[name], abs=box.sliders[name].step)
    assert set(box.stats) == {"LLAQ", "uniform", "log2"}


def test_moving_k_redraws_with_a_new_error(explorer):
    _, _, box = explorer
    before, draws, uniform = box.stats["LLAQ"]["mse"], box.draws, box.stats["uniform"]["mse"]
    box.sliders["k_pos"].value = 0.3
    assert box.draws == draws + 1
    assert box.stats["LLAQ"]["mse"] != before
    assert box.stats["uniform"]["mse"] == uniform  # the uniform grid does not depend on the LLAQ sliders


def test_a_new_bit_width_restarts_from_its_own_search(explorer):
    weight, _, box = explorer
    box.sliders["bits"].value = 3
    start = widgets.llaq_initial(weight, 3)
    assert box.sliders["a_pos"].value == pytest.approx(start["a_pos"], abs=box.sliders["a_pos"].step)
    assert box.stats["LLAQ"]["mse"] < box.stats["log2"]["mse"]


def test_box_probe_is_zero_for_the_float_weight_and_restores_it(explorer):
    weight, probe, _ = explorer
    assert probe.iou_loss(weight) == pytest.approx(0.0, abs=1e-6)
    assert probe.iou_loss(torch.zeros_like(weight)) > 0.01
    assert torch.equal(probe.conv.weight, weight)


def test_llaq_beats_uniform_on_the_peaked_box_weight(explorer):
    weight, probe, _ = explorer
    result = widgets.compare_grids(weight, 4, probe, **widgets.llaq_initial(weight, 4))
    assert result["LLAQ"]["mse"] < result["uniform"]["mse"]
    assert len(result["LLAQ"]["levels"]) <= 16
