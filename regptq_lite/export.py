"""The integer form of a quantized detector, and integer-only recomputation of a conv layer.

``export_integer`` gives, per quantized layer, its integer weight codes, the scales and
offsets that turn codes back into values, and the quantizer kind; ``save_integer`` writes it
atomically. ``integer_conv`` recomputes a layer's output from those codes with integer
arithmetic (int64 matrix products; for LLAQ in its shift form, bit shifts and a small lookup)
plus a float rescale per output channel, which is what a deployment kernel would do; ``shift_form_layer``
gives one head conv in LLAQ's shift form to try it on.

LLAQ's shift form (``LogAffineQuantizer.snap_k_``, ``snap_m_``): with k = 2^j a level is
2^(-a/k) * 2^(e/k), and 2^(e/k) is a shift by e >> j times a lookup of 2^(r/k) for the j low bits r
of e (stored with LUT_BITS fraction bits; no lookup when k <= 1, where the shift is e * 2^-j). m is
an integer m_code times the smallest positive level / 2^M_FRACTION_BITS, so that the m * sum(x)
term joins the positive side's integer accumulator.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import write_atomic
from .llaq import M_FRACTION_BITS, PARAMS, LogAffineQuantizer, llaq_of
from .qmodel import QuantLayer, quant_layers, quantize_detector, set_quant
from .quantizers import UniformQuantizer

LUT_BITS = 16  # fraction bits of the shift form's lookup of 2^(r/k)


def code_dtype(bits: int, signed: bool) -> torch.dtype:
    """The smallest integer type that holds ``bits``-bit codes: signed ones (LLAQ's sign and exponent) within
    -2^(b-1) .. 2^(b-1) - 1, unsigned ones (a uniform grid's) within 0 .. 2^b - 1."""
    if bits <= 8:
        return torch.int8 if signed else torch.uint8
    return torch.int16 if signed else torch.int32


@torch.no_grad()
def export_layer(layer: QuantLayer, device: torch.device | str | None = None) -> dict:
    """Integer codes and the parameters that give them meaning, for one wrapped layer, as plain tensors copied to
    ``device`` (the layer's own by default)."""
    p = layer.policy
    out: dict = {"kind": p.weight_kind, "wbits": p.wbits, "abits": p.abits, "bias": layer.layer.bias}
    w = layer.layer.weight
    grid = llaq_of(layer.wq)
    if grid is not None:
        out.update(weight_codes=layer.wq.codes(w).to(code_dtype(p.wbits, signed=True)), shift_form=is_shift_form(grid))
        out.update(zip(PARAMS, grid.grid()))
    elif layer.wq is not None:
        base = layer.wq.base if hasattr(layer.wq, "base") else layer.wq
        out.update(
            weight_codes=layer.wq.codes(w).to(code_dtype(p.wbits, signed=False)),
            weight_scale=base.scale,
            weight_zero_point=base.zero_point,
        )
    else:
        out["weight"] = w
    if isinstance(layer.aq, UniformQuantizer):
        out.update(act_scale=layer.aq.scale, act_zero_point=layer.aq.zero_point)
    return {
        key: value.detach().to(device or value.device, copy=True) if torch.is_tensor(value) else value
        for key, value in out.items()
    }


def export_integer(qmodel: nn.Module) -> dict[str, dict]:
    """Per wrapped layer (by name), its integer form on the CPU: a model calibrated on a GPU exports a file
    that loads anywhere."""
    return {name: export_layer(layer, "cpu") for name, layer in quant_layers(qmodel)}


def save_integer(qmodel: nn.Module, path: str | Path) -> Path:
    """Write the integer form to ``path`` (temp file, then rename: never half-written)."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    return write_atomic(path, lambda tmp: torch.save(export_integer(qmodel), tmp))


def _int_matmul(cols: torch.Tensor, weight_int: torch.Tensor) -> torch.Tensor:
    """(N, K, L) int64 columns times (C, K) int64 weights -> (N, C, L) int64."""
    return torch.einsum("ck,nkl->ncl", weight_int, cols)


def shift_form_layer(model: nn.Module, name: str, wbits: int, abits: int, x: torch.Tensor) -> QuantLayer:
    """The conv ``name`` of ``model`` quantized with LLAQ weights in the shift form (the MSE search, then
    ``snap_k_`` and ``snap_m_``) and activations initialised on ``x``, quantization on: a layer that
    ``integer_conv`` recomputes."""
    qmodel = quantize_detector(model, wbits, abits, head_weight_kind="llaq")
    layer = qmodel.get_submodule(name)
    if not isinstance(layer, QuantLayer) or llaq_of(layer.wq) is None:
        raise ValueError(f"{name} is not a layer with LLAQ weights; expected a head tower conv")
    layer.wq.init(layer.layer.weight.detach())
    layer.wq.snap_k_().snap_m_()
    layer.aq.init(x)
    set_quant(qmodel, weights=True, activations=True)
    return layer


def is_shift_form(grid: LogAffineQuantizer) -> bool:
    """k a power of two on both sides and m an integer multiple of ``m_unit()``."""
    ks = torch.cat([grid.k_pos.flatten(), grid.k_neg.flatten()]).detach()
    m_code = (grid.m / grid.m_unit()).detach()
    on_grid = torch.allclose(m_code, torch.round(m_code), atol=1e-3)
    return bool(torch.equal(torch.log2(ks), torch.round(torch.log2(ks))) and on_grid)


def _shift_levels(e: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2^(e/k) * 2^f as integers for each exponent code e, with k = 2^j per channel (C x 1): a lookup
    of 2^(r/k) (f = LUT_BITS fraction bits) shifted by e >> j when j > 0, a plain shift by e * 2^-j
    (f = 0) when k <= 1. Returns the integers and f per channel."""
    j = torch.log2(k).round().long()
    up, down = j.clamp_min(0), (-j).clamp_min(0)
    fraction = torch.where(j > 0, LUT_BITS, 0)
    lookup = torch.round(torch.exp2((e & ((1 << up) - 1)) / k + fraction)).long()
    return lookup << ((e >> up) << down), fraction


def _llaq_accumulate(form: dict, codes: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """sum_i x_i w_i for LLAQ weights in the shift form from two integer accumulators, one a side
    (the positive one also carries m_code * sum_i x_i), each rescaled once per output channel."""
    c_out = codes.shape[0]
    grid = {name: form[name].reshape(c_out, 1).double() for name in PARAMS}
    pos = codes >= 0
    e = torch.where(pos, codes, -codes - 1)
    pos_ints, pos_fraction = _shift_levels(e, grid["k_pos"])
    neg_ints, neg_fraction = _shift_levels(e, grid["k_neg"])
    smallest = {side: torch.exp2(-grid[f"a_{side}"] / grid[f"k_{side}"]) for side in ("pos", "neg")}
    m_code = torch.round(grid["m"] / smallest["pos"] * 2**M_FRACTION_BITS).long()
    bits = pos_fraction.clamp_min(M_FRACTION_BITS)
    positive = (torch.where(pos, pos_ints, 0) << (bits - pos_fraction)) + (m_code << (bits - M_FRACTION_BITS))
    acc_pos, acc_neg = _int_matmul(cols, positive), _int_matmul(cols, torch.where(pos, 0, neg_ints))
    scale_pos = smallest["pos"] * torch.exp2(-bits.double())
    scale_neg = smallest["neg"] * torch.exp2(-neg_fraction.double())
    return scale_pos.reshape(1, c_out, 1) * acc_pos - scale_neg.reshape(1, c_out, 1) * acc_neg


def integer_conv(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """Recompute ``layer(x)`` from integer codes only (both quantizers must be on and uniform
    activations; LLAQ weights must be in the shift form)."""
    conv = layer.layer
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ValueError("integer_conv handles plain (ungrouped) Conv2d layers")
    form = export_layer(layer)
    xq = layer.aq.codes(x).long() - form["act_zero_point"].long()  # integer activations, zero-centred
    n, _, h, w = x.shape
    cols = F.unfold(xq.double(), conv.kernel_size, conv.dilation, conv.padding, conv.stride).round().long()
    c_out = conv.out_channels
    codes = form["weight_codes"].reshape(c_out, -1).long()
    if form["kind"] == "llaq":
        if not form["shift_form"]:
            raise ValueError("integer_conv needs LLAQ's shift form (k a power of two, m on its fixed-point grid)")
        out = _llaq_accumulate(form, codes, cols)
    else:
        wq = codes - form["weight_zero_point"].reshape(c_out, 1).long()
        out = form["weight_scale"].reshape(1, c_out, 1).double() * _int_matmul(cols, wq)
    out = out * form["act_scale"].double()
    if form["bias"] is not None:
        out = out + form["bias"].reshape(1, c_out, 1).double()
    h_out = (h + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    return out.reshape(n, c_out, h_out, -1).float()
