"""Quantizers: uniform (with LSQ steps and AdaRound rounding) and plain log2 (LLAQ: ``llaq.py``).

Every quantizer is an ``nn.Module`` with ``bits``, ``channel_axis`` (None = per tensor),
``init(x)`` (set its parameters from a sample), ``forward(x)`` (the fake-quantized tensor,
straight-through through rounding) and ``codes(x)`` (the integer codes).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits: object) -> int:
    """Return ``bits`` if it is an integer in [2, 16], else raise a clear ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bit-width must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return bits


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with a straight-through gradient.

    Without a gradient to pass (the observers' searches) it is plain rounding: the same values, since
    x + (round(x) - x) is exact in floating point, in one pass over the tensor instead of three.
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.round(x)
    return x + (torch.round(x) - x).detach()


def _reduce_dims(x: torch.Tensor, channel_axis: int | None) -> tuple[int, ...]:
    return tuple(d for d in range(x.ndim) if d != channel_axis) if channel_axis is not None else tuple(range(x.ndim))


def _per_channel_shape(x: torch.Tensor, channel_axis: int | None) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector against ``x``."""
    if channel_axis is None:
        return (1,) * x.ndim
    return tuple(x.shape[d] if d == channel_axis else 1 for d in range(x.ndim))


def lp_error(x: torch.Tensor, y: torch.Tensor, channel_axis: int | None, p: float = 2.4) -> torch.Tensor:
    """Mean |x - y|^p per channel (or a scalar), the clipping criterion of BRECQ and QDrop."""
    return (x - y).abs().pow(p).mean(dim=_reduce_dims(x, channel_axis))


class UniformQuantizer(nn.Module):
    """Asymmetric (or symmetric) uniform quantizer on 2^b levels: x^ = s * (clamp(round(x/s) + z) - z).

    ``observer`` picks the range at ``init``: "minmax", "percentile" (0.01% / 99.99%) or
    "mse" (search of the clipping ratio minimising the L_2.4 error). ``learn_step=True``
    makes the step an LSQ parameter (gradient scaled by 1 / sqrt(N * Q_p)).
    """

    def __init__(
        self,
        bits: int,
        channel_axis: int | None = None,
        observer: str = "minmax",
        symmetric: bool = False,
        learn_step: bool = False,
    ) -> None:
        super().__init__()
        if observer not in ("minmax", "percentile", "mse"):
            raise ValueError(f"unknown observer {observer!r}; expected minmax, percentile or mse")
        self.bits = check_bits(bits)
        self.channel_axis = channel_axis
        self.observer = observer
        self.symmetric = symmetric
        self.learn_step = learn_step
        self.scale = nn.Parameter(torch.ones(1), requires_grad=learn_step)
        self.register_buffer("zero_point", torch.zeros(1))
        self.initialized = False

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def _range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = _reduce_dims(x, self.channel_axis)
        if self.observer == "percentile":
            flat = x.movedim(self.channel_axis, 0).flatten(1) if self.channel_axis is not None else x.flatten()[None]
            sample = flat.float()[:, :: max(1, flat.shape[1] // 100_000)]
            lo, hi = torch.quantile(sample, sample.new_tensor([1e-4, 1 - 1e-4]), dim=1)
            shape = _per_channel_shape(x, self.channel_axis)
            return lo.reshape(shape), hi.reshape(shape)
        return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)

    def _params_for(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        if self.symmetric:
            bound = torch.maximum(-lo, hi)
            scale = (2 * bound / self.qmax).clamp_min(1e-8)
            return scale, torch.full_like(scale, (self.qmax + 1) // 2)
        scale = ((hi - lo) / self.qmax).clamp_min(1e-8)
        return scale, torch.round(-lo / scale)

    @torch.no_grad()
    def init(self, x: torch.Tensor) -> None:
        x = x.detach()
        lo, hi = self._range(x)
        scale, zero = self._params_for(lo, hi)
        if self.observer == "mse":
            best = torch.full(scale.flatten().shape, float("inf"), device=x.device)
            for ratio in torch.linspace(0.2, 1.0, 81).tolist():
                s, z = self._params_for(lo * ratio, hi * ratio)
                err = lp_error(x, self._fake(x, s, z), self.channel_axis).flatten()
                better = err < best
                best = torch.where(better, err, best)
                scale = torch.where(better.reshape(scale.shape), s, scale)
                zero = torch.where(better.reshape(zero.shape), z, zero)
        self.scale = nn.Parameter(scale.clone(), requires_grad=self.learn_step)
        self.zero_point = zero.clone()
        self.initialized = True

    def _fake(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(round_ste(x / scale) + zero, 0, self.qmax)
        return (q - zero) * scale

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        if not self.learn_step:
            return self.scale
        grad_scale = 1.0 / math.sqrt(x.numel() / self.scale.numel() * self.qmax)
        return self.scale * grad_scale + (self.scale - self.scale * grad_scale).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.init(x)
        return self._fake(x, self._step(x), self.zero_point)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes in [0, 2^b - 1]; x^ = scale * (codes - zero_point)."""
        return torch.clamp(torch.round(x / self.scale) + self.zero_point, 0, self.qmax).to(torch.int32)


class LearnedRounding(nn.Module):
    """AdaRound's learned rounding (Nagel et al. 2020), shared by the uniform and the LLAQ grid.

    Each value rounds up by h(V) = clip(sigmoid(V) * 1.2 - 0.1, 0, 1) in training (``soft``), by
    [V >= 0] once hard; V starts where h equals the value's distance above its floor, so that the
    soft value starts exactly where the unrounded one was.
    """

    ZETA, GAMMA = 1.1, -0.1

    def __init__(self, rest: torch.Tensor) -> None:
        super().__init__()
        self.soft = True
        self.alpha = nn.Parameter(-torch.log((self.ZETA - self.GAMMA) / (rest.detach() - self.GAMMA) - 1))

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (self.ZETA - self.GAMMA) + self.GAMMA, 0, 1)

    def up(self, hard: bool = False) -> torch.Tensor:
        """How far each value rounds up: h(V) while soft, 0 or 1 once hard (or when ``hard``)."""
        return (self.alpha >= 0).float() if hard or not self.soft else self.h()

    def regularizer(self, beta: float) -> torch.Tensor:
        """sum(1 - |2h - 1|^beta): pushes every h to 0 or 1 as beta falls."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def undecided(self) -> float:
        """Share of values whose h is still inside (0.05, 0.95): near 0 when soft rounding has done its job."""
        h = self.h()
        return ((h > 0.05) & (h < 0.95)).float().mean().item()


class AdaRoundQuantizer(LearnedRounding):
    """AdaRound on top of a fixed uniform grid: w^ = s * (clamp(floor(w/s) + h(V) + z) - z)."""

    def __init__(self, base: UniformQuantizer, weight: torch.Tensor) -> None:
        if not base.initialized:
            base.init(weight)
        super().__init__(weight / base.scale - torch.floor(weight / base.scale))
        self.base = base
        self.bits = base.bits
        self.channel_axis = base.channel_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, z = self.base.scale.detach(), self.base.zero_point
        q = torch.clamp(torch.floor(x / s) + self.up() + z, 0, self.base.qmax)
        return (q - z) * s

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        s, z = self.base.scale, self.base.zero_point
        return torch.clamp(torch.floor(x / s) + self.up(hard=True) + z, 0, self.base.qmax).to(torch.int32)


class Log2Quantizer(nn.Module):
    """Sign + power-of-two magnitude per channel: x^ = sign(x) * s * 2^(e - E), e in [0, E].

    E = 2^(b-1) - 1 and s is the channel's max |x|: the plain logarithmic baseline.
    """

    def __init__(self, bits: int, channel_axis: int | None = 0) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.channel_axis = channel_axis
        self.register_buffer("scale", torch.ones(1))
        self.initialized = False

    @property
    def emax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @torch.no_grad()
    def init(self, x: torch.Tensor) -> None:
        self.scale = x.abs().amax(dim=_reduce_dims(x, self.channel_axis), keepdim=True).clamp_min(1e-8)
        self.initialized = True

    def _exponent(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(round_ste(torch.log2(x.abs() / self.scale + 1e-30)) + self.emax, 0, self.emax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.init(x)
        return torch.where(x >= 0, 1.0, -1.0) * self.scale * torch.exp2(self._exponent(x) - self.emax)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """b-bit signed codes: e for x >= 0, -(e + 1) otherwise."""
        e = self._exponent(x).to(torch.int32)
        return torch.where(x >= 0, e, -(e + 1))
