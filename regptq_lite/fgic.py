"""FGIC: the filtered global loss between the FP detector (teacher) and the quantized one.

For dense predictions i (one per anchor; the same anchor in both models):

    L_G = (1/n) sum_i [ BCE(y^_i, y_i) + lambda * |b_i - b^_i|_1 * I_HC,i * I_HI,i ]

y, y^ are the FP and quantized class probabilities (sigmoid heads: binary cross-entropy against
the FP probabilities, no labels, minus its constant value at y^ = y, so that L_G = 0 when the two
models agree: the binary KL divergence, with the same gradient), b, b^ the decoded boxes divided by the image size. The
two-step filter acts on the box term only: I_HC keeps predictions whose FP confidence
max_c y_i >= theta_C; I_HI keeps pairs with IoU(b_i, b^_i) >= theta_I (PAPER.md section 5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

THETA_C = 2e-4
THETA_I = 0.1


@dataclass
class DenseOutput:
    """A one-stage detector's raw outputs: per image, per anchor, before post-processing.

    For FCOS the centerness logit is appended to the class logits as one more sigmoid column
    (it multiplies into the score); ``num_classes`` counts the class columns only.
    """

    cls_logits: torch.Tensor  # N x A x C (C = num_classes, + 1 with centerness)
    bbox_regression: torch.Tensor  # N x A x 4 (box deltas)
    anchors: torch.Tensor  # A x 4 (the same for every image of one size)
    image_size: tuple[int, int]
    level_sizes: list[int]  # predictions per pyramid level, in order
    num_classes: int


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


def decode(model: nn.Module, deltas: torch.Tensor, anchors: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Box deltas (N x A x 4) -> boxes (N x A x 4) divided by the image size."""
    n, a, _ = deltas.shape
    coder = model.box_coder
    decode_rows = coder.decode_single if hasattr(coder, "decode_single") else coder.decode  # FCOS: linear coder
    boxes = decode_rows(deltas.reshape(-1, 4), anchors.repeat(n, 1)).reshape(n, a, 4)
    h, w = image_size
    return boxes / boxes.new_tensor([w, h, w, h])


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i] (boxes x0, y0, x1, y1; any leading shape)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1) + (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area - inter).clamp_min(1e-12)


def box_filter(fp_probs: torch.Tensor, fp_boxes: torch.Tensor, q_boxes: torch.Tensor, theta_c: float, theta_i: float):
    """The two-step filter I_HC * I_HI: FP confidence >= theta_C and IoU(FP, quantized) >= theta_I."""
    confident = fp_probs.amax(-1) >= theta_c
    overlapping = paired_iou(fp_boxes, q_boxes) >= theta_i
    return confident & overlapping


