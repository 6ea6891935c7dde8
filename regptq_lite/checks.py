"""Assignment checks that teach: each runs the student's function on fixed inputs and compares the answer
with the package's own computation. A wrong answer is also compared with the typical wrong answers of that
exercise (floor instead of round, a missing scale, the quantized model's confidence instead of the FP one, ...),
so that the message names the mistake; an answer that matches none of them gets "off by" and a hint.

A check prints ``passed (...)`` and returns True, or prints ``not yet (...)`` with the reason and raises
``CheckFailed`` (an AssertionError: nbgrader's autograder gives the cell zero). A function that raises
NotImplementedError (a student copy before the exercise is done) stops the notebook there, as an unanswered
exercise should; any other error in the student's function becomes a ``CheckFailed`` that names it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.nn.functional as F
from torch import nn

from . import fgic, recon
from .fgic import THETA_C, THETA_I, box_filter, paired_iou
from .llaq import LogAffineQuantizer
from .qmodel import LayerPolicy, QuantLayer
from .quantizers import LearnedRounding
from .theory import decode
from .toy import fit_laws
from .widgets import llaq_quantizer


class CheckFailed(AssertionError):
    """The student's answer is wrong; the message says how."""


@dataclass(frozen=True)
class Case:
    """One fixed input: the arguments, the right answer, what it is, and the answers of known mistakes
    as (message naming the mistake, the answer it gives)."""

    args: tuple
    want: object
    what: str
    mistakes: Sequence[tuple[str, object]] = ()


