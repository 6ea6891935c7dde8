"""Checks of notebook 05: FGIC's two-step filter on the FP model's confidence and the IoU (``filter_mask``)
and its filtered global loss (``global_loss``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import fgic
from ..fgic import THETA_C, THETA_I, box_filter, paired_iou
from .core import Case, _call, _fail, _passed, _run, _verdict


def filter_mask(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(fp_probs, q_probs, fp_boxes, q_boxes, theta_c, theta_i)``: FGIC's mask I_HC * I_HI per anchor, as
    booleans: the FP confidence max_c fp_probs >= theta_C and IoU(FP box, quantized box) >= theta_I."""
    rows = [  # FP class probabilities, quantized ones, FP box, quantized box
        ([0.9, 0.0], [0.9, 0.1], [0, 0, 10, 10], [1, 1, 10, 10]),  # confident, IoU 0.81
        ([1e-5, 1e-5], [0.8, 1e-5], [0, 0, 10, 10], [0, 0, 10, 10]),  # only the quantized model is confident
        ([0.3, 0.6], [0.3, 0.6], [0, 0, 10, 10], [20, 20, 30, 30]),  # confident, the boxes apart
        ([0.5, 0.1], [0.5, 0.1], [0, 0, 10, 10], [1, 1, 10, 10]),  # confidence exactly 0.5
        ([0.0, 0.001], [0.0, 1e-4], [0, 0, 4, 4], [0, 0, 4, 4]),  # above theta_C for the FP model only
        ([0.25, 0.25], [0.1, 0.1], [2, 2, 6, 6], [2, 2, 6, 6]),  # confidence exactly 0.25
        ([1e-6, 0.0], [1e-6, 0.0], [0, 0, 10, 10], [0, 0, 10, 10]),  # unconfident, the same box
        ([0.02, 0.7], [0.01, 0.7], [0, 0, 8, 8], [30, 30, 40, 40]),  # confident, the boxes apart
        ([0.9, 0.3], [0.9, 0.3], [0, 0, 10, 10], [0, 0, 10, 5]),  # IoU exactly 0.5
    ]
    fp_probs, q_probs, fp_boxes, q_boxes = (
        torch.tensor([row[i] for row in rows], dtype=torch.float32) for i in range(4)
    )
    iou, confidence = paired_iou(fp_boxes, q_boxes), fp_probs.amax(-1)
    cases = []
    for tc, ti in ((THETA_C, THETA_I), (0.5, 0.5), (0.25, 0.25), (0.0, 0.0)):
        mistakes = [
            (
                "the filter used the quantized model's confidence instead of the FP model's",
                box_filter(q_probs, fp_boxes, q_boxes, tc, ti),
            ),
            ("strict > instead of >=: a value exactly at theta passes", (confidence > tc) & (iou > ti)),
            ("strict > instead of >=: a confidence exactly at theta_C passes", (confidence > tc) & (iou >= ti)),
            ("strict > instead of >=: an IoU exactly at theta_I passes", (confidence >= tc) & (iou > ti)),
            ("only the confidence step: also require IoU(FP box, quantized box) >= theta_I", confidence >= tc),
            ("only the IoU step: also require the FP confidence >= theta_C", iou >= ti),
            ("the steps are joined with or; a pair must pass both", (confidence >= tc) | (iou >= ti)),
            (
                "the confidence is the mean over classes; it is the max",
                box_filter(fp_probs.mean(-1, keepdim=True), fp_boxes, q_boxes, tc, ti),
            ),
        ]
        args = (fp_probs, q_probs, fp_boxes, q_boxes, tc, ti)
        cases.append(
            Case(args, box_filter(fp_probs, fp_boxes, q_boxes, tc, ti), f"theta_C {tc}, theta_I {ti}", mistakes)
        )
    hint = "keep = (fp_probs.amax(-1) >= theta_c) & (IoU(fp_boxes[i], q_boxes[i]) >= theta_i), a bool tensor."
    for case in cases:
        got = _call("filter_mask", fn, *case.args)
        if not (isinstance(got, torch.Tensor) and got.dtype == torch.bool):
            _fail("filter_mask", f"{case.what}: expected a bool tensor, got {getattr(got, 'dtype', type(got))}")
        _verdict("filter_mask", got, case, hint, 0.0, 0.0)
    return _passed("filter_mask")


