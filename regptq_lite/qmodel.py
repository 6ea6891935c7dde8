"""Full quantization of a torchvision detector: wrapped layers, the bit policy, switches.

``quantize_detector`` copies a detector, folds BatchNorm into convolutions, and replaces every
``Conv2d`` / ``Linear`` by a :class:`QuantLayer` holding a weight quantizer and an input
activation quantizer, with bits set by the paper's full-quantization policy (PAPER.md section 3):
the first layer at 8 bits, the final class/box prediction layers in float, everything else at
WwAa. Element-wise additions and everything that is not a conv/linear stay in float.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bn_fold import fold_batchnorm
from .llaq import LogAffineQuantizer
from .quantizers import UniformQuantizer, check_bits

REGIMES = ("full", "backbone_neck")
FIRST_LAYER_BITS = 8
HEAD_PREFIXES = ("head.", "rpn.", "roi_heads.")
PREDICTION_LAYERS = {
    "head.classification_head.cls_logits",
    "head.regression_head.bbox_pred",
    "head.regression_head.bbox_reg",
    "head.regression_head.bbox_ctrness",
    "rpn.head.cls_logits",
    "rpn.head.bbox_pred",
    "roi_heads.box_predictor.cls_score",
    "roi_heads.box_predictor.bbox_pred",
}


@dataclass(frozen=True)
class LayerPolicy:
    """Bits and quantizer kinds of one layer, and why."""

    name: str
    wbits: int | None
    abits: int | None
    weight_kind: str
    reason: str


class QuantLayer(nn.Module):
    """A conv or linear layer with a weight quantizer and an input-activation quantizer.

    ``quant_w`` / ``quant_a`` switch each on (calibration turns layers on in forward order).
    ``drop_prob`` > 0 (QDrop, training mode only) keeps each input element in float with that
    probability.
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, policy: LayerPolicy) -> None:
        super().__init__()
        self.layer = layer
        self.policy = policy
        self.wq: nn.Module | None = None
        self.aq: UniformQuantizer | None = None
        if policy.wbits is not None:
            if policy.weight_kind == "llaq":
                self.wq = LogAffineQuantizer(policy.wbits, channel_axis=0)
            else:
                self.wq = UniformQuantizer(policy.wbits, channel_axis=0, observer="mse")
        if policy.abits is not None:
            self.aq = UniformQuantizer(policy.abits, channel_axis=None, observer="mse", learn_step=True)
        self.quant_w = False
        self.quant_a = False
        self.drop_prob = 0.0

    def weight(self) -> torch.Tensor:
        """The weight this layer uses now: fake-quantized if its weight quantizer is on."""
        if self.quant_w and self.wq is not None:
            return self.wq(self.layer.weight)
        return self.layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_a and self.aq is not None:
            xq = self.aq(x)
            x = torch.where(torch.rand_like(x) < self.drop_prob, x, xq) if self.training and self.drop_prob else xq
        w = self.weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        c = self.layer
        return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


def layer_policy(name: str, is_first: bool, wbits: int, abits: int, regime: str, head_weight_kind: str) -> LayerPolicy:
    """The full-quantization bit policy for one conv/linear layer."""
    if name in PREDICTION_LAYERS:
        return LayerPolicy(name, None, None, "float", "final prediction layer stays in float")
    if is_first:
        return LayerPolicy(name, FIRST_LAYER_BITS, FIRST_LAYER_BITS, "uniform", "first layer at 8 bits")
    if name.startswith(HEAD_PREFIXES):
        if regime == "backbone_neck":
            return LayerPolicy(name, None, None, "float", "head stays in float (backbone_neck regime)")
        return LayerPolicy(name, wbits, abits, head_weight_kind, f"head layer, W{wbits}A{abits}")
    return LayerPolicy(name, wbits, abits, "uniform", f"backbone/neck layer, W{wbits}A{abits}")


def quantize_detector(
    model: nn.Module,
    wbits: int,
    abits: int,
    regime: str = "full",
    head_weight_kind: str = "uniform",
) -> nn.Module:
    """A fully quantized copy of ``model`` (BN folded, quantizers in place but switched off)."""
    check_bits(wbits)
    check_bits(abits)
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; expected one of {', '.join(REGIMES)}")
    if head_weight_kind not in ("uniform", "llaq"):
        raise ValueError(f"unknown head weight quantizer {head_weight_kind!r}; expected uniform or llaq")
    qmodel = copy.deepcopy(model).eval()
    fold_batchnorm(qmodel)
    layers = [(n, m) for n, m in qmodel.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError("the model has no Conv2d or Linear layer to quantize")
    for index, (name, layer) in enumerate(layers):
        policy = layer_policy(name, index == 0, wbits, abits, regime, head_weight_kind)
        parent_name, _, child = name.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        setattr(parent, child, QuantLayer(layer, policy))
    return qmodel


def quant_layers(qmodel: nn.Module) -> list[tuple[str, QuantLayer]]:
    """The wrapped layers of a quantized model, in module (forward) order."""
    return [(n, m) for n, m in qmodel.named_modules() if isinstance(m, QuantLayer)]


def set_quant(qmodel: nn.Module, weights: bool, activations: bool, names: set[str] | None = None) -> None:
    """Switch weight/activation quantization of the named layers (default: all) on or off."""
    for name, layer in quant_layers(qmodel):
        if names is None or name in names:
            layer.quant_w = weights and layer.wq is not None
            layer.quant_a = activations and layer.aq is not None


def policy_table(qmodel: nn.Module) -> str:
    """The bit policy as a plain-text table: layer, W bits, A bits, weight quantizer, reason."""
    rows = [("layer", "W", "A", "weights", "reason")]
    for name, layer in quant_layers(qmodel):
        p = layer.policy
        rows.append((name, str(p.wbits or "fp"), str(p.abits or "fp"), p.weight_kind, p.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
