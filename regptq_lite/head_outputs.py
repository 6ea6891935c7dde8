"""A detector's raw head outputs before post-processing: what FGIC compares between the FP detector
and the quantized one (PAPER.md section 5).

- one-stage (RetinaNet, FCOS): ``dense_forward`` gives, per image and anchor, class logits and box
  deltas; the same anchor index pairs the two models' predictions;
- two-stage (Faster R-CNN): ``two_stage_forward`` gives the RPN's dense outputs (objectness as a
  one-class sigmoid head) and the RoI head's outputs on *given* proposals, so that the FP and the
  quantized RoI heads score the same boxes (the FP proposals, in calibration).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DenseOutput:
    """A dense head's raw outputs: per image, per anchor, before post-processing.

    For FCOS the centerness logit is appended to the class logits as one more sigmoid column
    (it multiplies into the score); ``num_classes`` counts the class columns only.
    """

    cls_logits: torch.Tensor  # N x A x C (C = num_classes, + 1 with centerness)
    bbox_regression: torch.Tensor  # N x A x 4 (box deltas)
    anchors: torch.Tensor  # A x 4 (the same for every image of one size)
    image_size: tuple[int, int]
    level_sizes: list[int]  # predictions per pyramid level, in order
    num_classes: int


@dataclass
class TwoStageOutput:
    """A Faster R-CNN's raw outputs: the RPN as a dense head, and the RoI head on ``proposals``."""

    rpn: DenseOutput  # one class column: objectness
    roi_logits: torch.Tensor  # R x (C + 1) softmax logits, background first; R = all images' proposals
    roi_deltas: torch.Tensor  # R x (C + 1) * 4 class-specific box deltas
    proposals: list[torch.Tensor]  # per image, K_i x 4 boxes in pixels


def dense_forward(model: nn.Module, images: list[torch.Tensor]) -> DenseOutput:
    """Run a torchvision RetinaNet or FCOS up to its head outputs (images must share one size)."""
    batch, _ = model.transform(images)
    features = list(model.backbone(batch.tensors).values())
    out = model.head(features)
    anchors = model.anchor_generator(batch, features)[0]
    per_position = model.anchor_generator.num_anchors_per_location()[0]
    sizes = [f.shape[-2] * f.shape[-1] * per_position for f in features]
    logits = out["cls_logits"]
    if "bbox_ctrness" in out:
        logits = torch.cat([logits, out["bbox_ctrness"]], -1)
    size = tuple(batch.tensors.shape[-2:])
    return DenseOutput(logits, out["bbox_regression"], anchors, size, sizes, out["cls_logits"].shape[-1])


def flatten_levels(per_level: list[torch.Tensor], columns: int) -> torch.Tensor:
    """RPN head maps (N x A*columns x H x W per level) -> N x sum(H*W*A) x columns, in the order
    torchvision's anchors are generated."""
    flat = []
    for x in per_level:
        n, _, h, w = x.shape
        flat.append(x.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, columns))
    return torch.cat(flat, 1)


def two_stage_forward(
    model: nn.Module, images: list[torch.Tensor], proposals: list[torch.Tensor] | None = None
) -> TwoStageOutput:
    """Run a torchvision Faster R-CNN up to its RPN and RoI head outputs (images must share one
    size). The RoI head scores ``proposals`` (one tensor per image), or the model's own if None."""
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    levels = list(features.values())
    objectness, deltas = model.rpn.head(levels)
    anchors = model.rpn.anchor_generator(batch, levels)
    sizes = [o.shape[-3] * o.shape[-2] * o.shape[-1] for o in objectness]
    objectness, deltas = flatten_levels(objectness, 1), flatten_levels(deltas, 4)
    if proposals is None:
        boxes = model.rpn.box_coder.decode(deltas.detach().reshape(-1, 4), anchors).view(len(images), -1, 4)
        proposals, _ = model.rpn.filter_proposals(boxes, objectness.detach(), batch.image_sizes, sizes)
    roi = model.roi_heads
    pooled = roi.box_roi_pool(features, proposals, batch.image_sizes)
    logits, box_deltas = roi.box_predictor(roi.box_head(pooled))
    size = tuple(batch.tensors.shape[-2:])
    rpn = DenseOutput(objectness, deltas, anchors[0], size, sizes, 1)
    return TwoStageOutput(rpn, logits, box_deltas, list(proposals))


def _normalised(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Boxes in pixels -> boxes divided by the image size (x by its width, y by its height)."""
    h, w = image_size
    return boxes / boxes.new_tensor([w, h, w, h])


def decode(model: nn.Module, deltas: torch.Tensor, anchors: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """A dense head's box deltas (N x A x 4) -> boxes (N x A x 4) divided by the image size."""
    n, a, _ = deltas.shape
    coder = model.rpn.box_coder if hasattr(model, "rpn") else model.box_coder
    decode_rows = coder.decode_single if hasattr(coder, "decode_single") else coder.decode  # FCOS: linear coder
    return _normalised(decode_rows(deltas.reshape(-1, 4), anchors.repeat(n, 1)).reshape(n, a, 4), image_size)


def decode_roi(
    model: nn.Module, deltas: torch.Tensor, proposals: torch.Tensor, classes: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """RoI box deltas (R x (C + 1) * 4) -> the box of class ``classes[r]`` for each RoI r (R x 4),
    divided by the image size."""
    rows = torch.arange(len(deltas), device=deltas.device)
    picked = deltas.view(len(deltas), -1, 4)[rows, classes]
    return _normalised(model.roi_heads.box_coder.decode_single(picked, proposals), image_size)
