"""LLAQ, the learnable logarithmic-affine quantizer of Reg-PTQ (PAPER.md section 4).

Per output channel the weights split at a location m; the distance d = |w - m| on each side gets
its own affine map in log space, psi(d) = k * log2(d) + a, and a uniform integer grid there:
e in [0, E], E = 2^(b-1) - 1, plus one sign bit for the side. Back in linear space
w^ = m +/- 2^((e - a) / k): levels dense near m, sparse in the tails.

- ``LogAffineQuantizer``: the grid, MSE-searched at init, rounding psi to nearest (straight-through).
- ``LogAffineTuner``: the grid under calibration. Reg-PTQ tunes "following AdaRound's pipeline": each
  weight's exponent gets a learned rounding, while m, k and a learn relative to where they started.
- The shift form: k a power of two and m on a fixed-point grid, so that a layer is integer
  accumulations of shifted activation codes (``export.integer_conv``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .quantizers import LearnedRounding, _per_channel_shape, _reduce_dims, check_bits, round_ste

M_FRACTION_BITS = 8  # the shift form keeps m on a grid of (smallest positive level) / 2^8
FORMS = ("float", "shift")
PARAMS = ("m", "k_pos", "a_pos", "k_neg", "a_neg")


class LogAffineQuantizer(nn.Module):
    """LLAQ with round-to-nearest in the log domain: e = clamp(round(psi(|x - m|)), 0, E).

    m starts at the channel median; (k, a) per side from an MSE search; all five are parameters.
    """

    def __init__(self, bits: int, channel_axis: int = 0) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.channel_axis = channel_axis
        for name in PARAMS:
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
            top = (distance * side).amax(dim=dims, keepdim=True).clamp_min(1e-8)
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

    def grid(self) -> tuple[torch.Tensor, ...]:
        """(m, k_pos, a_pos, k_neg, a_neg), per channel."""
        return tuple(getattr(self, name) for name in PARAMS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.init(x)
        return dequantize(*_nearest(x, self.grid(), self.emax), self.grid())

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """b-bit signed codes: e on the x >= m side, -(e + 1) on the other."""
        return signed_codes(*_nearest(x, self.grid(), self.emax))

    def levels(self, channel: int = 0) -> torch.Tensor:
        """The 2^b representable values of one channel, sorted."""
        return channel_levels(self.grid(), self.emax, channel)

    @torch.no_grad()
    def snap_k_(self) -> LogAffineQuantizer:
        """In place: k -> the nearest power of two (in log2), a moved so that each side's top level
        2^((E - a) / k) stays where it was. With k = 2^j the level 2^((e - a) / k) is a per-channel scale
        2^(-a / k) times 2^(e / k): a shift by e >> j, times a lookup of 2^(r / k) for the j low bits r
        (none when k <= 1)."""
        for sign in ("pos", "neg"):
            k, a = getattr(self, f"k_{sign}"), getattr(self, f"a_{sign}")
            k_snap = torch.exp2(torch.round(torch.log2(k.clamp_min(1e-3))))
            a.copy_(self.emax - k_snap * (self.emax - a) / k.clamp_min(1e-3))
            k.copy_(k_snap)
        return self

    def m_unit(self) -> torch.Tensor:
        """The fixed-point step of m in the shift form: the smallest positive level / 2^M_FRACTION_BITS."""
        return torch.exp2(-self.a_pos / self.k_pos.clamp_min(1e-3) - M_FRACTION_BITS)

    @torch.no_grad()
    def snap_m_(self) -> LogAffineQuantizer:
        """In place: m -> the nearest multiple of ``m_unit()`` (an integer in the shift form)."""
        unit = self.m_unit()
        self.m.copy_(torch.round(self.m / unit) * unit)
        return self

    def shift_friendly(self) -> LogAffineQuantizer:
        """A copy in the shift form: k snapped to powers of two (top levels kept), m on its fixed-point grid."""
        return copy.deepcopy(self).snap_k_().snap_m_()


def _side(pos: torch.Tensor, grid: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each weight's (k, a): the positive side's where ``pos``, else the negative side's."""
    _, k_pos, a_pos, k_neg, a_neg = grid
    return torch.where(pos, k_pos, k_neg).clamp_min(1e-3), torch.where(pos, a_pos, a_neg)


