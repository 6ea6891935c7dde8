import copy

import pytest
import torch
import torchvision
from torch import nn

from regptq_lite.bn_fold import fold_batchnorm
from regptq_lite.detectors import TORCHVISION_DETECTORS, build_model
from regptq_lite.export import code_dtype, export_integer, integer_conv, save_integer
from regptq_lite.observe import init_quantizers
from regptq_lite.qmodel import (
    FIRST_LAYER_BITS,
    PREDICTION_LAYERS,
    policy_table,
    quant_layers,
    quantize_detector,
    set_quant,
)
from regptq_lite.scenes import SceneSet


@pytest.fixture(scope="module")
def images():
    return SceneSet("calib", size=4).images()


def _with_random_bn_stats(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def test_bn_folding_leaves_outputs_unchanged(images):
    model = _with_random_bn_stats(build_model("tiny_retinanet")[0])
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = model.transform(images)[0].tensors
    with torch.no_grad():
        a, b = model.backbone(x), folded.backbone(x)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4, rtol=1e-4)


def test_bn_folding_on_a_torchvision_resnet_block():
    block = torchvision.models.resnet.Bottleneck(64, 16)
    _with_random_bn_stats(block)
    x = torch.randn(2, 64, 8, 8)
    folded = copy.deepcopy(block)
    assert fold_batchnorm(folded) == 3
    with torch.no_grad():
        assert torch.allclose(block(x), folded(x), atol=1e-4)


def test_policy_first_layer_8_bits_prediction_layers_float():
    qmodel = quantize_detector(build_model("tiny_retinanet")[0], 4, 4)
    layers = quant_layers(qmodel)
    first = layers[0][1].policy
    assert (first.wbits, first.abits) == (FIRST_LAYER_BITS, FIRST_LAYER_BITS)
    predictions = [layer for name, layer in layers if name in PREDICTION_LAYERS]
    assert len(predictions) == 2
    assert all(layer.wq is None and layer.aq is None for layer in predictions)
    others = [layer.policy for name, layer in layers[1:] if name not in PREDICTION_LAYERS]
    assert all((p.wbits, p.abits) == (4, 4) for p in others)
    unwrapped = [
        n for n, m in qmodel.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and not n.endswith(".layer")
    ]
    assert not unwrapped  # every conv/linear sits inside a QuantLayer
    table = policy_table(qmodel)
    assert "first layer at 8 bits" in table and "final prediction layer stays in float" in table


def test_backbone_neck_regime_keeps_the_head_float():
    qmodel = quantize_detector(build_model("tiny_retinanet")[0], 4, 4, regime="backbone_neck")
    for name, layer in quant_layers(qmodel):
        assert (layer.wq is None) == name.startswith("head.")


def test_llaq_goes_on_head_weights_only():
    qmodel = quantize_detector(build_model("tiny_retinanet")[0], 4, 4, head_weight_kind="llaq")
    for name, layer in quant_layers(qmodel):
        if layer.wq is not None:
            assert (layer.policy.weight_kind == "llaq") == name.startswith("head.")


@pytest.mark.parametrize("bad", [0, 33, 2.5])
def test_bad_bits_are_rejected(bad):
    with pytest.raises(ValueError, match="bit-width"):
        quantize_detector(build_model("tiny_retinanet")[0], bad, 4)


def test_unknown_regime_is_rejected():
    with pytest.raises(ValueError, match="unknown regime"):
        quantize_detector(build_model("tiny_retinanet")[0], 4, 4, regime="head_only")


def test_switches_start_off_and_turn_on(images):
    fp = build_model("tiny_retinanet")[0].eval()
    qmodel = quantize_detector(fp, 2, 2)
    init_quantizers(qmodel, images)
    x = fp.transform(images)[0].tensors
    with torch.no_grad():
        off = qmodel.backbone(x)["p3"]
        set_quant(qmodel, weights=True, activations=True)
        on = qmodel.backbone(x)["p3"]
    assert torch.allclose(off, fp.backbone(x)["p3"], atol=1e-4)
    assert not torch.allclose(off, on, atol=1e-3)


@pytest.mark.parametrize("kind", ["uniform", "llaq"])
def test_integer_recomputation_matches_fake_quant(images, kind):
    fp = build_model("tiny_retinanet")[0].eval()
    qmodel = quantize_detector(fp, 4, 4, head_weight_kind=kind)
    init_quantizers(qmodel, images)
    set_quant(qmodel, weights=True, activations=True)
    layer = qmodel.head.regression_head.conv[1][0]
    if kind == "llaq":  # the shift form, with every kind of k: pure shifts (k <= 1) and lookups (k > 1)
        grid = layer.wq
        with torch.no_grad():
            grid.k_pos.copy_(torch.exp2(torch.arange(64.0).remainder(4) - 1).reshape(grid.k_pos.shape))
            grid.k_neg.copy_(torch.exp2(torch.arange(64.0).remainder(3) - 1).reshape(grid.k_neg.shape))
        grid.snap_k_().snap_m_()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        fake = layer(x)
    assert torch.allclose(integer_conv(layer, x), fake, atol=1e-4, rtol=1e-4)


