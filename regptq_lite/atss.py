"""Adaptive training-sample selection (ATSS, Zhang et al., CVPR 2020) for torchvision's RetinaNet.

RetinaNet's own matcher calls an anchor positive when its IoU with an object is at least 0.5. On
128 px scenes a small or thin object overlaps few anchors that well, so it trains on one or two
positives (the low-quality fallback) while a large one gets many. ATSS instead takes, per object
and per pyramid level, the ``k`` anchors whose centres are nearest the object's centre, and keeps
those whose IoU is at least the mean plus the standard deviation of the candidates' IoUs and whose
centre lies inside the box. Every object gets a similar number of positives, at every size.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

BACKGROUND = -1  # torchvision's Matcher.BELOW_LOW_THRESHOLD: a negative anchor


def anchor_levels(anchors: Tensor, level_sizes: tuple[tuple[float, ...], ...]) -> Tensor:
    """The pyramid level of each anchor, by the nearest level's sizes in log scale.

    torchvision rounds anchor corners to whole pixels, so an anchor's sqrt(area) is only close to
    the size it was made from; the levels' sizes are far enough apart for the nearest to be right.
    """
    size = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).sqrt().log2()
    centres = torch.tensor([torch.tensor(s).log2().mean().item() for s in level_sizes], dtype=size.dtype)
    return (size[:, None] - centres[None, :]).abs().argmin(1)


def atss_match(boxes: Tensor, anchors: Tensor, levels: Tensor, k: int = 9) -> Tensor:
    """Per anchor, the index of the object it is a positive for, or ``BACKGROUND``.

    ``boxes`` (G, 4) and ``anchors`` (A, 4) are x1 y1 x2 y2; ``levels`` (A,) the anchors' pyramid
    levels. An anchor that is a positive for several objects goes to the one it overlaps most.
    """
    matched = torch.full((anchors.shape[0],), BACKGROUND, dtype=torch.long, device=anchors.device)
    if boxes.numel() == 0:
        return matched
    iou = box_iou(boxes, anchors)
    box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    distance = torch.cdist(box_centres, anchor_centres)
    candidates = []
    for level in levels.unique():
        index = torch.nonzero(levels == level).squeeze(1)
        nearest = distance[:, index].topk(min(k, index.numel()), dim=1, largest=False).indices
        candidates.append(index[nearest])
    candidates = torch.cat(candidates, dim=1)  # (G, k * levels)
    candidate_iou = iou.gather(1, candidates)
    threshold = candidate_iou.mean(1, keepdim=True) + candidate_iou.std(1, keepdim=True)
    cx, cy = anchor_centres[candidates, 0], anchor_centres[candidates, 1]
    inside = (cx > boxes[:, 0:1]) & (cx < boxes[:, 2:3]) & (cy > boxes[:, 1:2]) & (cy < boxes[:, 3:4])
    positive = torch.zeros_like(iou, dtype=torch.bool).scatter_(1, candidates, (candidate_iou >= threshold) & inside)
    best_iou, best_box = torch.where(positive, iou, torch.full_like(iou, -1.0)).max(0)
    return torch.where(best_iou >= 0, best_box, matched)
