import copy

import pytest
import torch

from regptq_lite.fgic import Teacher
from regptq_lite.methods import METHODS, run_method
from regptq_lite.observe import init_quantizers
from regptq_lite.qmodel import quant_layers, quantize_detector
from regptq_lite.quantizers import AdaRoundQuantizer, LogAffineQuantizer
from regptq_lite.recon import ReconSettings, prepare_unit, recon_units
from regptq_lite.scenes import SceneSet


@pytest.fixture(scope="module")
def calib():
    return SceneSet("calib", size=6).images()


def test_units_are_blocks_in_the_backbone_and_layers_elsewhere(fp_model):
    qmodel = quantize_detector(fp_model, 4, 4)
    names = [n for n, _ in recon_units(qmodel)]
    assert "backbone.layer1.1" in names and "backbone.layer1.1.conv1" not in names
    assert "head.regression_head.conv.3" in names and "head.regression_head.bbox_reg" not in names
    layer_names = [n for n, _ in recon_units(qmodel, "layer")]
    assert "backbone.layer1.1.conv1" in layer_names and "backbone.layer1.1" not in layer_names


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].reconstruct])
def test_gradients_reach_every_learnable_parameter(fp_model, calib, method):
    recipe = METHODS[method]
    qmodel = quantize_detector(fp_model, 4, 4, head_weight_kind=recipe.head_weight_kind)
    init_quantizers(qmodel, calib)
    settings = ReconSettings(iters=1, **recipe.recon)
    teacher = Teacher(copy.deepcopy(qmodel), calib, settings.theta_c, settings.theta_i)
    for name, unit in recon_units(qmodel, recipe.granularity):
        groups = prepare_unit(unit, settings)
        params = [p for g in groups for p in g["params"]]
        loss = teacher.loss(qmodel, calib[:2], slice(0, 2))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        assert all(g is not None for g in grads), name
        if name.startswith("head."):
            break  # one head unit is enough: the rest repeat it
    kinds = {type(layer.wq) for _, layer in quant_layers(qmodel) if layer.wq is not None}
    assert AdaRoundQuantizer in kinds
    assert (LogAffineQuantizer in kinds) == (recipe.head_weight_kind == "llaq")


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_runs_end_to_end(fp_model, calib, method):
    qmodel = quantize_detector(fp_model, 4, 4, head_weight_kind=METHODS[method].head_weight_kind)
    details = run_method(method, qmodel, calib, iters=2, seed=0, overrides={})
    assert all(layer.quant_w == (layer.wq is not None) for _, layer in quant_layers(qmodel))
    with torch.no_grad():
        out = qmodel(calib[:2])
    assert len(out) == 2
    if METHODS[method].reconstruct:
        assert len(details["units"]) == len(recon_units(qmodel, METHODS[method].granularity))


def test_a_short_regptq_calibration_beats_naive_at_w4a4(fp_model):
    """A fixed small case: 20 iterations per unit on 16 calibration scenes bring the W4A4 detector's dense
    outputs closer to the FP detector's than naive rounding does (FGIC's L_G on 16 held-out scenes)."""
    held_out = SceneSet("val", size=16).images()
    teacher = Teacher(fp_model, held_out, theta_c=2e-4, theta_i=0.1)
    images = SceneSet("calib", size=16).images()
    losses = {}
    for method in ("naive", "regptq"):
        torch.manual_seed(0)
        qmodel = quantize_detector(fp_model, 4, 4, head_weight_kind=METHODS[method].head_weight_kind)
        run_method(method, qmodel, images, iters=20, seed=0, overrides={})
        with torch.no_grad():
            losses[method] = teacher.loss(qmodel, held_out, slice(None)).item()
    assert losses["regptq"] < losses["naive"], losses
