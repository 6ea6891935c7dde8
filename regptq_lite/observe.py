"""Initialise a quantized detector's quantizers from its weights and calibration activations."""

from __future__ import annotations

import torch
from torch import nn

from .qmodel import quant_layers

MAX_SAMPLES = 400_000


@torch.no_grad()
def layer_inputs(
    model: nn.Module,
    layers: dict[str, nn.Module],
    images: list[torch.Tensor],
    batch_size: int = 32,
    max_values: int = MAX_SAMPLES,
) -> dict[str, torch.Tensor]:
    """A flat, seeded subsample (at most ``max_values`` values) of the input of each of ``layers``
    while ``model`` (eval mode) runs over ``images``; layers that were never called are left out."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    hooks = [
        layer.register_forward_pre_hook(lambda _m, args, name=name: seen[name].append(args[0].flatten()))
        for name, layer in layers.items()
    ]
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        for hook in hooks:
            hook.remove()
    generator = torch.Generator().manual_seed(0)
    samples = {}
    for name, chunks in seen.items():
        if not chunks:
            continue
        flat = torch.cat(chunks)
        if flat.numel() > max_values:
            flat = flat[torch.randperm(flat.numel(), generator=generator)[:max_values]]
        samples[name] = flat
    return samples


def collect_inputs(qmodel: nn.Module, images: list[torch.Tensor], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """A flat, seeded subsample (at most MAX_SAMPLES values) of every wrapped layer's input."""
    return layer_inputs(qmodel, dict(quant_layers(qmodel)), images, batch_size)


@torch.no_grad()
def init_quantizers(qmodel: nn.Module, images: list[torch.Tensor]) -> None:
    """Weight quantizers from the (BN-folded) weights; activation quantizers from FP inputs."""
    inputs = collect_inputs(qmodel, images)
    for name, layer in quant_layers(qmodel):
        if layer.wq is not None:
            layer.wq.init(layer.layer.weight)
        if layer.aq is not None:
            if name not in inputs:
                raise ValueError(f"layer {name} saw no input during calibration")
            layer.aq.init(inputs[name])
