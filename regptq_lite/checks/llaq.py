"""Checks of notebook 04: LLAQ's forward pass with its straight-through gradient (``llaq_forward``), the
shift-friendly snapped k (``snap_k``) and AdaRound's learned rounding of the exponent (``learned_exponent``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..llaq import LogAffineQuantizer
from ..quantizers import LearnedRounding
from ..widgets import llaq_quantizer
from .core import Case, _call, _fail, _fixed, _mismatch, _passed, _run, _verdict

LLAQ_CASES = (  # (bits, m, k_pos, a_pos, k_neg, a_neg): both ends of each side's grid clamp some weights
    (3, 0.02, 0.8, 7.0, 1.2, 9.5),
    (4, -0.01, 1.5, 13.0, 0.9, 9.0),
)


def _llaq_mistake(
    w, m, k_pos, a_pos, k_neg, a_neg, bits, *, side_at=None, log=torch.log2, exp=torch.exp2, clamp=True
) -> torch.Tensor:
    """An LLAQ forward pass with one typical mistake: the side picked at ``side_at`` instead of m, a natural
    ``log`` (and ``exp``) instead of log2 (and exp2), or no clamp of the exponent."""
    pos = w >= (m if side_at is None else side_at)
    k, a = torch.where(pos, k_pos, k_neg), torch.where(pos, a_pos, a_neg)
    e = torch.round(k * log((w - m).abs()) + a)
    e = e.clamp(0, 2 ** (bits - 1) - 1) if clamp else e
    return m + torch.where(pos, 1.0, -1.0) * exp((e - a) / k)


def _llaq_inputs(bits: int, m: float, k_pos: float, a_pos: float, k_neg: float, a_neg: float) -> torch.Tensor:
    """Laplace weights around m, without those whose exponent lies within half a code outside [0, E] (there
    clamping before or after the rounding gives different gradients, and both are fair answers)."""
    w = _fixed(9, (600,)) + m
    d, pos = (w - m).abs(), w >= m
    psi = torch.where(pos, k_pos, k_neg) * torch.log2(d) + torch.where(pos, a_pos, a_neg)
    emax = 2 ** (bits - 1) - 1
    return w[~(((psi > -0.5) & (psi < 0)) | ((psi > emax) & (psi < emax + 0.5)))]


def llaq_forward(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(w, m, k_pos, a_pos, k_neg, a_neg, bits)``: per-tensor LLAQ fake quantization with a straight-through
    gradient: the side w >= m picks (k, a); e = clamp(round(k log2 |w - m| + a), 0, 2^(b-1) - 1), rounding
    straight-through; w^ = m +/- 2^((e - a) / k)."""
    name, ln = "llaq_forward", "natural log: psi uses log2 (and w^ = m +/- 2^((e - a) / k))"
    hint = "e = clamp(round(k log2|w - m| + a), 0, 2^(b-1) - 1), (k, a) of the side w >= m; w^ = m +/- 2^((e - a) / k)."
    for bits, m, kp, ap, kn, an in LLAQ_CASES:
        params = {"m": m, "k_pos": kp, "a_pos": ap, "k_neg": kn, "a_neg": an}
        w = _llaq_inputs(bits, m, kp, ap, kn, an)
        ref_w = w.clone().requires_grad_(True)
        want = llaq_quantizer(bits, **params)(ref_w)
        want.sum().backward()
        args = (w, m, kp, ap, kn, an, bits)
        mistakes = [
            ("the side is picked by the sign of w; it is w >= m", _llaq_mistake(*args, side_at=0.0)),
            (ln, _llaq_mistake(*args, log=torch.log, exp=torch.exp)),
            (ln, _llaq_mistake(*args, log=torch.log)),
            ("no clamp: e must stay in [0, 2^(b-1) - 1]", _llaq_mistake(*args, clamp=False)),
            ("you left out m: w^ = m +/- 2^((e - a) / k)", want.detach() - m),
        ]
        what = f"{bits} bits, m {m}"
        student_w = w.clone().requires_grad_(True)
        got = _call(name, fn, student_w, m, kp, ap, kn, an, bits)
        _verdict(name, got, Case(args, want.detach(), what, mistakes), hint, 1e-4, 1e-6)
        if not (isinstance(got, torch.Tensor) and got.requires_grad):
            _fail(
                name,
                f"{what}: no straight-through gradient: w^ does not depend on w for autograd "
                "(round(x) -> x + (round(x) - x).detach())",
            )
        got.sum().backward()
        grad, ref_grad = student_w.grad, ref_w.grad
        if grad is None or (grad == 0).all():
            _fail(
                name,
                f"{what}: no straight-through gradient: the gradient of w^ w.r.t. w is zero "
                "(torch.round has none; use x + (round(x) - x).detach())",
            )
        clamped = ref_grad == 0
        if (grad[clamped] != 0).any() and torch.allclose(grad[~clamped], ref_grad[~clamped], rtol=1e-3, atol=1e-6):
            _fail(name, f"{what}: the gradient flows where e is clamped: clamp after the straight-through round")
        off = _mismatch(grad, ref_grad, 1e-3, 1e-6)
        if off:
            _fail(name, f"{what}: the gradient d w^ / d w is {off}. Make only the rounding straight-through.")
    return _passed(name, "values and straight-through gradients")


