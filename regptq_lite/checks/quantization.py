"""Checks of notebooks 01 and 02: the Laplace fit of a head weight (``laplace_fit``) and symmetric uniform
fake quantization (``uniform_fake_quant``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..toy import fit_laws
from .core import Case, _fixed, _run


def laplace_fit(fn: Callable[[torch.Tensor], tuple[float, float]]) -> bool:
    """``fn(x)``: the maximum-likelihood Laplace location and scale (loc, b)."""
    x = torch.cat([_fixed(2, (4001,)) + 0.01, torch.full((200,), 0.4)])  # a lump in the right tail: mean != median
    laws = fit_laws(x)
    median, mean = laws["laplace_loc"], x.double().mean().item()
    locs = {"": median, "loc is the mean; the likelihood is largest at the median": mean}
    scales = {
        "": laws["laplace_b"],
        "b is the standard deviation; the Laplace scale is the mean |x - median|": x.double().std().item(),
        "b is the mean |x - mean|: measure the distances from the median": (x.double() - mean).abs().mean().item(),
    }
    mistakes = [
        ("; ".join(m for m in (loc_message, b_message) if m), [loc, b])
        for loc_message, loc in locs.items()
        for b_message, b in scales.items()
        if loc_message or b_message
    ]
    hint = "loc = median(x), b = mean |x - loc|."
    case = Case((x,), [median, laws["laplace_b"]], "(loc, b)", mistakes)
    return _run("laplace_fit", fn, [case], hint, rtol=1e-3, atol=1e-5)


def _signed_grid(w: torch.Tensor, step: float, lo: float, hi: float, rounding=torch.round) -> torch.Tensor:
    """Codes clamp(rounding(w / step), lo, hi) back in float (code x step)."""
    return torch.clamp(rounding(w / step), lo, hi) * step


def uniform_fake_quant(fn: Callable[[torch.Tensor, int, float], torch.Tensor]) -> bool:
    """``fn(w, bits, clip)``: symmetric uniform fake-quantization with step s = clip / 2^(b-1),
    codes clamped to [-2^(b-1), 2^(b-1) - 1], returned in float (code x s)."""
    w = _fixed(3, (256,))
    cases = []
    for bits, clip in ((4, 0.1), (2, 0.05), (8, 0.3)):
        s, lo, hi = clip / 2 ** (bits - 1), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        want = _signed_grid(w, s, lo, hi)
        mistakes = [
            ("the scale is missing: round(w / s) gives integer codes; return code x s", want / s),
            ("you rounded with floor instead of to nearest", _signed_grid(w, s, lo, hi, torch.floor)),
            ("you rounded toward zero (int() or trunc) instead of to nearest", _signed_grid(w, s, lo, hi, torch.trunc)),
            ("the top code is 2^(b-1) - 1, not 2^(b-1): the largest level is clip - s", _signed_grid(w, s, lo, hi + 1)),
            ("the lowest code is -2^(b-1), not -(2^(b-1) - 1)", _signed_grid(w, s, lo + 1, hi)),
            ("no clamp: codes must stay in [-2^(b-1), 2^(b-1) - 1]", _signed_grid(w, s, -math.inf, math.inf)),
            (
                "the step is clip / 2^b; with half the codes negative it is clip / 2^(b-1)",
                _signed_grid(w, s / 2, lo, hi),
            ),
        ]
        cases.append(Case((w, bits, clip), want, f"{bits} bits, clip {clip}", mistakes))
    hint = "s = clip / 2^(b-1); code = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1); return code * s."
    return _run("uniform_fake_quant", fn, cases, hint)
