"""Cost accounting of a (fully) quantized detector: bit-weighted compute and storage.

Conventions (PAPER.md section 1, Table 4 of the paper):
- FLOPs = 2 x multiply-accumulates of every Conv2d/Linear, counted on one forward pass.
- Bit-weighted FLOPs of a layer = FLOPs x max(W bits, A bits) / 32: a b-bit operation costs b/32
  of a float one. This is the convention that reproduces the paper's W4A4 ratio (about 8x with
  the first layer at 8 bits and the prediction layers in float). BOPs (FLOPs x Wb x Ab / 32^2) are
  reported beside it.
- Storage = sum of parameters x their bits (float: 32); biases stay 32-bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .qmodel import layer_policy


@dataclass(frozen=True)
class LayerCost:
    name: str
    macs: int
    weight_params: int
    bias_params: int
    wbits: int
    abits: int


@torch.no_grad()
def count_macs(model: nn.Module, images: list[torch.Tensor]) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d/Linear on one forward pass over ``images``."""
    macs: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, _inputs, output: torch.Tensor) -> None:
            per_output = module.weight[0].numel()  # (C_in / groups) * kh * kw, or in_features
            macs[name] = macs.get(name, 0) + output.numel() * per_output

        return record

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    try:
        model.eval()(images)
    finally:
        for h in handles:
            h.remove()
    return {n: macs.get(n, 0) for n, _ in layers}


def layer_costs(
    model: nn.Module, macs: dict[str, int], wbits: int | None, abits: int | None, regime: str = "full"
) -> list[LayerCost]:
    """Per-layer MACs, parameters and bits under the full-quantization policy (None: all float)."""
    layers = [(n, m) for n, m in model.named_modules() if n in macs]
    costs = []
    for index, (name, module) in enumerate(layers):
        if wbits is None or abits is None:
            w, a = 32, 32
        else:
            p = layer_policy(name, index == 0, wbits, abits, regime, "uniform")
            w, a = p.wbits or 32, p.abits or 32
        bias = module.bias.numel() if module.bias is not None else 0
        costs.append(LayerCost(name, macs[name], module.weight.numel(), bias, w, a))
    return costs


def summarize(costs: list[LayerCost]) -> dict[str, float]:
    """GFLOPs, bit-weighted GFLOPs, GBOPs and storage in MB (10^6 bytes) of a cost list."""
    flops = sum(2 * c.macs for c in costs)
    bit_flops = sum(2 * c.macs * max(c.wbits, c.abits) / 32 for c in costs)
    bops = sum(2 * c.macs * c.wbits * c.abits / 32**2 for c in costs)
    bits = sum(c.weight_params * c.wbits + c.bias_params * 32 for c in costs)
    return {
        "GFLOPs": flops / 1e9,
        "bit_GFLOPs": bit_flops / 1e9,
        "GBOPs": bops / 1e9,
        "storage_MB": bits / 8 / 1e6,
        "params_M": sum(c.weight_params + c.bias_params for c in costs) / 1e6,
    }


def cost_table(
    model: nn.Module,
    images: list[torch.Tensor],
    settings: tuple[tuple[int, int], ...] = ((2, 4), (3, 3), (4, 4), (4, 8)),
) -> list[dict]:
    """FP, backbone+neck-only and full quantization at each (W, A): compute, storage, savings."""
    macs = count_macs(model, images)
    fp = summarize(layer_costs(model, macs, None, None))
    rows = [{"setting": "FP32", "regime": "-", **fp, "compute_saving": 1.0, "storage_saving": 1.0}]
    for wbits, abits in settings:
        for regime in ("backbone_neck", "full"):
            s = summarize(layer_costs(model, macs, wbits, abits, regime))
            rows.append(
                {
                    "setting": f"W{wbits}A{abits}",
                    "regime": regime,
                    **s,
                    "compute_saving": fp["bit_GFLOPs"] / s["bit_GFLOPs"],
                    "storage_saving": fp["storage_MB"] / s["storage_MB"],
                }
            )
    return rows
