"""FGIC: the filtered global loss between the FP detector (teacher) and the quantized one.

For dense predictions i (one per anchor; the same anchor in both models):

    L_G = (1/n) sum_i [ BCE(y^_i, y_i) + lambda * |b_i - b^_i|_1 * I_HC,i * I_HI,i ]

y, y^ are the FP and quantized class probabilities (sigmoid heads: binary cross-entropy against
the FP probabilities, no labels, minus its constant value at y^ = y, so that L_G = 0 when the two
models agree: the binary KL divergence, with the same gradient), b, b^ the decoded boxes divided by the image size. The
two-step filter acts on the box term only: I_HC keeps predictions whose FP confidence
max_c y_i >= theta_C; I_HI keeps pairs with IoU(b_i, b^_i) >= theta_I (PAPER.md section 5).

Two-stage detectors add the same loss on the RPN (objectness as one sigmoid class) and a softmax
form on the RoI head, whose predictions pair up because both models score the FP proposals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .detectors import is_two_stage
from .head_outputs import (
    DenseOutput,
    TwoStageOutput,
    decode,
    decode_roi,
    dense_forward,
    two_stage_forward,
)

THETA_C = 2e-4
THETA_I = 0.1


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
    softmax: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_G for matched predictions (... x C logits, ... x 4 normalised boxes) and filter stats.

    Sigmoid heads (dense): the binary KL divergence per class; the confidence filter looks at the
    first ``num_classes`` columns (default: all). ``softmax`` (a RoI head, background first): KL(p || p^)
    of the softmax, and the confidence is the most likely foreground class's probability.
    """
    if softmax:
        fp_log_probs = fp_logits.log_softmax(-1)
        cls = (fp_log_probs.exp() * (fp_log_probs - q_logits.log_softmax(-1))).sum(-1)
        confidence = fp_log_probs[..., 1:].exp()
    else:
        fp_probs = torch.sigmoid(fp_logits)
        cls = F.binary_cross_entropy_with_logits(q_logits, fp_probs, reduction="none")
        cls = (cls - F.binary_cross_entropy_with_logits(fp_logits, fp_probs, reduction="none")).sum(-1)
        confidence = fp_probs[..., :num_classes]
    keep = box_filter(confidence, fp_boxes, q_boxes.detach(), theta_c, theta_i)
    box = (fp_boxes - q_boxes).abs().sum(-1) * keep
    n = max(cls.numel(), 1)
    loss = (cls.sum() + lam * box.sum()) / n
    kept = keep.float().mean().item() if keep.numel() else 0.0
    return loss, {"kept": kept, "cls": cls.sum().item() / n, "box": box.sum().item() / n}


class Teacher:
    """The FP detector's raw head outputs on the calibration images, and L_G against them.

    One-stage: per image and anchor, class logits and decoded boxes. Two-stage: the same for the
    RPN, plus the FP proposals and the RoI head's logits and boxes (of the FP's most likely
    foreground class) on them; the quantized detector's RoI head scores the FP proposals too
    (``forward``), so that its boxes pair with the FP ones (PAPER.md section 5).
    """

    def __init__(
        self, fp_model: nn.Module, images: list[torch.Tensor], theta_c: float, theta_i: float, batch_size: int = 32
    ) -> None:
        self.model, self.theta_c, self.theta_i = fp_model, theta_c, theta_i
        self.two_stage = is_two_stage(fp_model)
        self.proposals: list[torch.Tensor] = []
        logits, boxes, roi_logits, roi_boxes, roi_classes = [], [], [], [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                out = self.forward(fp_model, images[start : start + batch_size], None)
                d = out.rpn if self.two_stage else out
                logits.append(d.cls_logits)
                boxes.append(decode(fp_model, d.bbox_regression, d.anchors, d.image_size))
                if self.two_stage:
                    self.proposals += out.proposals
                    classes = out.roi_logits[:, 1:].argmax(-1) + 1
                    proposals = torch.cat(out.proposals)
                    roi_logits.append(out.roi_logits)
                    roi_classes.append(classes)
                    roi_boxes.append(decode_roi(fp_model, out.roi_deltas, proposals, classes, d.image_size))
        self.logits, self.boxes = torch.cat(logits), torch.cat(boxes)
        self.anchors, self.image_size, self.level_sizes = d.anchors, d.image_size, d.level_sizes
        self.num_classes = d.num_classes
        self.offsets = [sum(d.level_sizes[:i]) for i in range(len(d.level_sizes))]
        if self.two_stage:
            self.roi_logits, self.roi_boxes = torch.cat(roi_logits), torch.cat(roi_boxes)
            self.roi_classes, self.roi_proposals = torch.cat(roi_classes), torch.cat(self.proposals)
            counts = torch.tensor([0] + [len(p) for p in self.proposals])
            self.roi_offsets = counts.cumsum(0).tolist()

    def forward(self, model: nn.Module, images: list[torch.Tensor], rows: slice | None) -> DenseOutput | TwoStageOutput:
        """Run ``model`` on calibration images ``rows`` up to its head outputs; a two-stage model's RoI
        head scores the FP proposals of those images (its own if ``rows`` is None)."""
        if not self.two_stage:
            return dense_forward(model, images)
        return two_stage_forward(model, images, None if rows is None else self.proposals[rows])

    def _level_rows(self, call: int) -> slice:
        """The predictions of pyramid level ``call`` (a shared head's call) among each image's."""
        return slice(self.offsets[call], self.offsets[call] + self.level_sizes[call])

    def _roi_rows(self, rows: slice) -> slice:
        last = len(self.proposals)
        return slice(self.roi_offsets[min(rows.start, last)], self.roi_offsets[min(rows.stop, last)])

    def loss(self, qmodel: nn.Module, images: list[torch.Tensor], rows: slice) -> torch.Tensor:
        """L_G of the whole quantized detector on ``images`` (calibration rows ``rows``)."""
        out = self.forward(qmodel, images, rows)
        d = out.rpn if self.two_stage else out
        q_boxes = decode(self.model, d.bbox_regression, d.anchors, d.image_size)
        fp_logits, fp_boxes = self.logits[rows], self.boxes[rows]
        loss = global_loss(
            fp_logits, d.cls_logits, fp_boxes, q_boxes, self.theta_c, self.theta_i, 1.0, self.num_classes
        )[0]
        if self.two_stage:
            r = self._roi_rows(rows)
            q_roi = decode_roi(self.model, out.roi_deltas, self.roi_proposals[r], self.roi_classes[r], d.image_size)
            roi_args = (self.roi_logits[r], out.roi_logits, self.roi_boxes[r], q_roi, self.theta_c, self.theta_i)
            loss = loss + global_loss(*roi_args, softmax=True)[0]
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