def _global_inputs() -> tuple[torch.Tensor, ...]:
    """FP and quantized logits (12 anchors x 3 classes) and normalised boxes: some anchors unconfident
    (logits -12), some pairs far apart (IoU 0)."""
    g = torch.Generator().manual_seed(8)
    fp_logits = torch.randn(12, 3, generator=g) * 2 - 1
    fp_logits[[2, 7]] = -12.0
    q_logits = fp_logits + torch.randn(12, 3, generator=g) * 0.5
    corner, size = torch.rand(12, 2, generator=g) * 0.5, torch.rand(12, 2, generator=g) * 0.3 + 0.1
    fp_boxes = torch.cat([corner, corner + size], 1)
    q_boxes = fp_boxes + torch.randn(12, 4, generator=g) * 0.02
    q_boxes[[4, 9]] += 0.45
    return fp_logits, q_logits, fp_boxes, q_boxes


def _box_term(fp_boxes: torch.Tensor, q_boxes: torch.Tensor, keep: torch.Tensor, p: float = 1.0) -> float:
    """The filtered box distance per anchor, summed (L1 for p = 1, squared L2 for p = 2)."""
    return ((fp_boxes - q_boxes).abs().pow(p).sum(-1) * keep).sum().item()


def global_loss(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(fp_logits, q_logits, fp_boxes, q_boxes, theta_c, theta_i)``: FGIC's global loss
    L_G = (1/n) sum_i [ sum_c (BCE(q_logit, p) - BCE(fp_logit, p)) + |b_i - b^_i|_1 I_HC,i I_HI,i ], p = sigmoid(fp),
    n the number of anchors, the filter on the FP confidence (``fgic.global_loss`` with lambda = 1)."""
    fp_logits, q_logits, fp_boxes, q_boxes = _global_inputs()
    q_logits.requires_grad_(True)  # the loss must reach the quantized outputs
    q_boxes.requires_grad_(True)
    n, classes = fp_logits.shape
    fp_probs = torch.sigmoid(fp_logits)
    at_fp = F.binary_cross_entropy_with_logits(fp_logits, fp_probs, reduction="sum").item() / n
    hint = "per anchor: sum over classes of BCE(q, p) - BCE(fp, p), plus the filtered L1 box distance; divide by n."
    cases = []
    for tc, ti in ((THETA_C, THETA_I), (0.3, 0.5)):
        want, stats = fgic.global_loss(fp_logits, q_logits, fp_boxes, q_boxes, tc, ti)
        cls, box, kept = stats["cls"], stats["box"], stats["kept"]
        keep = box_filter(fp_probs, fp_boxes, q_boxes, tc, ti)
        keep_q = box_filter(torch.sigmoid(q_logits), fp_boxes, q_boxes, tc, ti)
        mistakes = [
            (
                "no filter on the box term: multiply each box distance by I_HC * I_HI",
                fgic.global_loss(fp_logits, q_logits, fp_boxes, q_boxes, 0.0, 0.0)[0],
            ),
            (
                "the box term is divided by the number of kept pairs; divide everything by n, the number of anchors",
                cls + box / kept,
            ),
            ("you divided by the number of kept pairs; divide by n, the number of anchors", (cls + box) / kept),
            ("the class term is not zero when the models agree: subtract BCE(fp_logit, p_fp)", want + at_fp),
            ("L2 instead of L1 for the boxes: sum |b - b^|", cls + _box_term(fp_boxes, q_boxes, keep, 2.0) / n),
            (
                "the filter used the quantized model's confidence instead of the FP model's",
                cls + _box_term(fp_boxes, q_boxes, keep_q) / n,
            ),
            ("the class term is averaged over classes; sum it over classes, then divide by n", cls / classes + box),
        ]
        args = (fp_logits, q_logits, fp_boxes, q_boxes, tc, ti)
        cases.append(Case(args, want, f"theta_C {tc}, theta_I {ti}", mistakes))
    return _run("global_loss", fn, cases, hint, rtol=1e-4, atol=1e-7, differentiable=True)
