"""Reconstruction: calibrate a quantized detector unit by unit, in forward order.

The shared machinery of AdaRound, BRECQ, QDrop and Reg-PTQ (PAPER.md sections 5 and 7). A
*unit* is a residual block in the backbone and a single conv (with its norm and activation) in
the neck and head. For each unit in turn (Algorithm 1 of Reg-PTQ):

1. cache its input from the quantized model (earlier units already quantized) and its target
   output from the FP model;
2. switch the unit's quantizers on (``prepare_unit``) and, for Fisher-weighted methods, take
   g = dL_G/dO at its output, rounding to nearest (``fisher_weights``);
3. optimise its rounding (AdaRound, or AdaRound in LLAQ's log domain), LLAQ grid and activation
   steps (LSQ) against the local loss L_H, with QDrop's random float activations where asked,
   plus, for Reg-PTQ, the filtered global loss L_G of the whole detector (``optimise_unit``);
4. round hard and freeze the unit (``finish_unit``).

Balance (PAPER.md section 5, "no weighting"): L_H and L_G enter unweighted in their *shape*, but
L_G is rescaled per unit by one constant c = L_H0 / L_G0, the ratio of the two at the start
(quantizers on, rounding to nearest), so that both start equal; the task loss L_H + c L_G then
stands to AdaRound's regulariser as BRECQ's local loss does. To cost little more than BRECQ, L_G runs
the whole detector on a few calibration images (``global_images``) every few iterations
(``global_every``), and its gradient is reused in the iterations between (the parameters move little
in a few Adam steps). Adding the term only on those iterations, scaled up to keep its mean, gives
gradient spikes that cost AP under Adam (measured: README, "Decisions").
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .detectors import is_two_stage
from .fgic import THETA_C, THETA_I, Teacher
from .head_outputs import dense_forward
from .llaq import FORMS, LogAffineQuantizer, LogAffineTuner
from .progress import progress
from .qmodel import QuantLayer, set_quant
from .quantizers import AdaRoundQuantizer, LearnedRounding, UniformQuantizer

LLAQ_ROUNDINGS = ("learned", "nearest")


@dataclass
class ReconSettings:
    """Knobs of one reconstruction run; defaults follow QDrop's public settings (PAPER.md section 5)."""

    iters: int = 200
    batch_size: int = 32
    adaround: bool = True
    learn_steps: bool = True
    weight_lr: float = 1e-3
    act_lr: float = 4e-5
    llaq_lr: float = 1e-3  # LLAQ grid offsets: m in channel spreads, k in octaves, a in codes
    llaq_rounding: str = "learned"
    llaq_form: str = "float"
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    drop_prob: float = 0.0
    fisher: bool = False
    global_loss: bool = False
    global_every: int = 12
    global_images: int = 8
    global_weight: float = 1.0  # multiplies c = L_H0 / L_G0 (1: L_G starts equal to L_H)
    theta_c: float = THETA_C
    theta_i: float = THETA_I
    seed: int = 0

    def __post_init__(self) -> None:
        if self.llaq_rounding not in LLAQ_ROUNDINGS:
            raise ValueError(f"unknown LLAQ rounding {self.llaq_rounding!r}; expected learned or nearest")
        if self.llaq_form not in FORMS:
            raise ValueError(f"unknown LLAQ form {self.llaq_form!r}; expected {' or '.join(FORMS)}")
        if self.global_every < 1 or self.global_images < 1:
            raise ValueError("global_every and global_images must be at least 1")


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
    """Switch the unit's quantizers on, give its weights learned rounding (AdaRound on a uniform grid,
    ``LogAffineTuner`` on an LLAQ grid); return the optimiser's parameter groups, which alone
    require a gradient from now on."""
    steps = []
    for layer in _layers(unit):
        layer.quant_w, layer.quant_a = layer.wq is not None, layer.aq is not None
        layer.drop_prob = settings.drop_prob
        weight = layer.layer.weight.detach()
        if isinstance(layer.wq, UniformQuantizer) and settings.adaround:
            layer.wq = AdaRoundQuantizer(layer.wq, weight)
        elif isinstance(layer.wq, LogAffineQuantizer):
            shift = settings.llaq_form == "shift"
            if shift:
                layer.wq.snap_k_()
            layer.wq = LogAffineTuner(layer.wq, weight, settings.llaq_rounding, learn_k=not shift)
        if layer.aq is not None and settings.learn_steps:
            steps.append(layer.aq.scale)
    rounding = [m.alpha for m in unit.modules() if isinstance(m, LearnedRounding)]
    grids = [p for m in unit.modules() if isinstance(m, LogAffineTuner) for p in m.grid_parameters()]
    groups = [
        {"params": rounding, "lr": settings.weight_lr, "kind": "rounding"},
        {"params": grids, "lr": settings.llaq_lr, "kind": "llaq"},
        {"params": steps, "lr": settings.act_lr, "kind": "steps"},
    ]
    groups = [g for g in groups if g["params"]]
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    return groups


