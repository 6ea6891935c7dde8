"""LLAQ with a dedicated zero code: the alternative PAPER.md section 4 leaves open, measured here, not used.

LLAQ's levels on each side of m start 2^(-a/k) away from it, so a weight at (or near) m is clamped to the
smallest level. With a zero code, code 0 (the x >= m side's e = 0) means w^ = m exactly and that side keeps
E log levels, e = 1..E; the x < m side keeps its E + 1 levels, so there are still 2^b values. Each side's
(k, a) comes from its own MSE search under its own levels. ``zero_code_gap`` compares the two by weight MSE.
"""

from __future__ import annotations

import torch

from .llaq import LogAffineQuantizer, _nearest, dequantize
from .quantizers import _reduce_dims


class ZeroCodeLLAQ(LogAffineQuantizer):
    """LLAQ (rounding to nearest in the log domain) whose code 0 is the location m itself."""

    def _grid_error(self, d: torch.Tensor, log_d: torch.Tensor, k: torch.Tensor, a: torch.Tensor, side: torch.Tensor):
        """The search's objective with e = 0 meaning distance 0 (used for the x >= m side)."""
        e = torch.clamp(torch.round(k * log_d + a), 0, self.emax)
        level = torch.where(e == 0, torch.zeros_like(d), torch.exp2((e - a) / k))
        return ((d - level) ** 2 * side).sum(dim=_reduce_dims(d, self.channel_axis), keepdim=True)

    @torch.no_grad()
    def init(self, x: torch.Tensor) -> None:
        """The x >= m side searched with its zero code; the x < m side as plain LLAQ searches it."""
        super().init(x)
        plain = LogAffineQuantizer(self.bits, self.channel_axis)
        plain.init(x)
        self.k_neg.copy_(plain.k_neg)
        self.a_neg.copy_(plain.a_neg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.init(x)
        pos, e = _nearest(x, self.grid(), self.emax)
        return torch.where(pos & (e == 0), self.m, dequantize(pos, e, self.grid()))


def zero_code_gap(weight: torch.Tensor, bits: int) -> dict[str, float]:
    """Weight-quantization MSE of MSE-initialised LLAQ (smallest level for tiny distances) vs a zero code."""
    out = {}
    for name, quantizer in (("mse_llaq", LogAffineQuantizer(bits)), ("mse_zero_code", ZeroCodeLLAQ(bits))):
        quantizer.init(weight)
        with torch.no_grad():
            out[name] = (quantizer(weight) - weight).pow(2).mean().item()
    return {**out, "ratio": out["mse_zero_code"] / max(out["mse_llaq"], 1e-30)}
