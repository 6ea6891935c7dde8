"""Check of notebook 03: decoding a detector's box deltas against its anchors (``box_decode``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..theory import decode
from .core import Case, _run


def _corners(centre: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def box_decode(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """``fn(deltas, anchors)``: boxes (x1, y1, x2, y2) from deltas (dx, dy, dw, dh) and anchors (x1, y1, x2, y2):
    centre = anchor centre + anchor size x (dx, dy), size = anchor size x exp(dw, dh)."""
    g = torch.Generator().manual_seed(5)
    deltas = torch.randn(6, 4, generator=g) * 0.3
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0]]).repeat(6, 1) + torch.rand(6, 1, generator=g) * 50
    size = anchors[:, 2:] - anchors[:, :2]
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    unit = decode(deltas)  # on a unit anchor at the origin
    want = torch.cat([centre + unit[:, :2] * size, centre + unit[:, 2:] * size], dim=1)
    new_centre, new_size = centre + deltas[:, :2] * size, size * torch.exp(deltas[:, 2:])
    mistakes = [
        ("the size has no exp: w = w_a * exp(dw), not w_a * dw", _corners(new_centre, size * deltas[:, 2:])),
        ("the centre shift is not scaled: x = x_a + w_a * dx", _corners(centre + deltas[:, :2], new_size)),
        ("you returned (cx, cy, w, h); return the corners (x1, y1, x2, y2)", torch.cat([new_centre, new_size], 1)),
        (
            "the shift starts from the anchor's corner (x1, y1), not its centre",
            _corners(anchors[:, :2] + deltas[:, :2] * size, new_size),
        ),
    ]
    hint = "x = x_a + w_a dx, w = w_a exp(dw) (the same for y, h), from the anchor's centre; return the corners"
    return _run("box_decode", fn, [Case((deltas, anchors), want, "decoded boxes", mistakes)], hint)