@contextmanager
def hard_rounding(unit: nn.Module):
    """Within the block, every learned rounding of the unit rounds hard (to nearest at the start)."""
    roundings = [m for m in unit.modules() if isinstance(m, LearnedRounding)]
    soft = [m.soft for m in roundings]
    for m in roundings:
        m.soft = False
    try:
        yield
    finally:
        for m, was in zip(roundings, soft):
            m.soft = was


def finish_unit(unit: nn.Module, settings: ReconSettings) -> dict[str, float]:
    """Round hard, commit LLAQ grids (the shift form puts m on its fixed-point grid), no QDrop, and
    freeze the unit. Returns the share of learned roundings still undecided when soft rounding
    ended, and how far LLAQ grids moved."""
    roundings = [m for m in unit.modules() if isinstance(m, LearnedRounding)]
    stats = {}
    if roundings:
        counts = [m.alpha.numel() for m in roundings]
        stats["undecided"] = sum(m.undecided() * n for m, n in zip(roundings, counts)) / sum(counts)
    tuners = [m for m in unit.modules() if isinstance(m, LogAffineTuner)]
    for key in ("dm", "dk", "da") if tuners else ():
        stats[f"llaq_{key}"] = sum(t.drift()[key] for t in tuners) / len(tuners)
    for m in roundings:
        m.soft = False
    for t in tuners:
        t.commit(shift_form=settings.llaq_form == "shift")
    for layer in _layers(unit):
        layer.drop_prob = 0.0
    unit.requires_grad_(False)
    return stats


