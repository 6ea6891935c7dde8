"""Reconstruction: calibrate a quantized detector unit by unit, in forward order.

The shared machinery of AdaRound, BRECQ, QDrop and Reg-PTQ (PAPER.md sections 5 and 7). A
*unit* is a residual block in the backbone and a single conv (with its norm and activation) in
the neck and head. For each unit in turn: cache its input from the quantized model (earlier
units already quantized) and its target output from the FP model, switch the unit's quantizers
on, and optimise its rounding (AdaRound), LLAQ parameters and activation steps (LSQ) against a
local loss, optionally Fisher-weighted by the gradient of the global loss, with QDrop's random
float activations, and, on head units, plus the FGIC global loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .detectors import is_two_stage
from .fgic import THETA_C, THETA_I, Teacher
from .head_outputs import dense_forward
from .progress import progress
from .qmodel import QuantLayer, set_quant
from .quantizers import AdaRoundQuantizer, LogAffineQuantizer, UniformQuantizer


@dataclass
class ReconSettings:
    """Knobs of one reconstruction run; defaults follow QDrop's public settings (PAPER.md section 5)."""

    iters: int = 200
    batch_size: int = 32
    adaround: bool = True
    learn_steps: bool = True
    weight_lr: float = 1e-3
    act_lr: float = 4e-5
    llaq_lr: float = 1e-3
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    drop_prob: float = 0.0
    fisher: bool = False
    global_loss: bool = False
    theta_c: float = THETA_C
    theta_i: float = THETA_I
    seed: int = 0


def _is_unit(module: nn.Module, granularity: str) -> bool:
    if isinstance(module, QuantLayer):
        return module.wq is not None or module.aq is not None
    if granularity == "layer":
        return False
    children = list(module.children())
    if isinstance(module, nn.Sequential) and sum(isinstance(c, QuantLayer) for c in children) == 1:
        return isinstance(children[0], QuantLayer) and not any(list(c.children()) for c in children[1:])
    return hasattr(module, "conv1") and hasattr(module, "conv2")  # a residual block


def recon_units(qmodel: nn.Module, granularity: str = "block") -> list[tuple[str, nn.Module]]:
    """Units in forward (registration) order; prediction layers in float are skipped.

    ``granularity="block"``: residual blocks, and conv + norm + activation groups elsewhere;
    ``"layer"``: every quantized layer on its own (AdaRound).
    """
    if granularity not in ("block", "layer"):
        raise ValueError(f"unknown granularity {granularity!r}; expected block or layer")
    units: list[tuple[str, nn.Module]] = []
    for name, module in qmodel.named_modules():
        if any(name.startswith(u + ".") for u, _ in units):
            continue
        if _is_unit(module, granularity) and any(m.wq is not None or m.aq is not None for m in _layers(module)):
            units.append((name, module))
    return units


def _layers(unit: nn.Module) -> list[QuantLayer]:
    return [m for m in unit.modules() if isinstance(m, QuantLayer)]


class _StopForward(Exception):
    """Raised by a hook once it has what it came for: the rest of the forward pass is skipped."""


def capture(
    model: nn.Module,
    modules: dict[str, nn.Module],
    images: list[torch.Tensor],
    run: Callable[[nn.Module, list[torch.Tensor], slice], object],
    output: bool,
    batch_size: int = 32,
) -> dict[str, list[torch.Tensor]]:
    """The inputs (or outputs) of each module over all images: per module, one tensor per call in
    a forward pass (a shared head is called once per pyramid level). ``run(model, batch, rows)``
    runs the forward pass on the images ``rows`` of ``images``.

    Capturing a single module stops each forward pass right after its last call.
    """
    per_call: dict[str, list[list[torch.Tensor]]] = {name: [] for name in modules}
    calls = dict.fromkeys(modules, 0)
    expected: int | None = None
    stop_early = len(modules) == 1

    def hook(name: str):
        def record(_m, args, out=None):
            value = (out if output else args[0]).detach()
            if calls[name] >= len(per_call[name]):
                per_call[name].append([])
            per_call[name][calls[name]].append(value)
            calls[name] += 1
            if stop_early and calls[name] == expected:
                raise _StopForward

        return record

    handles = [
        m.register_forward_hook(hook(n)) if output else m.register_forward_pre_hook(hook(n)) for n, m in modules.items()
    ]
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                calls = dict.fromkeys(modules, 0)
                try:
                    run(model, images[start : start + batch_size], slice(start, start + batch_size))
                except _StopForward:
                    pass
                expected = max(calls.values())
    finally:
        for handle in handles:
            handle.remove()
    return {name: [torch.cat(chunks) for chunks in per_call[name]] for name in modules}


