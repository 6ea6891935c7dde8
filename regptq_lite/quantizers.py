"""Quantizers: uniform (with LSQ steps and AdaRound rounding), plain log2, and LLAQ.

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


class AdaRoundQuantizer(nn.Module):
    """AdaRound (Nagel et al. 2020) on top of a fixed uniform grid.

    w^ = s * (clamp(floor(w/s) + h(V) + z) - z), h(V) = clip(sigmoid(V) * 1.2 - 0.1, 0, 1).
    ``soft=True`` uses h(V) (training); else the hard choice h(V) >= 0.5 (deployment).
    """

    ZETA, GAMMA = 1.1, -0.1

    def __init__(self, base: UniformQuantizer, weight: torch.Tensor) -> None:
        super().__init__()
        if not base.initialized:
            base.init(weight)
        self.base = base
        self.bits = base.bits
        self.channel_axis = base.channel_axis
        self.soft = True
        rest = (weight / base.scale - torch.floor(weight / base.scale)).detach()
        alpha = -torch.log((self.ZETA - self.GAMMA) / (rest - self.GAMMA) - 1)
        self.alpha = nn.Parameter(alpha)

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (self.ZETA - self.GAMMA) + self.GAMMA, 0, 1)

    def regularizer(self, beta: float) -> torch.Tensor:
        """sum(1 - |2h - 1|^beta): pushes every h to 0 or 1 as beta falls."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, z = self.base.scale.detach(), self.base.zero_point
        up = self.h() if self.soft else (self.alpha >= 0).float()
        q = torch.clamp(torch.floor(x / s) + up + z, 0, self.base.qmax)
        return (q - z) * s

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        s, z = self.base.scale, self.base.zero_point
        return torch.clamp(torch.floor(x / s) + (self.alpha >= 0).float() + z, 0, self.base.qmax).to(torch.int32)


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


