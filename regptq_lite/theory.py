"""Theory made visible (PAPER.md section 2.4, and beyond the paper: box-decoding errors).

1. The MAP argument: for f(x) = w x trained with an L_p distance, the likelihood of w is
   exp(-sum_i |y_i - w x_i|^p / l). With a flat prior that is the posterior: p = 1 gives a peak with
   a cusp (Laplace-like), p = 2 a Gaussian; a logistic (classification) loss measures no distance.
2. Box decoding (torchvision's BoxCoder, weights 1): x = x_a + w_a dx, w = w_a exp(dw). Errors
   (e_x, e_y, e_w, e_h) in the four deltas cost, to first order in the errors, per axis
       |e_w| + 2 max(0, s - |e_w| / 2),   s = |e_x| e^-dw  (the centre shift in box widths)
   summed over x and y: a log-size error e loses ~|e| of IoU, a centre shift s loses ~2s, but only the
   part of it that the grown or shrunk box does not absorb. Rounding on a uniform grid of step D gives
   errors U[-D/2, D/2]; on zero deltas the expectation is E[1 - IoU] ~= (13/12) D (u, v ~ U[0, 1]:
   2 (D/2) E[v + 2 max(0, u - v/2)] = D (1/2 + 7/12)). Checked by Monte Carlo: within 5% for D <= 0.05.
   Then compared for uniform vs logarithmic grids on Laplace-distributed deltas.
"""

from __future__ import annotations

import numpy as np
import torch

from .fgic import paired_iou
from .llaq import LogAffineQuantizer
from .quantizers import UniformQuantizer, lp_error

LOSSES = ("l1", "l2", "logistic")


