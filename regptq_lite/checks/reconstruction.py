"""Checks of notebook 06: the Fisher-weighted local loss (``fisher_local_loss``), AdaRound's rounding
regulariser (``rounding_regularizer``) and the reconstruction loop of one unit (``reconstruct_unit``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import recon
from ..qmodel import LayerPolicy, QuantLayer
from ..quantizers import LearnedRounding
from .core import Case, _call, _fail, _passed, _run


def fisher_local_loss(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """``fn(out, target, g)``: the Fisher-weighted local loss L_H = (out - target)^2 g^2, summed over
    channels (dim 1) and averaged over the rest (``recon.local_loss(out, target, g ** 2)``)."""
    g = torch.Generator().manual_seed(10)
    cases = []
    for shape in ((4, 6, 5, 5), (8, 5)):
        out, grad = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        target = out + torch.randn(shape, generator=g) * 0.3
        want = recon.local_loss(out, target, grad**2)
        err = (out - target).pow(2)
        mistakes = [
            ("g is not squared: the weight is g^2", recon.local_loss(out, target, grad)),
            ("the mean over channels; sum over channels (dim 1), then average", want / shape[1]),
            ("no Fisher weight: multiply the squared error by g^2", recon.local_loss(out, target, None)),
            ("summed over everything; sum over channels, average over the rest", (err * grad**2).sum()),
            ("|out - target| instead of the squared error", ((out - target).abs() * grad**2).sum(1).mean()),
        ]
        # the unit's output carries a gradient, as in calibration
        cases.append(Case((out.requires_grad_(True), target, grad), want, f"outputs of shape {shape}", mistakes))
    hint = "((out - target) ** 2 * g ** 2).sum(1).mean()"
    return _run("fisher_local_loss", fn, cases, hint, differentiable=True)


def rounding_regularizer(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> bool:
    """``fn(h, beta)``: AdaRound's regulariser sum(1 - |2h - 1|^beta) (``LearnedRounding.regularizer``)."""
    h = torch.rand(200, generator=torch.Generator().manual_seed(11))
    cases = []
    for beta in (20.0, 3.0, 2.5):
        want = LearnedRounding(h).regularizer(beta).detach()
        mistakes = [
            ('the "1 -" is missing: the term is 1 - |2h - 1|^beta', (2 * h - 1).abs().pow(beta).sum()),
            ("the mean instead of the sum", want / len(h)),
            ("(2h - 1)^beta without abs: wrong for odd beta, NaN for fractional", (1 - (2 * h - 1).pow(beta)).sum()),
            ("the power applies to |2h - 1|, not to 1 - |2h - 1|", (1 - (2 * h - 1).abs()).pow(beta).sum()),
            ("beta is missing: 1 - |2h - 1|^beta", (1 - (2 * h - 1).abs()).sum()),
        ]
        cases.append(Case((h.detach().requires_grad_(True), beta), want, f"beta {beta}", mistakes))
    hint = "(1 - (2 * h - 1).abs() ** beta).sum()"
    return _run("rounding_regularizer", fn, cases, hint, rtol=1e-4, atol=1e-5, differentiable=True)


RECON = recon.ReconSettings(iters=200, weight_lr=0.1)  # a learning rate that decides the rounding in 200 iterations


def _recon_problem() -> tuple[QuantLayer, list[dict], torch.Tensor, torch.Tensor, torch.Tensor]:
    """A conv 8 -> 8 (3x3) at W2A4 with learned rounding, prepared for reconstruction, with 256 fixed inputs,
    the float conv's outputs as targets and fixed Fisher weights."""
    g = torch.Generator().manual_seed(12)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        u = torch.rand(conv.weight.shape, generator=g) - 0.5
        conv.weight.copy_(-torch.sign(u) * torch.log1p(-2 * u.abs()) * 0.1)
        conv.bias.copy_(torch.randn(8, generator=g) * 0.1)
        inputs = torch.randn(256, 8, 8, 8, generator=g).relu()
        targets = conv(inputs)
    fisher = torch.rand(targets.shape, generator=g) + 0.5
    unit = QuantLayer(conv, LayerPolicy("unit", 2, 4, "uniform", "the reconstruct_unit check"))
    unit.aq.init(inputs)
    return unit, recon.prepare_unit(unit, RECON), inputs, targets, fisher


def _outcome(unit: QuantLayer, inputs: torch.Tensor, targets: torch.Tensor, fisher: torch.Tensor) -> tuple[float, ...]:
    """The unit's local loss with hard rounding, and the share of its rounding still undecided."""
    with recon.hard_rounding(unit):
        loss = recon.mean_local_loss(unit, [inputs], [targets], [fisher])
    return loss, unit.wq.undecided()