def local_loss(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """L_H: squared error summed over channels, averaged over the rest (BRECQ), Fisher-weighted if given."""
    err = (out - target).pow(2)
    if weight is not None:
        err = err * weight
    return err.sum(1).mean() if err.ndim > 1 else err.mean()


def rounding_loss(unit: nn.Module, beta: float) -> torch.Tensor:
    """AdaRound's regulariser summed over every learned rounding of the unit."""
    terms = [m.regularizer(beta) for m in unit.modules() if isinstance(m, LearnedRounding)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


GlobalLoss = Callable[[torch.Generator], torch.Tensor]  # L_G of the whole detector on a few images


@torch.no_grad()
def mean_local_loss(
    unit: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor], fisher: list[torch.Tensor] | None
) -> float:
    """L_H over the whole calibration set, with the unit as it stands (eval mode)."""
    total, count = 0.0, 0
    for call, (x, y) in enumerate(zip(inputs, targets)):
        for start in range(0, len(x), 32):
            rows = slice(start, start + 32)
            loss = local_loss(unit(x[rows]), y[rows], None if fisher is None else fisher[call][rows])
            total, count = total + loss.item() * len(x[rows]), count + len(x[rows])
    return total / max(count, 1)


def optimise_unit(
    unit: nn.Module,
    inputs: list[torch.Tensor],
    targets: list[torch.Tensor],
    settings: ReconSettings,
    groups: list[dict],
    fisher: list[torch.Tensor] | None = None,
    global_loss: GlobalLoss | None = None,
    global_scale: float = 1.0,
    desc: str = "",
) -> dict[str, float]:
    """Optimise one prepared unit: Adam on ``groups`` against L_H + ``global_scale`` * L_G + AdaRound's
    regulariser after the warm-up (beta annealed from ``beta_start`` to ``beta_end``). The gradient of
    L_G is taken every ``global_every`` iterations and added to every iteration's gradient until the
    next one. Returns the first and last L_H (and L_G)."""
    generator = torch.Generator().manual_seed(settings.seed)
    sizes = torch.tensor([x.numel() for x in inputs], dtype=torch.float)
    local, glob = [], []
    if not groups or settings.iters <= 0:
        return {}
    opt = torch.optim.Adam(groups)
    params = [p for g in groups for p in g["params"]]
    global_grads: tuple[torch.Tensor | None, ...] = ()
    cosine = lambda it: 0.5 * (1 + math.cos(math.pi * it / settings.iters))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, [cosine if g["kind"] == "steps" else (lambda it: 1.0) for g in groups]
    )
    warm = int(settings.warmup * settings.iters)
    unit.train()
    for it in progress(range(settings.iters), desc=desc, leave=False, unit="it"):
        call = int(torch.multinomial(sizes, 1, generator=generator))
        idx = torch.randperm(len(inputs[call]), generator=generator)[: settings.batch_size]
        loss = local_loss(unit(inputs[call][idx]), targets[call][idx], None if fisher is None else fisher[call][idx])
        local.append(loss.item())
        if global_loss is not None and it % settings.global_every == 0:
            lg = global_loss(generator)
            glob.append(lg.item())
            global_grads = torch.autograd.grad(global_scale * lg, params, allow_unused=True)
        if settings.adaround and it >= warm:
            done = (it - warm) / max(1, settings.iters - warm)
            beta = settings.beta_end + (settings.beta_start - settings.beta_end) * (1 - done)
            loss = loss + settings.reg_weight * rounding_loss(unit, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p, g in zip(params, global_grads):
            if g is not None:
                p.grad = g.clone() if p.grad is None else p.grad + g
        opt.step()
        schedule.step()
    unit.eval()
    stats = {"first_local": local[0], "last_local": local[-1]}
    if glob:
        stats.update(first_global=glob[0], last_global=glob[-1])
    return stats


def fisher_weights(
    qmodel: nn.Module,
    unit: nn.Module,
    images: list[torch.Tensor],
    loss_fn: Callable[[nn.Module, list[torch.Tensor], slice], torch.Tensor],
    batch_size: int = 32,
) -> tuple[list[torch.Tensor] | None, float]:
    """g^2 = (dL_G/dO)^2 at the unit's output O, normalised to mean 1 (one tensor per call), and the
    mean L_G over the images (the unit's quantizers on, as they stand).

    None when the gradient is negligible (nothing quantized changes the output yet): plain MSE then.
    """
    per_call: list[list[torch.Tensor]] = []
    outs: list[torch.Tensor] = []
    total = 0.0
    handle = unit.register_forward_hook(lambda _m, _a, out: outs.append(out))
    try:
        for start in range(0, len(images), batch_size):
            outs.clear()
            batch = images[start : start + batch_size]
            with torch.enable_grad():
                loss = loss_fn(qmodel, batch, slice(start, start + batch_size))
                grads = torch.autograd.grad(loss, outs, allow_unused=True)
            total += loss.item() * len(batch)
            for call, g in enumerate(grads):
                if call >= len(per_call):
                    per_call.append([])
                per_call[call].append(torch.zeros_like(outs[call]) if g is None else g.detach().pow(2))
    finally:
        handle.remove()
    squares = [torch.cat(chunks) for chunks in per_call]
    mean = torch.cat([s.flatten() for s in squares]).mean()
    if not torch.isfinite(mean) or mean < 1e-30:
        return None, total / len(images)
    return [s / mean for s in squares], total / len(images)


def global_loss_on(qmodel: nn.Module, teacher: Teacher, images: list[torch.Tensor], count: int) -> GlobalLoss:
    """L_G of the whole quantized detector on ``count`` consecutive calibration images from a random start."""

    def loss(generator: torch.Generator) -> torch.Tensor:
        start = int(torch.randint(0, max(1, len(images) - count + 1), (1,), generator=generator))
        rows = slice(start, start + count)
        return teacher.loss(qmodel, images[rows], rows)

    return loss


def reconstruct(
    qmodel: nn.Module, images: list[torch.Tensor], settings: ReconSettings, granularity: str = "block"
) -> list[dict]:
    """Calibrate every unit of ``qmodel`` (observers already initialised) in forward order.

    Inputs come from the quantized model as it stands (earlier units quantized), targets from a
    float copy taken before any unit is switched on; both are captured one unit at a time, so memory
    holds one unit's activations on the calibration set, not every unit's. With ``settings.fisher``
    or ``settings.global_loss``, the float copy is also the teacher of the global loss L_G. A
    two-stage detector always runs on the float copy's proposals, so that the RoI heads of both
    models see the same boxes.
    """
    fp = copy.deepcopy(qmodel)
    qmodel.requires_grad_(False)
    needs_teacher = settings.fisher or settings.global_loss or is_two_stage(qmodel)
    teacher = Teacher(fp, images, settings.theta_c, settings.theta_i) if needs_teacher else None
    forward = teacher.forward if teacher is not None else lambda model, batch, _rows: dense_forward(model, batch)
    stats = []
    for name, unit in progress(recon_units(qmodel, granularity), desc="calibrate", unit="unit"):
        start = time.time()
        inputs = capture(qmodel, {name: unit}, images, forward, output=False)[name]
        targets = capture(fp, {name: fp.get_submodule(name)}, images, forward, output=True)[name]
        groups = prepare_unit(unit, settings)
        row: dict = {"unit": name}
        fisher, global_loss, scale = None, None, 1.0
        if settings.fisher or settings.global_loss:
            with hard_rounding(unit):
                fisher, lg0 = fisher_weights(qmodel, unit, images, teacher.loss)
                fisher = fisher if settings.fisher else None
                if settings.global_loss:
                    lh0 = mean_local_loss(unit, inputs, targets, fisher)
                    scale = settings.global_weight * lh0 / max(lg0, 1e-12)
                    global_loss = global_loss_on(qmodel, teacher, images, settings.global_images)
                    row.update(start_local=lh0, start_global=lg0, global_scale=scale)
        row.update(optimise_unit(unit, inputs, targets, settings, groups, fisher, global_loss, scale, desc=name))
        row.update(finish_unit(unit, settings), fisher=fisher is not None, seconds=round(time.time() - start, 2))
        stats.append(row)
    set_quant(qmodel, weights=True, activations=True)
    return stats
