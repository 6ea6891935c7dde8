"""Assignment checks: each takes the student's function, runs it on fixed inputs and prints a pass or
the reason it fails. A check returns True or False; a function that still raises NotImplementedError
(a student copy before the exercise is done) stops the notebook there, as an unanswered exercise should.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .cost import LayerCost, summarize
from .fgic import box_filter
from .llaq import LogAffineQuantizer
from .theory import decode, iou_loss_first_order
from .toy import excess_kurtosis, fit_laws


def _fixed(seed: int, shape: tuple[int, ...] = (4000,), law: str = "laplace") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if law == "laplace":
        u = torch.rand(shape, generator=g) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs()) * 0.05
    return torch.randn(shape, generator=g) * 0.05


def _report(name: str, failures: list[str]) -> bool:
    if failures:
        print(f"not yet ({name}): {failures[0]}")
        return False
    print(f"passed ({name})")
    return True


def _call(name: str, fn: Callable, *args):
    """Call the student's function; NotImplementedError propagates, other errors become a reason."""
    try:
        return fn(*args), None
    except NotImplementedError:
        raise
    except Exception as err:  # a student's bug is a reason to print, not a crash
        return None, f"{name} raised {type(err).__name__}: {err}"


def _close(got, want, what: str, rtol: float = 1e-4, atol: float = 1e-6) -> str | None:
    try:
        got_t = torch.as_tensor(got, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return f"{what}: expected a number or tensor, got {type(got).__name__}"
    want_t = torch.as_tensor(want, dtype=torch.float64)
    if got_t.shape != want_t.shape:
        return f"{what}: expected shape {tuple(want_t.shape)}, got {tuple(got_t.shape)}"
    if not torch.allclose(got_t, want_t, rtol=rtol, atol=atol):
        worst = (got_t - want_t).abs().max().item()
        return f"{what}: off by up to {worst:.3g} (expected e.g. {want_t.flatten()[0].item():.5g})"
    return None


def _run(name: str, fn: Callable, cases: list[tuple[tuple, object, str]], **tol) -> bool:
    failures = []
    for args, want, what in cases:
        got, err = _call(name, fn, *args)
        failures.append(err or _close(got, want, what, **tol))
    return _report(name, [f for f in failures if f])


# Notebook 01 -----------------------------------------------------------------------------------


def kurtosis(fn: Callable[[torch.Tensor], float]) -> bool:
    """``fn(x)``: the excess kurtosis of a tensor (0 for a Gaussian, 3 for a Laplace law)."""
    cases = [((x,), excess_kurtosis(x), f"kurtosis of a {law} sample") for law, x in
             (("Laplace", _fixed(0)), ("Gaussian", _fixed(1, law="gauss")))]  # fmt: skip
    return _run("kurtosis", fn, cases, rtol=1e-3, atol=5e-3)  # population or sample std both pass


def laplace_fit(fn: Callable[[torch.Tensor], tuple[float, float]]) -> bool:
    """``fn(x)``: the maximum-likelihood Laplace location and scale (loc, b)."""
    x = _fixed(2) + 0.01
    laws = fit_laws(x)
    # any median convention (lower middle value or the mean of the two) passes
    return _run("laplace_fit", fn, [((x,), [laws["laplace_loc"], laws["laplace_b"]], "(loc, b)")], rtol=1e-3, atol=1e-4)


# Notebook 02 -----------------------------------------------------------------------------------


def uniform_fake_quant(fn: Callable[[torch.Tensor, int, float], torch.Tensor]) -> bool:
    """``fn(w, bits, clip)``: symmetric uniform fake-quantization with step s = clip / 2^(b-1),
    codes clamped to [-2^(b-1), 2^(b-1) - 1], returned in float (code x s)."""
    w = _fixed(3, (64,))
    cases = []
    for bits, clip in ((4, 0.1), (2, 0.05), (8, 0.3)):
        s = clip / 2 ** (bits - 1)
        want = torch.clamp(torch.round(w / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s
        cases.append(((w, bits, clip), want, f"{bits} bits, clip {clip}"))
    return _run("uniform_fake_quant", fn, cases)


def clipped_share(fn: Callable[[torch.Tensor, float], float]) -> bool:
    """``fn(w, clip)``: the share of weights outside [-clip, clip]."""
    w = _fixed(4)
    cases = [((w, c), (w.abs() > c).float().mean().item(), f"clip {c}") for c in (0.02, 0.1, 1.0)]
    return _run("clipped_share", fn, cases)


# Notebook 03 -----------------------------------------------------------------------------------


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
    return _run("box_decode", fn, [((deltas, anchors), want, "decoded boxes")])


def iou_first_order(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """``fn(deltas, noisy)``: per box, the first-order 1 - IoU (theory module docstring)."""
    g = torch.Generator().manual_seed(6)
    deltas = torch.randn(50, 4, generator=g) * 0.2
    noisy = deltas + (torch.rand(50, 4, generator=g) - 0.5) * 0.1
    return _run("iou_first_order", fn, [((deltas, noisy), iou_loss_first_order(deltas, noisy), "1 - IoU")])


# Notebook 04 -----------------------------------------------------------------------------------


def llaq_levels(fn: Callable[[int, float, float, float], torch.Tensor]) -> bool:
    """``fn(bits, m, k, a)``: the levels of one side, m + 2^((e - a) / k) for e = 0 .. 2^(b-1) - 1, ascending."""
    cases = []
    for bits, m, k, a in ((4, 0.0, 1.0, 8.0), (3, 0.01, 0.7, 5.0), (2, -0.02, 2.0, 9.0)):
        e = torch.arange(2 ** (bits - 1), dtype=torch.float64)
        cases.append(((bits, m, k, a), m + torch.exp2((e - a) / k), f"bits {bits}, k {k}, a {a}"))
    return _run("llaq_levels", fn, cases)


def snap_k(fn: Callable[[float, float, int], tuple[float, float]]) -> bool:
    """``fn(k, a, bits)``: (k', a') with k' = k rounded to a power of two in log2, and a' chosen so that
    the top level 2^((E - a) / k), E = 2^(b-1) - 1, stays where it was."""
    cases = []
    for k, a, bits in ((0.8, 6.0, 4), (1.6, 9.0, 3), (3.1, 20.0, 4)):
        q = LogAffineQuantizer(bits, channel_axis=0)
        q.k_pos.data, q.a_pos.data = torch.tensor([k]), torch.tensor([a])
        q.k_neg.data, q.a_neg.data = torch.tensor([k]), torch.tensor([a])
        twin = q.shift_friendly()
        cases.append(((k, a, bits), [twin.k_pos.item(), twin.a_pos.item()], f"k {k}, a {a}, {bits} bits"))
    return _run("snap_k", fn, cases, rtol=1e-5)


# Notebook 05 -----------------------------------------------------------------------------------


def filter_mask(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor]) -> bool:
    """``fn(fp_probs, fp_boxes, q_boxes, theta_c, theta_i)``: FGIC's mask I_HC * I_HI, as booleans."""
    fp_probs = torch.tensor([[0.9, 0.0], [1e-5, 1e-5], [0.3, 0.6], [0.5, 0.1], [0.0, 0.001]])
    fp_boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 4.0]])
    q_boxes = torch.tensor([[1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 1.0], [0, 0, 4, 4.0]])
    cases = []
    for tc, ti in ((2e-4, 0.1), (0.0, 0.0), (0.5, 0.5)):
        want = box_filter(fp_probs, fp_boxes, q_boxes, tc, ti).double()
        got, err = _call("filter_mask", fn, fp_probs, fp_boxes, q_boxes, tc, ti)
        if err is None and not (isinstance(got, torch.Tensor) and got.dtype == torch.bool):
            err = f"theta_C {tc}, theta_I {ti}: expected a bool tensor, got {getattr(got, 'dtype', type(got))}"
        cases.append(err or _close(got.double(), want, f"mask at theta_C {tc}, theta_I {ti}"))
    return _report("filter_mask", [c for c in cases if c])


def bit_flops(fn: Callable[[int, int, int], float]) -> bool:
    """``fn(macs, wbits, abits)``: a layer's bit-weighted GFLOPs: 2 x MACs x max(W, A) / 32 / 1e9."""
    cases = []
    for macs, w, a in ((10**9, 4, 4), (3 * 10**8, 2, 4), (5 * 10**7, 8, 8), (10**9, 32, 32)):
        want = summarize([LayerCost("layer", macs, 0, 0, w, a)])["bit_GFLOPs"]
        cases.append(((macs, w, a), want, f"{macs} MACs at W{w}A{a}"))
    return _run("bit_flops", fn, cases)


ALL = {
    "kurtosis": kurtosis,
    "laplace_fit": laplace_fit,
    "uniform_fake_quant": uniform_fake_quant,
    "clipped_share": clipped_share,
    "box_decode": box_decode,
    "iou_first_order": iou_first_order,
    "llaq_levels": llaq_levels,
    "snap_k": snap_k,
    "filter_mask": filter_mask,
    "bit_flops": bit_flops,
}
