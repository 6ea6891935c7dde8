"""Fold BatchNorm into the convolution before it, so that the quantized weight is the one used."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

BN_TYPES = (nn.BatchNorm2d, FrozenBatchNorm2d)


@torch.no_grad()
def fold_into(conv: nn.Conv2d, bn: nn.Module) -> None:
    """conv <- BN(conv): w' = w * g / sqrt(v + eps), b' = (b - mu) * g / sqrt(v + eps) + beta."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gain = bn.weight / std
    conv.weight.mul_(gain.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * gain + bn.bias)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every (Conv2d, BN) pair in place and replace the BN by Identity; returns the count.

    Pairs are found the way torchvision and this package build them: consecutive children of an
    ``nn.Sequential``, and attributes ``convN`` / ``bnN`` of one module (ResNet blocks and stems).
    """
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = module._modules[first], module._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, BN_TYPES):
                    fold_into(conv, bn)
                    module._modules[second] = nn.Identity()
                    folded += 1
        for name, child in list(module.named_children()):
            if name.startswith("bn") and isinstance(child, BN_TYPES):
                conv = getattr(module, "conv" + name[2:], None)
                if isinstance(conv, nn.Conv2d):
                    fold_into(conv, child)
                    setattr(module, name, nn.Identity())
                    folded += 1
    return folded
