"""The tiny Faster R-CNN and the two-stage calibration path: raw outputs on given proposals, L_G on
the RPN and the RoI head, and every method end to end (random weights: the path, not the accuracy)."""

import pytest
import torch

from regptq_lite.detectors import count_parameters, load_checkpoint
from regptq_lite.fgic import THETA_C, THETA_I, Teacher, global_loss
from regptq_lite.head_outputs import two_stage_forward
from regptq_lite.llaq import llaq_of
from regptq_lite.methods import METHODS, run_method
from regptq_lite.qmodel import quant_layers, quantize_detector
from regptq_lite.scenes import SceneSet


@pytest.fixture(scope="module")
def frcnn():
    torch.manual_seed(0)
    model, _ = load_checkpoint("tiny_fasterrcnn", "random")
    with torch.no_grad():  # a random RPN scores every anchor alike; spread it so proposals differ
        for p in model.rpn.head.parameters():
            p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def images():
    return SceneSet("calib", size=4).images()


def test_tiny_fasterrcnn_is_small(frcnn):
    assert 1_000_000 < count_parameters(frcnn) < 2_000_000


def test_own_proposals_match_the_detector(frcnn, images):
    out = two_stage_forward(frcnn, images[:2])
    batch, _ = frcnn.transform(images[:2])
    with torch.no_grad():
        own, _ = frcnn.rpn(batch, frcnn.backbone(batch.tensors))
    assert all(torch.equal(a, b) for a, b in zip(out.proposals, own))
    assert out.rpn.cls_logits.shape[:2] == out.rpn.bbox_regression.shape[:2] == (2, sum(out.rpn.level_sizes))
    assert len(out.roi_logits) == sum(len(p) for p in out.proposals)
    assert out.roi_deltas.shape[-1] == 4 * out.roi_logits.shape[-1]


def test_given_proposals_are_scored(frcnn, images):
    proposals = [torch.tensor([[10.0, 10.0, 60.0, 50.0], [0.0, 0.0, 127.0, 127.0]]), torch.zeros((0, 4))]
    out = two_stage_forward(frcnn, images[:2], proposals)
    assert len(out.roi_logits) == 2 and out.proposals[0] is proposals[0]
    swapped = two_stage_forward(frcnn, images[:2], [proposals[0].flip(0), proposals[1]])
    assert torch.allclose(swapped.roi_logits, out.roi_logits.flip(0), atol=1e-5)  # each score is its box's
    assert not torch.allclose(out.roi_logits[0], out.roi_logits[1])


def test_softmax_global_loss_is_zero_for_equal_heads_and_filters_boxes():
    logits = torch.randn(5, 4)
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5]]).repeat(5, 1)
    assert global_loss(logits, logits, boxes, boxes, softmax=True)[0].item() == pytest.approx(0.0, abs=1e-6)
    far = torch.tensor([[0.6, 0.6, 0.9, 0.9]]).repeat(5, 1)  # IoU 0 with the FP boxes: filtered out
    assert global_loss(logits, logits, boxes, far, softmax=True)[0].item() == pytest.approx(0.0, abs=1e-6)
    near = boxes + 0.01
    loss, stats = global_loss(logits, logits, boxes, near, softmax=True)
    assert loss.item() == pytest.approx(0.04, rel=1e-4) and stats["kept"] == 1.0
    assert global_loss(logits[:0], logits[:0], boxes[:0], boxes[:0], softmax=True)[0].item() == 0.0


def test_teacher_sees_rpn_and_roi_changes(frcnn, images):
    qmodel = quantize_detector(frcnn, 4, 4, head_weight_kind="llaq")
    teacher = Teacher(frcnn, images, THETA_C, THETA_I, batch_size=2)
    rows = slice(2, 4)
    assert teacher.loss(qmodel, images[rows], rows).item() == pytest.approx(0.0, abs=1e-6)  # quantizers off
    for layer in ("rpn.head.cls_logits", "roi_heads.box_predictor.bbox_pred"):
        changed = quantize_detector(frcnn, 4, 4)
        with torch.no_grad():
            changed.get_submodule(layer).layer.bias += 0.5
        assert teacher.loss(changed, images[rows], rows).item() > 1e-3, layer


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_calibrates_the_two_stage_detector(frcnn, images, method):
    qmodel = quantize_detector(frcnn, 4, 4, head_weight_kind=METHODS[method].head_weight_kind)
    details = run_method(method, qmodel, images, iters=2, seed=0, overrides={})
    if METHODS[method].reconstruct:
        units = [u["unit"] for u in details["units"]]
        rpn_unit = "rpn.head.conv.0.0" if METHODS[method].granularity == "layer" else "rpn.head.conv.0"
        assert units[-3:] == [rpn_unit, "roi_heads.box_head.fc6", "roi_heads.box_head.fc7"]
        assert all(torch.isfinite(torch.tensor(u["last_local"])) for u in details["units"])
        if method == "regptq":
            assert all(torch.isfinite(torch.tensor(u["last_global"])) for u in details["units"])
    heads = [layer for name, layer in quant_layers(qmodel) if name.startswith(("rpn.", "roi_heads."))]
    kinds = {llaq_of(layer.wq) is not None for layer in heads if layer.wq is not None}
    assert kinds == {METHODS[method].head_weight_kind == "llaq"}
    with torch.no_grad():
        detections = qmodel(images[:1])  # the detector still runs on its own (quantized) proposals
    assert len(detections) == 1 and {"boxes", "scores", "labels"} <= set(detections[0])