def likelihood_curves(n: int = 5, seed: int = 0, noise: float = 0.3) -> dict[str, np.ndarray]:
    """The normalised likelihood (flat-prior posterior) of one weight w on a grid, per loss.

    Data: x ~ N(0, 1), y = x + Laplace noise (regression) and a label y > 0 (classification). The grid is the
    least-squares estimate +/- 12 widths noise / |x| of the L2 posterior, wide enough for the L1 and L2 curves
    to be complete (their kurtosis is then exact). With few points the logistic posterior is improper (flat on
    one side), so its curve, and any statistic of it, depends on this window.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = x + rng.laplace(scale=noise, size=n)
    label = (y > 0).astype(float)
    centre, width = (x @ y) / (x @ x), noise / np.sqrt(x @ x)
    grid = np.linspace(centre - 12 * width, centre + 12 * width, 4001)
    resid = y[None, :] - grid[:, None] * x[None, :]
    logits = grid[:, None] * x[None, :] / noise
    log_l = {
        "l1": -np.abs(resid).sum(1) / noise,
        "l2": -(resid**2).sum(1) / (2 * noise**2),
        "logistic": -(label * np.logaddexp(0, -logits) + (1 - label) * np.logaddexp(0, logits)).sum(1),
    }
    out = {"w": grid}
    for name in LOSSES:
        p = np.exp(log_l[name] - log_l[name].max())
        out[name] = p / np.trapezoid(p, grid)
    return out


def curve_kurtosis(w: np.ndarray, p: np.ndarray) -> float:
    """Excess kurtosis of the density ``p`` on the grid ``w``: 0 Gaussian, 3 Laplace, < 0 flat."""
    mean = np.trapezoid(w * p, w)
    var = np.trapezoid((w - mean) ** 2 * p, w)
    return float(np.trapezoid((w - mean) ** 4 * p, w) / var**2 - 3)


def posterior_kurtosis(ns: tuple[int, ...] = (1, 2, 5, 50, 500), seed: int = 0) -> dict[int, dict[str, float]]:
    """{n: {"l1": ..., "l2": ...}}: the excess kurtosis of the L1 and L2 posteriors of ``likelihood_curves`` with
    n data points."""
    shape = {}
    for n in ns:
        curves = likelihood_curves(n=n, seed=seed)
        shape[n] = {loss: curve_kurtosis(curves["w"], curves[loss]) for loss in ("l1", "l2")}
    return shape


def decode(deltas: torch.Tensor) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) from deltas (dx, dy, dw, dh) on a unit anchor at the origin."""
    centre, size = deltas[:, :2], torch.exp(deltas[:, 2:])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def iou_loss(deltas: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Per box, 1 - IoU between the boxes decoded from ``deltas`` and from ``noisy``."""
    return 1 - paired_iou(decode(deltas), decode(noisy))


def iou_loss_first_order(deltas: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """The first-order approximation of ``iou_loss`` (module docstring)."""
    e = noisy - deltas
    shift, size = e[:, :2].abs() * torch.exp(-deltas[:, 2:]), e[:, 2:].abs()
    return (size + 2 * (shift - size / 2).clamp_min(0)).sum(1)


def iou_loss_analytic(step: float) -> float:
    """E[1 - IoU] to first order for uniform rounding noise of step ``step`` on zero deltas: (13/12) step."""
    return 13 / 12 * step


def iou_loss_monte_carlo(step: float, samples: int = 200_000, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo E[1 - IoU] and its standard error for U[-step/2, step/2] noise on zero deltas."""
    g = torch.Generator().manual_seed(seed)
    zero = torch.zeros(samples, 4, dtype=torch.float64)
    loss = iou_loss(zero, (torch.rand(samples, 4, generator=g, dtype=torch.float64) - 0.5) * step)
    return loss.mean().item(), (loss.std() / samples**0.5).item()


def laplace_deltas(samples: int = 20_000, scale: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Box deltas (samples, 4) drawn from a Laplace law of the given scale."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(samples, 4, generator=g, dtype=torch.float64) - 0.5
    return (-torch.sign(u) * torch.log1p(-2 * u.abs()) * scale).float()


def uniform_squared_error_fit(columns: torch.Tensor, bits: int, ratios: int = 81) -> torch.Tensor:
    """``columns`` (channels, n) rounded on a per-channel uniform grid whose clip (a share 0.2-1 of the
    min-max range) minimises the squared error, the criterion LLAQ's ``init`` uses.

    ``UniformQuantizer``'s own "mse" observer minimises the L_2.4 error (BRECQ's and QDrop's criterion), which on
    peaked data keeps a wider clip; fitting both grids by squared error makes their comparison fair.
    """
    best = torch.full((columns.shape[0],), float("inf"))
    fitted = columns.clone()
    for ratio in torch.linspace(0.2, 1.0, ratios).tolist():
        quantizer = UniformQuantizer(bits, 0)
        quantizer.init(columns * ratio)  # min-max of the clipped range
        with torch.no_grad():
            rounded = quantizer(columns)
        err = lp_error(columns, rounded, 0, p=2)
        better = err < best
        best, fitted = torch.where(better, err, best), torch.where(better[:, None], rounded, fitted)
    return fitted


def grid_comparison(bits: tuple[int, ...] = (2, 3, 4, 5, 6), deltas: torch.Tensor | None = None) -> list[dict]:
    """Uniform vs logarithmic (LLAQ) grids on Laplace deltas: MSE and IoU loss per bit-width.

    Each grid is fitted per delta coordinate by squared error (``uniform_squared_error_fit``, LLAQ's ``init``);
    the IoU loss is between the boxes decoded from the float and from the quantized deltas, with its
    first-order prediction beside it.
    """
    deltas = laplace_deltas() if deltas is None else deltas
    columns = deltas.T.contiguous()  # one channel per coordinate
    rows = []
    for b in bits:
        log = LogAffineQuantizer(b)
        log.init(columns)
        with torch.no_grad():
            quantized = {"uniform": uniform_squared_error_fit(columns, b), "log": log(columns)}
        for kind, rounded in quantized.items():
            noisy = rounded.T
            rows.append(
                {
                    "bits": b,
                    "grid": kind,
                    "mse": (noisy - deltas).pow(2).mean().item(),
                    "iou_loss": iou_loss(deltas, noisy).mean().item(),
                    "first_order": iou_loss_first_order(deltas, noisy).mean().item(),
                }
            )
    return rows