def prepare_unit(unit: nn.Module, settings: ReconSettings) -> list[dict]:
    """Switch the unit's quantizers on, wrap uniform weights in AdaRound; return param groups."""
    weights, llaq, steps = [], [], []
    for layer in _layers(unit):
        layer.quant_w, layer.quant_a = layer.wq is not None, layer.aq is not None
        layer.drop_prob = settings.drop_prob
        if isinstance(layer.wq, UniformQuantizer) and settings.adaround:
            layer.wq = AdaRoundQuantizer(layer.wq, layer.layer.weight.detach())
        if isinstance(layer.wq, AdaRoundQuantizer):
            weights.append(layer.wq.alpha)
        elif isinstance(layer.wq, LogAffineQuantizer):
            llaq += [layer.wq.m, layer.wq.k_pos, layer.wq.a_pos, layer.wq.k_neg, layer.wq.a_neg]
        if layer.aq is not None and settings.learn_steps:
            steps.append(layer.aq.scale)
    groups = [
        {"params": weights, "lr": settings.weight_lr, "kind": "weights"},
        {"params": llaq, "lr": settings.llaq_lr, "kind": "llaq"},
        {"params": steps, "lr": settings.act_lr, "kind": "steps"},
    ]
    return [g for g in groups if g["params"]]


def finish_unit(unit: nn.Module) -> None:
    """Hard rounding and no QDrop from now on."""
    for layer in _layers(unit):
        layer.drop_prob = 0.0
        if isinstance(layer.wq, AdaRoundQuantizer):
            layer.wq.soft = False