def test_a_shift_form_layer_is_recomputed_by_integer_arithmetic_and_only_llaq_layers_qualify():
    from regptq_lite.export import is_shift_form, shift_form_layer

    fp = build_model("tiny_retinanet")[0].eval()
    x = torch.rand(2, 64, 8, 8, generator=torch.Generator().manual_seed(0))
    layer = shift_form_layer(fp, "head.regression_head.conv.3.0", 3, 4, x)
    assert is_shift_form(layer.wq) and layer.wq.bits == 3
    with torch.no_grad():
        assert torch.allclose(integer_conv(layer, x), layer(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="not a layer with LLAQ weights"):
        shift_form_layer(fp, "backbone.stem.conv", 3, 4, x)


def test_integer_recomputation_refuses_llaq_outside_the_shift_form(images):
    fp = build_model("tiny_retinanet")[0].eval()
    qmodel = quantize_detector(fp, 4, 4, head_weight_kind="llaq")
    init_quantizers(qmodel, images)
    set_quant(qmodel, weights=True, activations=True)
    layer = qmodel.head.regression_head.conv[1][0]
    with torch.no_grad():
        layer.wq.k_pos.fill_(1.3)
    with pytest.raises(ValueError, match="shift form"):
        integer_conv(layer, torch.randn(1, 64, 4, 4))


def test_export_holds_codes_scales_and_kind(images, tmp_path):
    fp = build_model("tiny_retinanet")[0].eval()
    qmodel = quantize_detector(fp, 3, 4, head_weight_kind="llaq")
    init_quantizers(qmodel, images)
    form = export_integer(qmodel)
    assert form["backbone.stem.conv"]["kind"] == "uniform" and form["backbone.stem.conv"]["wbits"] == 8
    head = form["head.regression_head.conv.0.0"]
    assert head["kind"] == "llaq" and head["weight_codes"].dtype == torch.int8
    assert head["weight_codes"].min() >= -4 and head["weight_codes"].max() <= 3
    assert "weight" in form["head.regression_head.bbox_reg"]
    tensors = [value for layer in form.values() for value in layer.values() if torch.is_tensor(value)]
    assert all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)  # no Parameter, no GPU tensor
    path = save_integer(qmodel, tmp_path / "q.pt")
    assert path.is_file() and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(FileNotFoundError):
        save_integer(qmodel, tmp_path / "missing" / "q.pt")


@pytest.mark.parametrize("wbits", [8, 12, 16])
def test_exported_codes_keep_their_values_at_every_bit_width(images, wbits):
    """Codes go to the smallest integer type that holds them: none wraps around at 9-16 bits."""
    fp = build_model("tiny_retinanet")[0].eval()
    qmodel = quantize_detector(fp, wbits, 8, head_weight_kind="llaq")
    init_quantizers(qmodel, images)
    layers = dict(quant_layers(qmodel))
    form = export_integer(qmodel)
    for name in ("backbone.layer1.0.conv", "head.regression_head.conv.0.0"):
        layer = layers[name]
        codes = layer.wq.codes(layer.layer.weight).long()
        stored = form[name]["weight_codes"]
        assert torch.equal(stored.long(), codes), name
        assert stored.dtype == code_dtype(wbits, signed=form[name]["kind"] == "llaq"), name
    assert code_dtype(16, signed=False) == torch.int32 and code_dtype(9, signed=True) == torch.int16


@pytest.mark.parametrize("name", TORCHVISION_DETECTORS)
def test_torchvision_detectors_quantize_fully(name):
    torch.manual_seed(0)
    builder = torchvision.models.detection.__dict__[name]
    model = builder(weights=None, weights_backbone=None, min_size=64, max_size=64).eval()
    qmodel = quantize_detector(model, 4, 4)
    layers = quant_layers(qmodel)
    assert layers[0][0] == "backbone.body.conv1" and layers[0][1].policy.wbits == 8
    floats = {n for n, layer in layers if layer.wq is None}
    assert floats and floats <= PREDICTION_LAYERS
    assert not any(isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d) for m in qmodel.modules())
    for _, layer in layers:  # min-max: the MSE search over 25-40 M weights is tested elsewhere and costs ~20 s here
        for quantizer in (layer.wq, layer.aq):
            if quantizer is not None:
                quantizer.observer = "minmax"
    images = [torch.rand(3, 64, 64)]
    init_quantizers(qmodel, images)
    set_quant(qmodel, weights=True, activations=True)
    with torch.no_grad():
        out = qmodel(images)
    assert set(out[0]) >= {"boxes", "scores", "labels"}
