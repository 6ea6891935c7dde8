import numpy as np
import pytest

from regptq_lite.coco_eval import coco_metrics
from regptq_lite.scenes import coco_dict, make_scene


@pytest.fixture(scope="module")
def gt():
    return coco_dict([make_scene(2, i) for i in range(10)])


def _detections(gt, shift=0.0, scale=1.0):
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + shift, a["bbox"][1], a["bbox"][2] * scale, a["bbox"][3] * scale],
            "score": 0.9,
        }
        for a in gt["annotations"]
    ]


def test_perfect_detections_score_100(gt):
    metrics = coco_metrics(gt, _detections(gt))
    assert metrics["AP"] == pytest.approx(100.0) and metrics["AP50"] == pytest.approx(100.0)


def test_no_detections_score_0(gt):
    assert coco_metrics(gt, []) == {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}


def test_shifted_boxes_score_in_between(gt):
    metrics = coco_metrics(gt, _detections(gt, shift=2.0))
    assert 0.0 < metrics["AP"] < 100.0
    assert metrics["AP50"] >= metrics["AP"]


def test_wrong_class_scores_0(gt):
    """Every detection says class 1, but no object of class 1 is in the ground truth."""
    gt = {**gt, "annotations": [a for a in gt["annotations"] if a["category_id"] != 1]}
    dets = [{**d, "category_id": 1} for d in _detections(gt)]
    assert coco_metrics(gt, dets)["AP"] == 0.0


def test_worse_boxes_score_lower(gt):
    aps = [coco_metrics(gt, _detections(gt, scale=s))["AP"] for s in (1.0, 1.1, 1.3)]
    assert np.all(np.diff(aps) < 0)