def local_loss(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Squared error summed over channels, averaged over the rest (BRECQ), Fisher-weighted if given."""
    err = (out - target).pow(2)
    if weight is not None:
        err = err * weight
    return err.sum(1).mean() if err.ndim > 1 else err.mean()


def rounding_loss(unit: nn.Module, beta: float) -> torch.Tensor:
    terms = [layer.wq.regularizer(beta) for layer in _layers(unit) if isinstance(layer.wq, AdaRoundQuantizer)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def optimise_unit(
    unit: nn.Module,
    inputs: list[torch.Tensor],
    targets: list[torch.Tensor],
    settings: ReconSettings,
    fisher: list[torch.Tensor] | None = None,
    extra_loss: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None,
    extra_scale: float = 1.0,
    desc: str = "",
) -> dict[str, float]:
    """Optimise one unit's quantization parameters; returns the first and last local loss.

    ``extra_loss`` (the global loss) is added as ``extra_scale / positions * extra_loss``, where
    positions = output elements per channel in the batch: with ``extra_scale = 1 / mean(g^2)``
    this undoes the normalisation of the Fisher weights, so that L_H and L_G keep the paper's
    balance (no weighting between them).
    """
    groups = prepare_unit(unit, settings)
    generator = torch.Generator().manual_seed(settings.seed)
    sizes = torch.tensor([x.numel() for x in inputs], dtype=torch.float)
    history = []
    if groups and settings.iters > 0:
        opt = torch.optim.Adam(groups)
        cosine = lambda it: 0.5 * (1 + math.cos(math.pi * it / settings.iters))  # noqa: E731
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, [cosine if g["kind"] == "steps" else (lambda it: 1.0) for g in groups]
        )
        warm = int(settings.warmup * settings.iters)
        unit.train()
        for it in progress(range(settings.iters), desc=desc, leave=False, unit="it"):
            call = int(torch.multinomial(sizes, 1, generator=generator))
            idx = torch.randperm(len(inputs[call]), generator=generator)[: settings.batch_size]
            out = unit(inputs[call][idx])
            loss = local_loss(out, targets[call][idx], None if fisher is None else fisher[call][idx])
            history.append(loss.item())
            if extra_loss is not None:
                loss = loss + extra_scale * out.shape[1] / out.numel() * extra_loss(out, call, idx)
            if settings.adaround and it >= warm:
                done = (it - warm) / max(1, settings.iters - warm)
                beta = settings.beta_end + (settings.beta_start - settings.beta_end) * (1 - done)
                loss = loss + settings.reg_weight * rounding_loss(unit, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        unit.eval()
    finish_unit(unit)
    first, last = (history[0], history[-1]) if history else (float("nan"), float("nan"))
    return {"first_loss": first, "last_loss": last}


def fisher_weights(
    qmodel: nn.Module,
    unit: nn.Module,
    images: list[torch.Tensor],
    loss_fn: Callable[[nn.Module, list[torch.Tensor], slice], torch.Tensor],
    batch_size: int = 32,
) -> tuple[list[torch.Tensor] | None, float]:
    """g^2 = (dL_G/dO)^2 at the unit's output O, normalised to mean 1 (one tensor per call), and
    the mean it was divided by.

    None when the gradient is negligible (nothing upstream is quantized yet): plain MSE then.
    """
    per_call: list[list[torch.Tensor]] = []
    outs: list[torch.Tensor] = []
    handle = unit.register_forward_hook(lambda _m, _a, out: outs.append(out))
    try:
        for start in range(0, len(images), batch_size):
            outs.clear()
            with torch.enable_grad():
                loss = loss_fn(qmodel, images[start : start + batch_size], slice(start, start + batch_size))
                grads = torch.autograd.grad(loss, outs, allow_unused=True)
            for call, g in enumerate(grads):
                if call >= len(per_call):
                    per_call.append([])
                per_call[call].append(torch.zeros_like(outs[call]) if g is None else g.detach().pow(2))
    finally:
        handle.remove()
    squares = [torch.cat(chunks) for chunks in per_call]
    mean = torch.cat([s.flatten() for s in squares]).mean()
    if not torch.isfinite(mean) or mean < 1e-30:
        return None, 1.0
    return [s / mean for s in squares], mean.item()


def reconstruct(
    qmodel: nn.Module, images: list[torch.Tensor], settings: ReconSettings, granularity: str = "block"
) -> list[dict]:
    """Calibrate every unit of ``qmodel`` (observers already initialised) in forward order.

    Inputs come from the quantized model as it stands (earlier units quantized), targets from
    a float copy taken before any unit is switched on; both are captured one unit at a time, so
    memory holds one unit's activations on the calibration set, not every unit's. With
    ``settings.fisher`` or ``settings.global_loss``, the float copy is also the teacher of the
    global loss L_G. A two-stage detector always runs on the float copy's proposals, so that the
    RoI heads of both models see the same boxes.
    """
    fp = copy.deepcopy(qmodel)
    needs_teacher = settings.fisher or settings.global_loss or is_two_stage(qmodel)
    teacher = Teacher(fp, images, settings.theta_c, settings.theta_i) if needs_teacher else None
    forward = teacher.forward if teacher is not None else lambda model, batch, _rows: dense_forward(model, batch)
    stats = []
    units = recon_units(qmodel, granularity)
    for name, unit in progress(units, desc="calibrate", unit="unit"):
        inputs = capture(qmodel, {name: unit}, images, forward, output=False)[name]
        targets = capture(fp, {name: fp.get_submodule(name)}, images, forward, output=True)[name]
        fisher, g2_mean = fisher_weights(qmodel, unit, images, teacher.loss) if settings.fisher else (None, 1.0)
        extra = teacher.head_unit_loss(qmodel, name) if settings.global_loss else None
        result = optimise_unit(unit, inputs, targets, settings, fisher, extra, 1.0 / g2_mean, desc=name)
        stats.append({"unit": name, "fisher": fisher is not None, "global_loss": extra is not None, **result})
    set_quant(qmodel, weights=True, activations=True)
    return stats