class _Watch:
    """Hooks on a unit under the student's loop: iterations (forward calls), whether gradients pile up between
    iterations (no zero_grad), and each iteration's first call of the rounding regulariser (iteration, beta)."""

    def __init__(self, unit: QuantLayer) -> None:
        self.iters, self.piled_up, self.betas = 0, False, []
        rounding: LearnedRounding = unit.wq
        alpha, regularizer = rounding.alpha, rounding.regularizer

        def count(_module, _args) -> None:
            self.iters += 1

        def before_accumulating(_grad: torch.Tensor) -> None:
            if alpha.grad is not None and alpha.grad.any():  # last iteration's gradient is still there
                self.piled_up = True

        def watched_regularizer(beta: float) -> torch.Tensor:
            if not self.betas or self.betas[-1][0] != self.iters:
                self.betas.append((self.iters, float(beta)))
            return regularizer(beta)

        rounding.regularizer = watched_regularizer
        self.handles = [unit.register_forward_pre_hook(count), alpha.register_hook(before_accumulating)]

    def stop(self) -> None:
        for handle in self.handles:
            handle.remove()


def _loop_mistake(
    losses: object, moved: bool, weighted: bool, watch: _Watch, undecided: float, ref_undecided: float
) -> str | None:
    """What is wrong with the student's loop, from what it returned, whether a gradient reached the Fisher weights
    (``weighted``) and what the hooks saw."""
    iters, warm = RECON.iters, int(RECON.warmup * RECON.iters)
    if not isinstance(losses, (list, tuple)) or len(losses) != iters:
        got = f"{type(losses).__name__}" + (f" of length {len(losses)}" if hasattr(losses, "__len__") else "")
        return f"return the list of the {iters} local losses, one per iteration (got a {got})"
    if not moved:
        return "the parameters did not move: call opt.step() after loss.backward() (zero_grad before backward)"
    if not weighted:
        return "the loss never uses fisher: L_H = recon.local_loss(unit(x), y, f) with f the batch's rows of fisher"
    if watch.piled_up:
        return "no zero_grad: the gradients pile up from one iteration to the next (opt.zero_grad() before backward)"
    if watch.betas:
        (first_iter, first), last = watch.betas[0], watch.betas[-1][1]
        if first_iter <= warm:
            return (
                f"the regulariser starts at iteration {first_iter}; add it only after the warm-up "
                f"(the first {warm} of {iters} iterations)"
            )
        if not (first >= RECON.beta_start - 2 and last <= RECON.beta_end + 1):
            return (
                f"beta runs from {first:.3g} to {last:.3g}; let it fall linearly from {RECON.beta_start:.3g} to "
                f"{RECON.beta_end:.3g} over the iterations after the warm-up"
            )
    if undecided > ref_undecided + 0.1:
        return (
            f"the rounding stays undecided ({undecided:.0%} of h between 0.05 and 0.95, the reference "
            f"{ref_undecided:.0%}): add {RECON.reg_weight} * recon.rounding_loss(unit, beta) after the warm-up"
        )
    return None


def reconstruct_unit(fn: Callable[..., list[float]]) -> bool:
    """``fn(unit, groups, inputs, targets, fisher, iters)``: the reconstruction loop of one unit, returning the
    local loss of each iteration. ``opt = torch.optim.Adam(groups)``; each iteration a random batch of 32 rows of
    ``inputs``, ``targets`` (and ``fisher``), L_H = ``recon.local_loss(unit(x), y, f)``; after a 20% warm-up add
    0.01 * ``recon.rounding_loss(unit, beta)``, beta falling linearly from 20 to 2; zero_grad, backward, step.

    The check runs it on a fixed problem beside the package's own loop (``recon.optimise_unit``) and compares
    the hard-rounded local loss and the share of rounding left undecided."""
    name = "reconstruct_unit"
    with torch.random.fork_rng():  # the notebook's random state stays as it was
        torch.manual_seed(0)
        unit, groups, inputs, targets, fisher = _recon_problem()
        nearest = _outcome(unit, inputs, targets, fisher)[0]
        recon.optimise_unit(unit, [inputs], [targets], RECON, groups, [fisher], desc="reference")
        ref_loss, ref_undecided = _outcome(unit, inputs, targets, fisher)

        unit, groups, inputs, targets, fisher = _recon_problem()
        start = [p.detach().clone() for group in groups for p in group["params"]]
        fisher.requires_grad_(True)  # a loss that uses the weights leaves a gradient on them
        watch = _Watch(unit)
        torch.manual_seed(0)
        losses = _call(name, fn, unit, groups, inputs, targets, fisher, RECON.iters)
        watch.stop()
        weighted = fisher.grad is not None
        loss, undecided = _outcome(unit, inputs, targets, fisher.detach())
    moved = any(not torch.equal(a, p) for a, p in zip(start, (p for group in groups for p in group["params"])))
    mistake = _loop_mistake(losses, moved, weighted, watch, undecided, ref_undecided)
    if mistake:
        _fail(name, mistake)
    if loss > ref_loss + 0.25 * (nearest - ref_loss):
        _fail(
            name,
            f"the hard-rounded local loss ends at {loss:.3f} (rounding to nearest {nearest:.3f}, the reference "
            f"{ref_loss:.3f}). Check the batch, the loss and the learning step.",
        )
    detail = f"hard-rounded loss {nearest:.3f} -> {loss:.3f} (reference {ref_loss:.3f}), {undecided:.0%} undecided"
    return _passed(name, detail)
