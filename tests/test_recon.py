import copy

import pytest
import torch

from regptq_lite.export import integer_conv, is_shift_form
from regptq_lite.fgic import Teacher
from regptq_lite.llaq import LogAffineTuner, llaq_of
from regptq_lite.methods import METHODS, run_method
from regptq_lite.observe import init_quantizers
from regptq_lite.qmodel import quant_layers, quantize_detector
from regptq_lite.quantizers import AdaRoundQuantizer, LearnedRounding
from regptq_lite.recon import ReconSettings, fisher_weights, hard_rounding, prepare_unit, recon_units
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
        assert any(g.abs().sum() > 0 for g in grads), f"{name}: the global loss does not move any of its parameters"
        if name.startswith("head."):
            break  # one head unit is enough: the rest repeat it
    kinds = {type(layer.wq) for _, layer in quant_layers(qmodel) if layer.wq is not None}
    assert AdaRoundQuantizer in kinds
    assert (LogAffineTuner in kinds) == (recipe.head_weight_kind == "llaq")


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_runs_end_to_end(fp_model, calib, method):
    qmodel = quantize_detector(fp_model, 4, 4, head_weight_kind=METHODS[method].head_weight_kind)
    details = run_method(method, qmodel, calib, iters=2, seed=0, overrides={})
    assert all(layer.quant_w == (layer.wq is not None) for _, layer in quant_layers(qmodel))
    with torch.no_grad():
        out = qmodel(calib[:2])
    assert len(out) == 2
    if METHODS[method].reconstruct:
        units = details["units"]
        assert len(units) == len(recon_units(qmodel, METHODS[method].granularity))
        assert all(0.0 <= u["undecided"] <= 1.0 for u in units)
        if method == "regptq":  # L_G in every unit's loss, backbone and neck included (Eq. 5)
            assert all(u["global_scale"] > 0 and "last_global" in u for u in units)
        assert not any(p.requires_grad for p in qmodel.parameters())  # every finished unit is frozen
        assert not any(m.soft for m in qmodel.modules() if isinstance(m, LearnedRounding))


def test_a_short_regptq_calibration_beats_naive_at_w4a4(fp_model):
    """A fixed small case: 60 iterations per unit on 16 calibration scenes bring the W4A4 detector's dense
    outputs closer to the FP detector's than naive rounding does (FGIC's L_G on 16 held-out scenes).
    (At 20 iterations they did not, measured 2026-12-01: 0.0138 against naive 0.0134, while Reg-PTQ without
    L_G reached 0.0119 and 60 iterations 0.0116: the global term's first steps set a very short run back.)"""
    held_out = SceneSet("val", size=16).images()
    teacher = Teacher(fp_model, held_out, theta_c=2e-4, theta_i=0.1)
    images = SceneSet("calib", size=16).images()
    losses = {}
    for method in ("naive", "regptq"):
        torch.manual_seed(0)
        qmodel = quantize_detector(fp_model, 4, 4, head_weight_kind=METHODS[method].head_weight_kind)
        run_method(method, qmodel, images, iters=60, seed=0, overrides={})
        with torch.no_grad():
            losses[method] = teacher.loss(qmodel, held_out, slice(None)).item()
    assert losses["regptq"] < losses["naive"], losses


def test_fisher_weights_are_taken_with_the_units_quantizers_on(fp_model, calib):
    """The first unit has nothing quantized upstream: g is zero while its quantizers are off, and not
    once they are on (Algorithm 1 switches them on before taking g)."""
    qmodel = quantize_detector(fp_model, 4, 4)
    init_quantizers(qmodel, calib)
    teacher = Teacher(copy.deepcopy(qmodel), calib, 2e-4, 0.1)
    name, unit = recon_units(qmodel)[0]
    before, _ = fisher_weights(qmodel, unit, calib, teacher.loss)
    prepare_unit(unit, ReconSettings())
    with hard_rounding(unit):
        after, global_loss = fisher_weights(qmodel, unit, calib, teacher.loss)
    assert before is None and after is not None and global_loss > 0, name
    assert all(m.soft for m in unit.modules() if isinstance(m, LearnedRounding))  # soft again afterwards


def test_regptq_in_the_shift_form_recomputes_with_integers(fp_model, calib):
    qmodel = quantize_detector(fp_model, 3, 4, head_weight_kind="llaq")
    run_method("regptq", qmodel, calib, iters=3, seed=0, overrides={"llaq_form": "shift"})
    grids = [(name, layer) for name, layer in quant_layers(qmodel) if llaq_of(layer.wq) is not None]
    assert grids and all(is_shift_form(llaq_of(layer.wq)) for _, layer in grids)
    layer = dict(grids)["head.regression_head.conv.2.0"]
    x = torch.rand(2, 64, 8, 8)
    with torch.no_grad():
        assert torch.allclose(integer_conv(layer, x), layer(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"llaq_rounding": "up"}, "LLAQ rounding"),
        ({"llaq_form": "int"}, "LLAQ form"),
        ({"global_every": 0}, "at least 1"),
    ],
)
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        ReconSettings(**bad)