def snap_k(fn: Callable[[float, float, int], tuple[float, float]]) -> bool:
    """``fn(k, a, bits)``: (k', a') with k' = k rounded to a power of two in log2, and a' chosen so that
    the top level 2^((E - a) / k), E = 2^(b-1) - 1, stays where it was."""
    cases = []
    for k, a, bits in ((2.9, 9.0, 3), (0.7, 6.0, 4), (3.1, 20.0, 4)):
        q = LogAffineQuantizer(bits, channel_axis=0)
        q.k_pos.data, q.a_pos.data = torch.tensor([k]), torch.tensor([a])
        q.k_neg.data, q.a_neg.data = torch.tensor([k]), torch.tensor([a])
        q.snap_k_()
        k2, top = q.k_pos.item(), 2 ** (bits - 1) - 1
        linear = min((2.0**j for j in range(-4, 5)), key=lambda p: abs(p - k))
        a_for = {k_new: top - k_new * (top - a) / k for k_new in (round(k), linear)}  # the top level kept
        mistakes = [
            ("a is unchanged: move it so that the top level 2^((E - a) / k) stays put", [k2, a]),
            ("k is rounded linearly; round it in log2: k' = 2^round(log2 k)", [round(k), a_for[round(k)]]),
            ("k went to the nearest power of two on a linear scale; round log2 k instead", [linear, a_for[linear]]),
            ("you kept the lowest level (e = 0) in place; keep the top one (e = E)", [k2, a * k2 / k]),
        ]
        cases.append(Case((k, a, bits), [k2, q.a_pos.item()], f"k {k}, a {a}, {bits} bits", mistakes))
    hint = "k' = 2^round(log2 k); (E - a') / k' = (E - a) / k with E = 2^(b-1) - 1."
    return _run("snap_k", fn, cases, hint, rtol=1e-5)


def learned_exponent(fn: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]) -> bool:
    """``fn(psi, alpha, soft)``: AdaRound's rounding of the exponent psi: floor(psi) + h(alpha) with
    h(V) = clip(sigmoid(V) * 1.2 - 0.1, 0, 1) when ``soft``, floor(psi) + [alpha >= 0] otherwise."""
    g = torch.Generator().manual_seed(7)
    psi = torch.rand(300, generator=g) * 11 - 3
    alpha = torch.randn(300, generator=g) * 3
    alpha = alpha[alpha.abs() > 1e-3]  # at alpha = 0 exactly, "h > 0.5" and "alpha >= 0" disagree
    psi = psi[: len(alpha)]
    rounding = LearnedRounding(torch.zeros_like(alpha))
    rounding.alpha.data = alpha.clone()
    cases = []
    for soft in (True, False):
        rounding.soft = soft
        floor, up = torch.floor(psi), rounding.up().detach()
        stretched = torch.sigmoid(alpha) * 1.2 - 0.1
        mistakes = [
            ("you rounded psi to nearest; AdaRound starts from floor(psi)", torch.round(psi) + up),
            ("you truncated psi toward zero; use floor (they differ below 0)", torch.trunc(psi) + up),
            ("h is the plain sigmoid; stretch it: clip(sigmoid * 1.2 - 0.1, 0, 1)", floor + torch.sigmoid(alpha)),
            ("h is not clipped to [0, 1]", floor + stretched),
            ("soft rounding uses h(alpha), not the hard decision", floor + (alpha >= 0).float()),
            ("hard rounding adds 1 where alpha >= 0 (h >= 0.5), not h(alpha) itself", floor + rounding.h().detach()),
        ]
        cases.append(Case((psi, alpha, soft), floor + up, f"soft={soft}", mistakes))
    hint = "soft: floor(psi) + clip(sigmoid(alpha) * 1.2 - 0.1, 0, 1); hard: floor(psi) + (alpha >= 0)."
    return _run("learned_exponent", fn, cases, hint)