class LogAffineQuantizer(nn.Module):
    """LLAQ: the learnable logarithmic-affine quantizer of Reg-PTQ (PAPER.md section 4).

    Per output channel, split at a location m (init: median). The distance d = |x - m| on each
    side gets its own affine map in log space, psi(d) = k * log2(d) + a, and a uniform integer
    grid there: e = clamp(round(psi(d)), 0, E), E = 2^(b-1) - 1, plus one sign bit for the side.
    Back in linear space x^ = m +/- 2^((e - a) / k): levels dense near m, sparse in the tails.
    (k, a) per side start from an MSE search and are learnable (straight-through rounding).
    """

    def __init__(self, bits: int, channel_axis: int = 0) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.channel_axis = channel_axis
        for name in ("m", "k_pos", "a_pos", "k_neg", "a_neg"):
            setattr(self, name, nn.Parameter(torch.zeros(1)))
        self.initialized = False

    @property
    def emax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def _grid_error(self, d: torch.Tensor, log_d: torch.Tensor, k: torch.Tensor, a: torch.Tensor, side: torch.Tensor):
        """Squared error per channel of the distances ``d`` = |x - m| (``log_d`` = log2 d) on ``side``
        under the grid (k, a)."""
        e = torch.clamp(torch.round(k * log_d + a), 0, self.emax)
        err = (d - torch.exp2((e - a) / k)) ** 2 * side
        return err.sum(dim=_reduce_dims(d, self.channel_axis), keepdim=True)

    @torch.no_grad()
    def init(self, x: torch.Tensor) -> None:
        """Median location, then per side a grid search of (top level, dynamic range) minimising MSE."""
        x = x.detach()
        dims = _reduce_dims(x, self.channel_axis)
        flat = x.movedim(self.channel_axis, 0).flatten(1)
        m = flat.median(dim=1).values.reshape(_per_channel_shape(x, self.channel_axis))
        params = {}
        distance = (x - m).abs()
        log_distance = torch.log2(distance + 1e-30)
        for sign, side in (("pos", x >= m), ("neg", x < m)):
            d = (x - m).abs() * side
            top = d.amax(dim=dims, keepdim=True).clamp_min(1e-8)
            best = torch.full_like(top, float("inf"))
            best_k, best_a = torch.ones_like(top), torch.zeros_like(top)
            for clip in torch.logspace(0, -1.3, 16).tolist():
                for octaves in torch.linspace(0.5, 16, 32).tolist():
                    k = torch.full_like(top, max(self.emax, 1) / octaves)
                    a = self.emax - k * torch.log2(top * clip)
                    err = self._grid_error(distance, log_distance, k, a, side)
                    better = err < best
                    best = torch.where(better, err, best)
                    best_k, best_a = torch.where(better, k, best_k), torch.where(better, a, best_a)
            params[sign] = (best_k, best_a)
        self.m = nn.Parameter(m.clone())
        self.k_pos, self.a_pos = nn.Parameter(params["pos"][0]), nn.Parameter(params["pos"][1])
        self.k_neg, self.a_neg = nn.Parameter(params["neg"][0]), nn.Parameter(params["neg"][1])
        self.initialized = True

    def _side_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = x >= self.m
        k = torch.where(pos, self.k_pos, self.k_neg).clamp_min(1e-3)
        a = torch.where(pos, self.a_pos, self.a_neg)
        return pos, k, a

    def _exponent(self, x: torch.Tensor, k: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        d = (x - self.m).abs()
        return torch.clamp(round_ste(k * torch.log2(d + 1e-30) + a), 0, self.emax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.init(x)
        pos, k, a = self._side_params(x)
        e = self._exponent(x, k, a)
        return self.m + torch.where(pos, 1.0, -1.0) * torch.exp2((e - a) / k)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """b-bit signed codes: e on the x >= m side, -(e + 1) on the other."""
        pos, k, a = self._side_params(x)
        e = self._exponent(x, k, a).to(torch.int32)
        return torch.where(pos, e, -(e + 1))

    def levels(self, channel: int = 0) -> torch.Tensor:
        """The 2^b representable values of one channel, sorted."""
        e = torch.arange(self.emax + 1, dtype=torch.float32, device=self.m.device)
        m = self.m.flatten()[channel]
        pos = m + torch.exp2((e - self.a_pos.flatten()[channel]) / self.k_pos.flatten()[channel].clamp_min(1e-3))
        neg = m - torch.exp2((e - self.a_neg.flatten()[channel]) / self.k_neg.flatten()[channel].clamp_min(1e-3))
        return torch.cat([neg, pos]).detach().sort().values

    @torch.no_grad()
    def shift_friendly(self) -> LogAffineQuantizer:
        """A copy whose k snaps to a power of two, keeping each side's top level.

        With k = 2^j the level 2^((e - a) / k) is a per-channel scale 2^(-a/k) times 2^(e/k):
        a bit shift by e >> j plus a lookup of 2^(r/k) for the j low bits r (none when k = 1).
        """
        twin = LogAffineQuantizer(self.bits, self.channel_axis)
        twin.m = nn.Parameter(self.m.detach().clone())
        for sign in ("pos", "neg"):
            k, a = getattr(self, f"k_{sign}").detach(), getattr(self, f"a_{sign}").detach()
            k_snap = torch.exp2(torch.round(torch.log2(k.clamp_min(1e-3))))
            a_snap = self.emax - k_snap * (self.emax - a) / k.clamp_min(1e-3)
            setattr(twin, f"k_{sign}", nn.Parameter(k_snap))
            setattr(twin, f"a_{sign}", nn.Parameter(a_snap))
        twin.initialized = True
        return twin


def shift_gap(weight: torch.Tensor, bits: int) -> dict[str, float]:
    """Weight-quantization MSE of MSE-initialised LLAQ vs its shift-friendly form."""
    llaq = LogAffineQuantizer(bits)
    llaq.init(weight)
    with torch.no_grad():
        learned = (llaq(weight) - weight).pow(2).mean().item()
        shifted = (llaq.shift_friendly()(weight) - weight).pow(2).mean().item()
    return {"mse_llaq": learned, "mse_shift": shifted, "ratio": shifted / max(learned, 1e-30)}
