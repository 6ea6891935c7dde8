"""COCO box metrics with pycocotools, silent and safe on empty detections."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from .progress import progress
from .scenes import SceneSet

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _coco_from_dict(gt: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(gt: dict, detections: list[dict]) -> dict[str, float | None]:
    """AP, AP50, AP75, APs/m/l on the 0-100 scale for COCO-style ``detections`` against ``gt``.

    Each detection is ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
    No detections at all scores 0 (``loadRes([])`` would crash). A size range with no ground
    truth at all (pycocotools says -1) is None: the scenes have no COCO-"large" object (area over
    96^2 visible pixels), so APl is None on them.
    """
    if not detections:
        return {name: 0.0 for name in STAT_NAMES}
    coco_gt = _coco_from_dict(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {
        name: None if v < 0 else round(float(v) * 100, 2) for name, v in zip(STAT_NAMES, ev.stats[: len(STAT_NAMES)])
    }


def to_coco_detections(
    image_id: int, output: dict[str, torch.Tensor], label_to_category: dict[int, int] | None = None
) -> list[dict]:
    """torchvision detector output (x0, y0, x1, y1 boxes, 1-based labels) -> COCO detection dicts.

    With ``label_to_category``, labels are mapped to category ids and labels it lacks are dropped.
    """
    boxes = output["boxes"].detach().cpu().numpy().astype(np.float64)
    scores = output["scores"].detach().cpu().numpy()
    labels = output["labels"].detach().cpu().numpy()
    return [
        {
            "image_id": image_id,
            "category_id": int(label) if label_to_category is None else label_to_category[int(label)],
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(score),
        }
        for b, score, label in zip(boxes, scores, labels)
        if label_to_category is None or int(label) in label_to_category
    ]


@torch.no_grad()
def predict(model: nn.Module, scenes: SceneSet, batch_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Run ``model`` (eval mode, on its own device) over every image of ``scenes`` (a SceneSet or a
    CocoFolder); one torchvision output dict per image, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or scenes.eval_batch
    outputs: list[dict[str, torch.Tensor]] = []
    for start in progress(range(0, len(scenes), batch_size), desc="evaluate", unit="batch", leave=False):
        batch = [x.to(device) for x in scenes.images(range(start, min(start + batch_size, len(scenes))))]
        outputs.extend({k: v.cpu() for k, v in out.items()} for out in model(batch))
    return outputs


def evaluate(model: nn.Module, scenes: SceneSet) -> dict[str, float]:
    """COCO metrics of ``model`` on ``scenes`` (a SceneSet or a CocoFolder) plus the number of images."""
    detections = [
        d
        for image_id, out in zip(scenes.image_ids, predict(model, scenes))
        for d in to_coco_detections(image_id, out, scenes.label_to_category)
    ]
    return {**coco_metrics(scenes.coco, detections), "images": len(scenes)}
