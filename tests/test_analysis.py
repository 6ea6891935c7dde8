import copy

import pytest
import torch

from regptq_lite import analysis
from regptq_lite.scenes import SceneSet


def test_weight_table_covers_both_towers_and_prediction_layers(fp_model):
    table = analysis.head_weight_table(fp_model)
    branches = [r["branch"] for r in table]
    assert branches.count("class") == branches.count("box") == 5
    assert all(0 <= r["clipped"] < 0.5 for r in table)


def test_activation_table_sees_every_head_conv(fp_model):
    table = analysis.head_activation_table(fp_model, SceneSet("calib", size=2).images())
    assert [r["layer"] for r in table] == list(analysis.head_convs(fp_model))
    assert all(0 <= r["zeros"] <= 1 for r in table)


def test_perturbing_one_branch_leaves_the_other_alone(fp_model):
    noisy = analysis.perturbed(fp_model, "box", 0.3, "uniform", seed=0)
    before, after = analysis.head_convs(fp_model), analysis.head_convs(noisy)
    for name in before:
        same = torch.equal(before[name].weight, after[name].weight)
        assert same == (analysis.branch_of(name) == "class")
    quiet = analysis.perturbed(fp_model, "class", 0.0, "gaussian", 0)
    assert torch.equal(
        quiet.head.classification_head.cls_logits.weight, fp_model.head.classification_head.cls_logits.weight
    )


def test_unknown_branch_is_rejected(fp_model):
    with pytest.raises(ValueError, match="unknown branch"):
        analysis.perturbed(fp_model, "mask", 0.1, "uniform", 0)


def test_branch_noise_rows(fp_model):
    result = analysis.branch_noise(fp_model, sigmas=(0.0, 3.0), images=4)
    assert set(result) == {"class", "box"}
    assert result["class"][0] == result["box"][0]  # zero noise: the same model
    assert all(len(row) == 4 for rows in result.values() for row in rows)
    assert all(rows[1][0] == 3.0 and rows[1][1] < rows[0][1] for rows in result.values())  # noise 3x std costs AP


def test_part_quantization_splits_the_detector(fp_model):
    from regptq_lite.coco_eval import evaluate
    from regptq_lite.observe import init_quantizers
    from regptq_lite.qmodel import quant_layers, quantize_detector

    qmodel = quantize_detector(fp_model, 2, 4, regime="full")
    init_quantizers(qmodel, SceneSet("calib", size=4).images())
    parts = analysis.detector_parts(qmodel)
    named = [n for names in parts.values() for n in names]
    assert sorted(named) == sorted(n for n, _ in quant_layers(qmodel))  # every layer in exactly one part
    scenes = SceneSet("val", size=4)
    rows = analysis.part_quantization(qmodel, scenes)
    cases = [(r["part"], r["quantized"]) for r in rows]
    assert cases[0] == ("none", "-") and cases[-1] == ("all", "-") and len(cases) == 2 + 2 * len(parts)
    assert {("box branch", "only"), ("box branch", "all but")} <= set(cases)
    assert rows[0]["AP"] == evaluate(fp_model, scenes)["AP"]  # nothing quantized: the float detector
    assert rows[-1]["AP"] == evaluate(qmodel, scenes)["AP"]  # quantization is back on afterwards
    assert rows[-1]["AP"] < rows[0]["AP"]


def test_part_sizes_count_every_quantized_layer_and_weight_once(fp_model):
    from regptq_lite.qmodel import quant_layers, quantize_detector

    qmodel = quantize_detector(fp_model, 4, 4, regime="full")
    sizes = analysis.part_sizes(qmodel)
    layers = quant_layers(qmodel)
    assert set(sizes) == {"backbone", "neck", "class branch", "box branch"}
    assert sum(s["layers"] for s in sizes.values()) == len(layers)
    assert sum(s["weights"] for s in sizes.values()) == sum(q.layer.weight.numel() for _, q in layers)
    assert sizes["class branch"]["layers"] == sizes["box branch"]["layers"] > 0


def test_part_costs_measure_each_part_against_its_own_reference():
    rows = [
        {"part": "none", "quantized": "-", "AP": 70.0},
        {"part": "backbone", "quantized": "only", "AP": 50.0},
        {"part": "box branch", "quantized": "only", "AP": 66.0},
        {"part": "backbone", "quantized": "all but", "AP": 45.0},
        {"part": "box branch", "quantized": "all but", "AP": 31.0},
        {"part": "all", "quantized": "-", "AP": 30.0},
    ]
    costs = analysis.part_costs(rows)
    assert costs["only"] == {"backbone": 20.0, "box branch": 4.0}  # against nothing quantized
    assert costs["all but"] == {"backbone": 15.0, "box branch": 1.0}  # against everything quantized


def test_branch_costs_measure_each_branch_against_nothing_quantized():
    cases = {"none": {"AP": 70.0, "AP50": 90.0}, "class": {"AP": 66.0, "AP50": 80.0}, "box": {"AP": 60.0, "AP50": 88.0}}
    costs = analysis.branch_costs({"W2A4": cases, "W3A3": {**cases, "box": cases["none"]}}, metrics=("AP", "AP50"))
    assert costs[("W2A4", "AP")] == {"class": 4.0, "box": 10.0}
    assert costs[("W2A4", "AP50")] == {"class": 10.0, "box": 2.0}
    assert costs[("W3A3", "AP")] == {"class": 4.0, "box": 0.0}