def global_loss(
    fp_logits: torch.Tensor,
    q_logits: torch.Tensor,
    fp_boxes: torch.Tensor,
    q_boxes: torch.Tensor,
    theta_c: float = THETA_C,
    theta_i: float = THETA_I,
    lam: float = 1.0,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_G for matched dense predictions (... x C logits, ... x 4 normalised boxes) and filter stats;
    the confidence filter looks at the first ``num_classes`` columns (default: all)."""
    fp_probs = torch.sigmoid(fp_logits)
    cls = F.binary_cross_entropy_with_logits(q_logits, fp_probs, reduction="none")
    cls = (cls - F.binary_cross_entropy_with_logits(fp_logits, fp_probs, reduction="none")).sum(-1)
    keep = box_filter(fp_probs[..., :num_classes], fp_boxes, q_boxes.detach(), theta_c, theta_i)
    box = (fp_boxes - q_boxes).abs().sum(-1) * keep
    n = cls.numel()
    loss = (cls.sum() + lam * box.sum()) / n
    return loss, {"kept": keep.float().mean().item(), "cls": cls.mean().item(), "box": box.sum().item() / n}


class Teacher:
    """The FP detector's dense outputs on the calibration images, and L_G against them."""

    def __init__(
        self, fp_model: nn.Module, images: list[torch.Tensor], theta_c: float, theta_i: float, batch_size: int = 32
    ) -> None:
        self.model, self.theta_c, self.theta_i = fp_model, theta_c, theta_i
        logits, boxes = [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                d = dense_forward(fp_model, images[start : start + batch_size])
                logits.append(d.cls_logits)
                boxes.append(decode(fp_model, d.bbox_regression, d.anchors, d.image_size))
        self.logits, self.boxes = torch.cat(logits), torch.cat(boxes)
        self.anchors, self.image_size, self.level_sizes = d.anchors, d.image_size, d.level_sizes
        self.num_classes = d.num_classes
        self.offsets = [sum(d.level_sizes[:i]) for i in range(len(d.level_sizes))]

    def loss(self, qmodel: nn.Module, images: list[torch.Tensor], rows: slice) -> torch.Tensor:
        """L_G of the whole quantized detector on ``images`` (calibration rows ``rows``)."""
        d = dense_forward(qmodel, images)
        q_boxes = decode(self.model, d.bbox_regression, d.anchors, d.image_size)
        fp_logits, fp_boxes = self.logits[rows], self.boxes[rows]
        return global_loss(
            fp_logits, d.cls_logits, fp_boxes, q_boxes, self.theta_c, self.theta_i, 1.0, self.num_classes
        )[0]

    def head_unit_loss(
        self, qmodel: nn.Module, unit_name: str
    ) -> Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None:
        """L_G as a function of a head tower unit's output, for one pyramid level and images idx.

        The rest of the tower and the prediction layer run on the unit's output; a class-tower
        unit changes only the class term, a box-tower unit only the (filtered) box term. None for
        units outside the towers, and for FCOS (its box tower also feeds centerness): the global
        loss then reaches the unit through the Fisher weights only.
        """
        if self.num_classes != self.logits.shape[-1]:
            return None
        finals = {"classification_head": "cls_logits", "regression_head": "bbox_reg"}
        tower_name = next((t for t in finals if unit_name.startswith(f"head.{t}.conv.")), None)
        if tower_name is None:
            return None
        final, prefix = finals[tower_name], f"head.{tower_name}.conv."
        tower = qmodel.get_submodule(f"head.{tower_name}")
        index, *inner = unit_name[len(prefix) :].split(".")
        rest = list(tower.conv[int(index)])[int(inner[0]) + 1 :] if inner else []
        downstream = nn.Sequential(*rest, *list(tower.conv)[int(index) + 1 :], getattr(tower, final))
        per_position = self.model.anchor_generator.num_anchors_per_location()[0]

        def loss(out: torch.Tensor, call: int, idx: torch.Tensor) -> torch.Tensor:
            y = downstream(out)
            n, _, h, w = y.shape
            y = y.view(n, per_position, -1, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * per_position, -1)
            rows = slice(self.offsets[call], self.offsets[call] + self.level_sizes[call])
            fp_logits, fp_boxes = self.logits[idx, rows], self.boxes[idx, rows]
            if final == "cls_logits":
                return global_loss(fp_logits, y, fp_boxes, fp_boxes, self.theta_c, self.theta_i)[0]
            q_boxes = decode(self.model, y, self.anchors[rows], self.image_size)
            return global_loss(fp_logits, fp_logits, fp_boxes, q_boxes, self.theta_c, self.theta_i)[0]

        return loss


@torch.no_grad()
def filter_view(
    fp_model: nn.Module, qmodel: nn.Module, image: torch.Tensor, theta_c: float = THETA_C, theta_i: float = THETA_I
) -> dict:
    """The two-step filter on one image: per anchor the FP and quantized boxes (pixels), FP confidence,
    and the masks I_HC (confident) and I_HC * I_HI (kept), with the share of anchors each keeps."""
    fp, q = dense_forward(fp_model, [image]), dense_forward(qmodel, [image])
    fp_boxes = decode(fp_model, fp.bbox_regression, fp.anchors, fp.image_size)[0]
    q_boxes = decode(fp_model, q.bbox_regression, q.anchors, q.image_size)[0]
    probs = torch.sigmoid(fp.cls_logits[0, :, : fp.num_classes])
    keep = box_filter(probs, fp_boxes, q_boxes, theta_c, theta_i)
    h, w = fp.image_size
    scale = fp_boxes.new_tensor([w, h, w, h])
    return {
        "fp_boxes": fp_boxes * scale,
        "q_boxes": q_boxes * scale,
        "confidence": probs.amax(-1),
        "confident": probs.amax(-1) >= theta_c,
        "keep": keep,
        "share_confident": (probs.amax(-1) >= theta_c).float().mean().item(),
        "share_kept": keep.float().mean().item(),
    }