def _fixed(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A fixed sample of a Laplace law with scale 0.05 (a head weight's shape)."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs()) * 0.05


def _fail(name: str, message: str, cause: BaseException | None = None) -> NoReturn:
    print(f"not yet ({name}): {message}")
    raise CheckFailed(message) from cause


def _passed(name: str, detail: str = "") -> bool:
    print(f"passed ({name}{': ' + detail if detail else ''})")
    return True


def _call(name: str, fn: Callable, *args) -> object:
    """The student's answer on copies of ``args``; NotImplementedError propagates, other errors fail the check."""
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as err:  # a student's bug is a reason to show, with its traceback
        _fail(name, f"your function raised {type(err).__name__}: {err}", err)


def _tensor(x: object) -> torch.Tensor:
    """An answer (tensor, number, or a tuple of them) as a float64 tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().double()
    if isinstance(x, (tuple, list)):
        return torch.stack([_tensor(v) for v in x])
    return torch.as_tensor(x, dtype=torch.float64)


def _mismatch(got: object, want: object, rtol: float, atol: float) -> str | None:
    """None if ``got`` matches ``want``, else what is wrong with it."""
    try:
        got_t = _tensor(got)
    except (TypeError, ValueError, RuntimeError):
        return f"expected a number or a tensor, got {type(got).__name__}"
    want_t = _tensor(want)
    if got_t.shape != want_t.shape:
        return f"expected shape {tuple(want_t.shape)}, got {tuple(got_t.shape)}"
    if not torch.allclose(got_t, want_t, rtol=rtol, atol=atol, equal_nan=True):
        worst = (got_t - want_t).abs().nan_to_num(math.inf).max().item()
        return f"off by up to {worst:.3g} (expected e.g. {want_t.flatten()[0].item():.5g})"
    return None


def _verdict(name: str, got: object, case: Case, hint: str, rtol: float, atol: float) -> None:
    """Fail the check, naming the mistake, unless ``got`` is the right answer for ``case``."""
    off = _mismatch(got, case.want, rtol, atol)
    if off is None:
        return
    for message, wrong in case.mistakes:
        if _mismatch(got, wrong, rtol, atol) is None:
            _fail(name, f"{case.what}: {message}")
    _fail(name, f"{case.what}: {off}. {hint}")


def _run(name: str, fn: Callable, cases: list[Case], hint: str, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    for case in cases:
        _verdict(name, _call(name, fn, *case.args), case, hint, rtol, atol)
    return _passed(name)


# Notebook 01 -----------------------------------------------------------------------------------


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


# Notebook 02 -----------------------------------------------------------------------------------


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


# Notebook 03 -----------------------------------------------------------------------------------


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


# Notebook 04 -----------------------------------------------------------------------------------

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


# Notebook 05 -----------------------------------------------------------------------------------


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
    name = "global_loss"
    fp_logits, q_logits, fp_boxes, q_boxes = _global_inputs()
    q_logits.requires_grad_(True)  # the loss must reach the quantized outputs
    q_boxes.requires_grad_(True)
    n, classes = fp_logits.shape
    fp_probs = torch.sigmoid(fp_logits)
    at_fp = F.binary_cross_entropy_with_logits(fp_logits, fp_probs, reduction="sum").item() / n
    hint = "per anchor: sum over classes of BCE(q, p) - BCE(fp, p), plus the filtered L1 box distance; divide by n."
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
        what = f"theta_C {tc}, theta_I {ti}"
        got = _call(name, fn, *args)
        _verdict(name, got, Case(args, want, what, mistakes), hint, 1e-4, 1e-7)
        if not (isinstance(got, torch.Tensor) and got.requires_grad):
            _fail(
                name,
                f"{what}: the loss has no gradient w.r.t. the quantized outputs (.item() or float()?); "
                "calibration needs a tensor",
            )
    return _passed(name)


# Notebook 06 -----------------------------------------------------------------------------------


def fisher_local_loss(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """``fn(out, target, g)``: the Fisher-weighted local loss L_H = (out - target)^2 g^2, summed over
    channels (dim 1) and averaged over the rest (``recon.local_loss(out, target, g ** 2)``)."""
    g = torch.Generator().manual_seed(10)
    cases = []
    for shape in ((4, 6, 5, 5), (8, 5)):
        out, grad = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        target = out + torch.randn(shape, generator=g) * 0.3
        want = recon.local_loss(out, target, grad**2)
        err = (out - target).pow(2)
        mistakes = [
            ("g is not squared: the weight is g^2", recon.local_loss(out, target, grad)),
            ("the mean over channels; sum over channels (dim 1), then average", want / shape[1]),
            ("no Fisher weight: multiply the squared error by g^2", recon.local_loss(out, target, None)),
            ("summed over everything; sum over channels, average over the rest", (err * grad**2).sum()),
            ("|out - target| instead of the squared error", ((out - target).abs() * grad**2).sum(1).mean()),
        ]
        cases.append(Case((out, target, grad), want, f"outputs of shape {shape}", mistakes))
    hint = "((out - target) ** 2 * g ** 2).sum(1).mean()"
    return _run("fisher_local_loss", fn, cases, hint)


def rounding_regularizer(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> bool:
    """``fn(h, beta)``: AdaRound's regulariser sum(1 - |2h - 1|^beta) (``LearnedRounding.regularizer``)."""
    h = torch.rand(200, generator=torch.Generator().manual_seed(11))
    cases = []
    for beta in (20.0, 3.0, 2.5):
        want = LearnedRounding(h).regularizer(beta).detach()
        mistakes = [
            ('the "1 -" is missing: the term is 1 - |2h - 1|^beta', (2 * h - 1).abs().pow(beta).sum()),
            ("the mean instead of the sum", want / len(h)),
            ("(2h - 1)^beta without abs: wrong for odd beta, NaN for fractional", (1 - (2 * h - 1).pow(beta)).sum()),
            ("the power applies to |2h - 1|, not to 1 - |2h - 1|", (1 - (2 * h - 1).abs()).pow(beta).sum()),
            ("beta is missing: 1 - |2h - 1|^beta", (1 - (2 * h - 1).abs()).sum()),
        ]
        cases.append(Case((h, beta), want, f"beta {beta}", mistakes))
    return _run("rounding_regularizer", fn, cases, "(1 - (2 * h - 1).abs() ** beta).sum()", rtol=1e-4, atol=1e-5)


RECON = recon.ReconSettings(iters=200, weight_lr=0.1)  # a learning rate that decides the rounding in 200 iterations


def _recon_problem() -> tuple[QuantLayer, list[dict], torch.Tensor, torch.Tensor, torch.Tensor]:
    """A conv 8 -> 8 (3x3) at W2A4 with learned rounding, prepared for reconstruction, with 256 fixed inputs,
    the float conv's outputs as targets and fixed Fisher weights."""
    g = torch.Generator().manual_seed(12)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        u = torch.rand(conv.weight.shape, generator=g) - 0.5
        conv.weight.copy_(-torch.sign(u) * torch.log1p(-2 * u.abs()) * 0.1)
        conv.bias.copy_(torch.randn(8, generator=g) * 0.1)
        inputs = torch.randn(256, 8, 8, 8, generator=g).relu()
        targets = conv(inputs)
    fisher = torch.rand(targets.shape, generator=g) + 0.5
    unit = QuantLayer(conv, LayerPolicy("unit", 2, 4, "uniform", "the reconstruct_unit check"))
    unit.aq.init(inputs)
    return unit, recon.prepare_unit(unit, RECON), inputs, targets, fisher


def _outcome(unit: QuantLayer, inputs: torch.Tensor, targets: torch.Tensor, fisher: torch.Tensor) -> tuple[float, ...]:
    """The unit's local loss with hard rounding, and the share of its rounding still undecided."""
    with recon.hard_rounding(unit):
        loss = recon.mean_local_loss(unit, [inputs], [targets], [fisher])
    return loss, unit.wq.undecided()


class _Watch:
    """Hooks on a unit under the student's loop: iterations (forward calls), whether gradients pile up between
    iterations (no zero_grad), and each iteration's first call of the rounding regulariser (iteration, beta)."""

    def __init__(self, unit: QuantLayer) -> None:
        self.iters, self.piled_up, self.betas = 0, False, []
        rounding: LearnedRounding = unit.wq
        alpha, regularizer = rounding.alpha, rounding.regularizer

        def count(_module, _args) -> None:
            self.iters += 1

        def before_accumulating(_grad: torch.Tensor) -> None:
            if alpha.grad is not None and alpha.grad.any():  # last iteration's gradient is still there
                self.piled_up = True

        def watched_regularizer(beta: float) -> torch.Tensor:
            if not self.betas or self.betas[-1][0] != self.iters:
                self.betas.append((self.iters, float(beta)))
            return regularizer(beta)

        rounding.regularizer = watched_regularizer
        self.handles = [unit.register_forward_pre_hook(count), alpha.register_hook(before_accumulating)]

    def stop(self) -> None:
        for handle in self.handles:
            handle.remove()


def _loop_mistake(losses: object, moved: bool, watch: _Watch, undecided: float, ref_undecided: float) -> str | None:
    """What is wrong with the student's loop, from what it returned and what the hooks saw."""
    iters, warm = RECON.iters, int(RECON.warmup * RECON.iters)
    if not isinstance(losses, (list, tuple)) or len(losses) != iters:
        got = f"{type(losses).__name__}" + (f" of length {len(losses)}" if hasattr(losses, "__len__") else "")
        return f"return the list of the {iters} local losses, one per iteration (got a {got})"
    if not moved:
        return "the parameters did not move: call opt.step() after loss.backward() (zero_grad before backward)"
    if watch.piled_up:
        return "no zero_grad: the gradients pile up from one iteration to the next (opt.zero_grad() before backward)"
    if watch.betas:
        (first_iter, first), last = watch.betas[0], watch.betas[-1][1]
        if first_iter <= warm:
            return (
                f"the regulariser starts at iteration {first_iter}; add it only after the warm-up "
                f"(the first {warm} of {iters} iterations)"
            )
        if not (first >= RECON.beta_start - 2 and last <= RECON.beta_end + 1):
            return (
                f"beta runs from {first:.3g} to {last:.3g}; let it fall linearly from {RECON.beta_start:.3g} to "
                f"{RECON.beta_end:.3g} over the iterations after the warm-up"
            )
    if undecided > ref_undecided + 0.1:
        return (
            f"the rounding stays undecided ({undecided:.0%} of h between 0.05 and 0.95, the reference "
            f"{ref_undecided:.0%}): add {RECON.reg_weight} * recon.rounding_loss(unit, beta) after the warm-up"
        )
    return None


def reconstruct_unit(fn: Callable[..., list[float]]) -> bool:
    """``fn(unit, groups, inputs, targets, fisher, iters)``: the reconstruction loop of one unit, returning the
    local loss of each iteration. ``opt = torch.optim.Adam(groups)``; each iteration a random batch of 32 rows of
    ``inputs``, ``targets`` (and ``fisher``), L_H = ``recon.local_loss(unit(x), y, f)``; after a 20% warm-up add
    0.01 * ``recon.rounding_loss(unit, beta)``, beta falling linearly from 20 to 2; zero_grad, backward, step.

    The check runs it on a fixed problem beside the package's own loop (``recon.optimise_unit``) and compares
    the hard-rounded local loss and the share of rounding left undecided."""
    name = "reconstruct_unit"
    with torch.random.fork_rng():  # the notebook's random state stays as it was
        torch.manual_seed(0)
        unit, groups, inputs, targets, fisher = _recon_problem()
        nearest = _outcome(unit, inputs, targets, fisher)[0]
        recon.optimise_unit(unit, [inputs], [targets], RECON, groups, [fisher], desc="reference")
        ref_loss, ref_undecided = _outcome(unit, inputs, targets, fisher)

        unit, groups, inputs, targets, fisher = _recon_problem()
        start = [p.detach().clone() for group in groups for p in group["params"]]
        watch = _Watch(unit)
        torch.manual_seed(0)
        losses = _call(name, fn, unit, groups, inputs, targets, fisher, RECON.iters)
        watch.stop()
        loss, undecided = _outcome(unit, inputs, targets, fisher)
    moved = any(not torch.equal(a, p) for a, p in zip(start, (p for group in groups for p in group["params"])))
    mistake = _loop_mistake(losses, moved, watch, undecided, ref_undecided)
    if mistake:
        _fail(name, mistake)
    if loss > ref_loss + 0.25 * (nearest - ref_loss):
        _fail(
            name,
            f"the hard-rounded local loss ends at {loss:.3f} (rounding to nearest {nearest:.3f}, the reference "
            f"{ref_loss:.3f}). Check the batch, the loss and the learning step.",
        )
    detail = f"hard-rounded loss {nearest:.3f} -> {loss:.3f} (reference {ref_loss:.3f}), {undecided:.0%} undecided"
    return _passed(name, detail)


ALL = {
    "laplace_fit": laplace_fit,
    "uniform_fake_quant": uniform_fake_quant,
    "box_decode": box_decode,
    "llaq_forward": llaq_forward,
    "snap_k": snap_k,
    "learned_exponent": learned_exponent,
    "filter_mask": filter_mask,
    "global_loss": global_loss,
    "fisher_local_loss": fisher_local_loss,
    "rounding_regularizer": rounding_regularizer,
    "reconstruct_unit": reconstruct_unit,
}