def psi(x: torch.Tensor, pos: torch.Tensor, grid: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The unrounded exponent psi(|x - m|) = k * log2 |x - m| + a, with each side's (k, a)."""
    k, a = _side(pos, grid)
    return k * torch.log2((x - grid[0]).abs() + 1e-30) + a


def _nearest(x: torch.Tensor, grid: tuple[torch.Tensor, ...], emax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sides and exponents rounded to nearest (straight-through): clamp(round(psi), 0, E)."""
    pos = x >= grid[0]
    return pos, torch.clamp(round_ste(psi(x, pos, grid)), 0, emax)


def dequantize(pos: torch.Tensor, e: torch.Tensor, grid: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """w^ = m +/- 2^((e - a) / k), with the side's (k, a)."""
    k, a = _side(pos, grid)
    return grid[0] + torch.where(pos, 1.0, -1.0) * torch.exp2((e - a) / k)


def signed_codes(pos: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """One b-bit code per weight: e on the positive side, -(e + 1) on the other."""
    e = e.to(torch.int32)
    return torch.where(pos, e, -(e + 1))


def channel_levels(grid: tuple[torch.Tensor, ...], emax: int, channel: int) -> torch.Tensor:
    """The 2^b values one channel of the grid (m, k_pos, a_pos, k_neg, a_neg) can take, sorted."""
    m, k_pos, a_pos, k_neg, a_neg = (p.flatten()[channel] for p in grid)
    e = torch.arange(emax + 1, dtype=torch.float32, device=m.device)
    pos = m + torch.exp2((e - a_pos) / k_pos.clamp_min(1e-3))
    neg = m - torch.exp2((e - a_neg) / k_neg.clamp_min(1e-3))
    return torch.cat([neg, pos]).detach().sort().values


class LogAffineTuner(nn.Module):
    """An LLAQ grid under calibration, bound to one weight tensor.

    ``rounding="learned"`` (Reg-PTQ's default): AdaRound in the log domain. Each weight keeps the side
    of m and the floor of its exponent psi(d) that the starting grid gives, and learns whether to round
    up (h(V), AdaRound's regulariser, hard at the end). ``"nearest"``: the exponent is rounded to
    nearest under the current grid (straight-through), as ``LogAffineQuantizer`` does.

    The grid learns relative to its start, so that one learning rate fits every channel:
    m = m0 + std_c * dm (std_c the channel's weight spread), k = k0 * 2^dk, a = a0 + da (a in codes).
    ``learn_k=False`` keeps k where it is (the shift form, after ``snap_k_``). ``commit()`` writes the
    learned grid back into the base quantizer (and, in the shift form, snaps m).
    """

    def __init__(self, base: LogAffineQuantizer, weight: torch.Tensor, rounding: str = "learned", learn_k: bool = True):
        super().__init__()
        if rounding not in ("learned", "nearest"):
            raise ValueError(f"unknown LLAQ rounding {rounding!r}; expected learned or nearest")
        if not base.initialized:
            base.init(weight)
        w = weight.detach()
        self.base, self.bits, self.channel_axis, self.emax = base, base.bits, base.channel_axis, base.emax
        self.learn_k = learn_k
        spread = w.std(dim=_reduce_dims(w, self.channel_axis), keepdim=True).clamp_min(1e-12)
        self.register_buffer("spread", spread)
        self.dm = nn.Parameter(torch.zeros_like(base.m))
        for sign in ("pos", "neg"):
            setattr(self, f"da_{sign}", nn.Parameter(torch.zeros_like(base.a_pos)))
            setattr(self, f"dk_{sign}", nn.Parameter(torch.zeros_like(base.k_pos), requires_grad=learn_k))
        self.rounding: LearnedRounding | None = None
        if rounding == "learned":
            with torch.no_grad():
                pos = w >= base.m
                exponent = psi(w, pos, base.grid())
            self.register_buffer("positive", pos)
            self.register_buffer("floor", torch.floor(exponent).clamp(-1, self.emax))
            self.rounding = LearnedRounding(exponent - torch.floor(exponent))

    def grid(self) -> tuple[torch.Tensor, ...]:
        """The current (m, k_pos, a_pos, k_neg, a_neg)."""
        b = self.base
        m = b.m.detach() + self.spread * self.dm
        k_pos, k_neg = b.k_pos.detach() * torch.exp2(self.dk_pos), b.k_neg.detach() * torch.exp2(self.dk_neg)
        return m, k_pos, b.a_pos.detach() + self.da_pos, k_neg, b.a_neg.detach() + self.da_neg

    def grid_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.dm, self.da_pos, self.da_neg, self.dk_pos, self.dk_neg) if p.requires_grad]

    def _side_and_exponent(self, x: torch.Tensor, hard: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rounding is None:
            return _nearest(x, self.grid(), self.emax)
        if x.shape != self.floor.shape:
            raise ValueError(f"this LLAQ rounding belongs to a weight of shape {tuple(self.floor.shape)}")
        return self.positive, torch.clamp(self.floor + self.rounding.up(hard), 0, self.emax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dequantize(*self._side_and_exponent(x), self.grid())

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """b-bit signed codes as ``LogAffineQuantizer.codes`` gives them (hard rounding)."""
        return signed_codes(*self._side_and_exponent(x, hard=True))

    def levels(self, channel: int = 0) -> torch.Tensor:
        return channel_levels(self.grid(), self.emax, channel)

    @torch.no_grad()
    def drift(self) -> dict[str, float]:
        """How far the grid moved: mean |dm| (in channel spreads), |dk| (octaves of k), |da| (codes)."""
        return {
            "dm": self.dm.abs().mean().item(),
            "dk": torch.cat([self.dk_pos, self.dk_neg]).abs().mean().item(),
            "da": torch.cat([self.da_pos, self.da_neg]).abs().mean().item(),
        }

    @torch.no_grad()
    def commit(self, shift_form: bool) -> None:
        """Write the learned grid into the base quantizer and zero the offsets; in the shift form,
        also put m on its fixed-point grid."""
        for name, value in zip(PARAMS, self.grid()):
            getattr(self.base, name).copy_(value)
        for p in (self.dm, self.da_pos, self.da_neg, self.dk_pos, self.dk_neg):
            p.zero_()
        if shift_form:
            self.base.snap_m_()


def llaq_of(quantizer: nn.Module | None) -> LogAffineQuantizer | None:
    """The LLAQ grid behind a layer's weight quantizer (itself, or a tuner's base); None for other kinds."""
    if isinstance(quantizer, LogAffineTuner):
        return quantizer.base
    return quantizer if isinstance(quantizer, LogAffineQuantizer) else None


def shift_gap(weight: torch.Tensor, bits: int) -> dict[str, float]:
    """Weight-quantization MSE of MSE-initialised LLAQ vs its shift form."""
    llaq = LogAffineQuantizer(bits)
    llaq.init(weight)
    with torch.no_grad():
        learned = (llaq(weight) - weight).pow(2).mean().item()
        shifted = (llaq.shift_friendly()(weight) - weight).pow(2).mean().item()
    return {"mse_llaq": learned, "mse_shift": shifted, "ratio": shifted / max(learned, 1e-30)}