def _detections(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict:
    boxes = torch.tensor(boxes, dtype=torch.float).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.long), "scores": torch.tensor(scores)}


def test_box_drift_pairs_each_float_box_with_the_same_class_box_that_overlaps_it_most():
    fp = [_detections([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [1, 2, 3], [0.9, 0.9, 0.9])]
    q = [
        _detections(
            [[1, 0, 11, 10], [20, 20, 40, 40], [50, 50, 60, 60], [0, 0, 10, 10], [50, 50, 60, 60]],
            [1, 1, 3, 2, 3],  # the exact copy of box 1 has the wrong class; box 2's copy too
            [0.8, 0.8, 0.9, 0.9, 0.4],  # the last one scores under the threshold
        )
    ]
    drift = analysis.box_drift(fp, q)
    assert (drift["fp_detections"], drift["detections"]) == (3, 4)
    assert drift["found"] == pytest.approx(2 / 3)  # box 2 has no same-class partner
    assert drift["iou"] == pytest.approx((9 * 10 / (11 * 10) + 1) / 2)
    assert drift["edge_shift"] == pytest.approx((0.5 + 0) / 2)  # two edges moved by 1 pixel, then none


def test_box_drift_of_a_detector_that_finds_nothing_is_nan_not_an_error():
    fp = [_detections([[0, 0, 10, 10]], [1], [0.9])]
    drift = analysis.box_drift(fp, [_detections([], [], [])])
    assert drift["found"] == 0 and drift["detections"] == 0
    assert torch.isnan(torch.tensor(drift["iou"])) and torch.isnan(torch.tensor(drift["edge_shift"]))
    assert analysis.box_drift(fp, fp)["edge_shift"] == 0


def test_llaq_drift_sees_channels_that_move_apart(fp_model):
    from regptq_lite.llaq import llaq_of
    from regptq_lite.qmodel import quant_layers, quantize_detector

    qmodel = quantize_detector(fp_model, 2, 4, head_weight_kind="llaq")
    name, layer = next((n, q) for n, q in quant_layers(qmodel) if llaq_of(q.wq) is not None)
    grid = llaq_of(layer.wq)
    grid.init(layer.layer.weight.detach())
    with torch.no_grad():  # channels alternately one code up and one down: their mean stays put
        grid.a_pos += torch.tensor([1.0, -1.0]).repeat(grid.a_pos.numel() // 2).reshape(grid.a_pos.shape)
    row = next(r for r in analysis.llaq_drift(qmodel) if r["layer"] == name and r["side"] == "pos")
    assert row["a_learned"] == pytest.approx(row["a_init"], abs=1e-5)
    assert row["a_moved"] == pytest.approx(1.0, abs=1e-5)


def _tower_weight(fp_model) -> torch.Tensor:
    return fp_model.get_submodule("head.regression_head.conv.3.0").weight.detach()


def test_llaq_channel_params_give_five_numbers_per_output_channel(fp_model):
    from regptq_lite.llaq import PARAMS, LogAffineQuantizer

    weight = _tower_weight(fp_model)
    grid = LogAffineQuantizer(4, channel_axis=0)
    grid.init(weight)
    params = analysis.llaq_channel_params(grid)
    assert list(params) == list(PARAMS)
    assert all(len(values) == weight.shape[0] for values in params.values())
    assert params["m"] == grid.m.flatten().tolist()


def test_straight_through_rounding_gives_a_no_gradient_from_unclamped_weights_and_learned_rounding_does(fp_model):
    from regptq_lite.llaq import LogAffineQuantizer

    weight = _tower_weight(fp_model)
    grid = LogAffineQuantizer(4, channel_axis=0)
    grid.init(weight)
    before = analysis.llaq_channel_params(grid)
    grads = analysis.rounding_gradients(grid, weight, seed=1)
    assert grads["nearest"]["da_pos"] == 0 and grads["learned"]["da_pos"] > 0
    assert grads["nearest"]["dm"] > 0 and grads["learned"]["dk_pos"] > 0
    assert grads == analysis.rounding_gradients(grid, weight, seed=1)  # seeded
    assert analysis.llaq_channel_params(grid) == before  # the grid itself is left as it was


def test_the_regularizer_curve_is_the_roundings_own_regularizer_zero_at_the_ends_and_one_in_the_middle():
    curve = analysis.regularizer_curve(betas=(20, 2), points=5)
    h, values = curve[2]
    assert h == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert values == pytest.approx([0, 0.75, 1, 0.75, 0], abs=1e-5)  # 1 - |2h - 1|^2
    assert all(high >= low for high, low in zip(curve[20][1], values))  # a larger beta: flatter, higher


def test_the_iou_step_removes_nothing_from_a_copy_and_more_the_stricter_it_is(fp_model):
    images = SceneSet("val", size=2).images()
    assert analysis.iou_step_removals(fp_model, fp_model, images, (0.1, 0.99)) == {0.1: 0.0, 0.99: 0.0}
    moved = copy.deepcopy(fp_model)
    with torch.no_grad():
        moved.head.regression_head.bbox_reg.bias += 0.5  # every box shifts and grows: IoU with its twin falls
    shares = analysis.iou_step_removals(fp_model, moved, images, (0.0, 0.3, 0.99))
    assert shares[0.0] == 0 and shares[0.3] <= shares[0.99] and 0.5 < shares[0.99] <= 1
