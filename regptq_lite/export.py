"""The integer form of a quantized detector, and integer-only recomputation of a conv layer.

``export_integer`` gives, per quantized layer, its integer weight codes, the scales and
offsets that turn codes back into values, and the quantizer kind; ``save_integer`` writes it
atomically. ``integer_conv`` recomputes a layer's output from those codes with integer
arithmetic (int64 matrix products; for LLAQ with k = 1, bit shifts) plus one float rescale
per output channel, which is what a deployment kernel would do.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import write_atomic
from .qmodel import QuantLayer, quant_layers
from .quantizers import LogAffineQuantizer, UniformQuantizer


@torch.no_grad()
def export_layer(layer: QuantLayer) -> dict:
    """Integer codes and the parameters that give them meaning, for one wrapped layer."""
    p = layer.policy
    out: dict = {"kind": p.weight_kind, "wbits": p.wbits, "abits": p.abits, "bias": layer.layer.bias}
    w = layer.layer.weight
    if isinstance(layer.wq, LogAffineQuantizer):
        q = layer.wq
        out.update(
            weight_codes=q.codes(w).to(torch.int8),
            m=q.m.detach().clone(),
            k_pos=q.k_pos.detach().clone(),
            a_pos=q.a_pos.detach().clone(),
            k_neg=q.k_neg.detach().clone(),
            a_neg=q.a_neg.detach().clone(),
        )
    elif layer.wq is not None:
        base = layer.wq.base if hasattr(layer.wq, "base") else layer.wq
        out.update(
            weight_codes=layer.wq.codes(w).to(torch.int16 if p.wbits > 8 else torch.uint8),
            weight_scale=base.scale.detach().clone(),
            weight_zero_point=base.zero_point.clone(),
        )
    else:
        out["weight"] = w.detach().clone()
    if isinstance(layer.aq, UniformQuantizer):
        out.update(act_scale=layer.aq.scale.detach().clone(), act_zero_point=layer.aq.zero_point.clone())
    return out


def export_integer(qmodel: nn.Module) -> dict[str, dict]:
    """Per wrapped layer (by name), its integer form."""
    return {name: export_layer(layer) for name, layer in quant_layers(qmodel)}


def save_integer(qmodel: nn.Module, path: str | Path) -> Path:
    """Write the integer form to ``path`` (temp file, then rename: never half-written)."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    return write_atomic(path, lambda tmp: torch.save(export_integer(qmodel), tmp))


def _int_matmul(cols: torch.Tensor, weight_int: torch.Tensor) -> torch.Tensor:
    """(N, K, L) int64 columns times (C, K) int64 weights -> (N, C, L) int64."""
    return torch.einsum("ck,nkl->ncl", weight_int, cols)


def integer_conv(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """Recompute ``layer(x)`` from integer codes only (both quantizers must be on and uniform
    activations; LLAQ weights must have k = 1 on both sides, i.e. pure shifts)."""
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
        for key in ("k_pos", "k_neg"):
            if not torch.all(form[key] == 1):
                raise ValueError("integer_conv needs the shift form of LLAQ (k = 1 on both sides)")
        pos = codes >= 0
        shift = torch.where(pos, codes, -codes - 1)  # magnitude code e
        shifted = torch.where(pos, 1, 0) << shift  # x << e on the positive side ...
        negative = torch.where(pos, 0, 1) << shift  # ... and on the negative side
        ones = torch.ones_like(codes)
        acc_pos, acc_neg, acc_sum = (_int_matmul(cols, t) for t in (shifted, negative, ones))
        scale_pos = torch.exp2(-form["a_pos"].reshape(1, c_out, 1).double())
        scale_neg = torch.exp2(-form["a_neg"].reshape(1, c_out, 1).double())
        m = form["m"].reshape(1, c_out, 1).double()
        out = m * acc_sum + scale_pos * acc_pos - scale_neg * acc_neg
    else:
        wq = codes - form["weight_zero_point"].reshape(c_out, 1).long()
        out = form["weight_scale"].reshape(1, c_out, 1).double() * _int_matmul(cols, wq)
    out = out * form["act_scale"].double()
    if form["bias"] is not None:
        out = out + form["bias"].reshape(1, c_out, 1).double()
    h_out = (h + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    return out.reshape(n, c_out, h_out, -1).float()
