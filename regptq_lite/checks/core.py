"""Assignment checks that teach: each runs the student's function on fixed inputs and compares the answer
with the package's own computation. A wrong answer is also compared with the typical wrong answers of that
exercise (floor instead of round, a missing scale, the quantized model's confidence instead of the FP one, ...),
so that the message names the mistake; an answer that matches none of them gets "off by" and a hint.

A check prints ``passed (...)`` and returns True, or prints ``not yet (...)`` with the reason and raises
``CheckFailed`` (an AssertionError: nbgrader's autograder gives the cell zero). A function that raises
NotImplementedError (a student copy before the exercise is done) stops the notebook there, as an unanswered
exercise should; any other error in the student's function becomes a ``CheckFailed`` that names it.

The hint gives the formula away; for graded work ``set_hints(False)`` keeps it back (``student --no-hints``
writes that call into the copies): a wrong answer is then told which known mistake it makes, or how far off it
is, and nothing more.

This module holds what every check shares: ``CheckFailed``, ``Case`` and the helpers that run the student's
function and judge its answer. The checks themselves live in one module per notebook topic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch


class CheckFailed(AssertionError):
    """The student's answer is wrong; the message says how."""


NO_HINT = "Compare your function, step by step, with the definition in the notebook."
_hints = {"on": True}


def set_hints(on: bool) -> None:
    """Whether a wrong answer that matches no known mistake is shown the formula (on, the default) or only
    ``NO_HINT`` (off: graded work)."""
    _hints["on"] = on


@dataclass(frozen=True)
class Case:
    """One fixed input: the arguments, the right answer, what it is, and the answers of known mistakes
    as (message naming the mistake, the answer it gives)."""

    args: tuple
    want: object
    what: str
    mistakes: Sequence[tuple[str, object]] = ()


def _fixed(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A fixed sample of a Laplace law with scale 0.05 (a head weight's shape)."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs()) * 0.05


def _fail(name: str, message: str, cause: BaseException | None = None) -> NoReturn:
    print(f"not yet ({name}): {message}")
    raise CheckFailed(message) from cause


def _passed(name: str, detail: str = "") -> bool:
    print(f"passed ({name}{': ' + detail if detail else ''})")
    return True


def _call(name: str, fn: Callable, *args) -> object:
    """The student's answer on copies of ``args``; NotImplementedError propagates, other errors fail the check."""
    args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as err:  # a student's bug is a reason to show, with its traceback
        _fail(name, f"your function raised {type(err).__name__}: {err}", err)


def _tensor(x: object) -> torch.Tensor:
    """An answer (tensor, number, or a tuple of them) as a float64 tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().double()
    if isinstance(x, (tuple, list)):
        return torch.stack([_tensor(v) for v in x])
    return torch.as_tensor(x, dtype=torch.float64)


def _mismatch(got: object, want: object, rtol: float, atol: float) -> str | None:
    """None if ``got`` matches ``want``, else what is wrong with it."""
    try:
        got_t = _tensor(got)
    except (TypeError, ValueError, RuntimeError):
        return f"expected a number or a tensor, got {type(got).__name__}"
    want_t = _tensor(want)
    if got_t.shape != want_t.shape:
        return f"expected shape {tuple(want_t.shape)}, got {tuple(got_t.shape)}"
    if not torch.allclose(got_t, want_t, rtol=rtol, atol=atol, equal_nan=True):
        worst = (got_t - want_t).abs().nan_to_num(math.inf).max().item()
        return f"off by up to {worst:.3g} (expected e.g. {want_t.flatten()[0].item():.5g})"
    return None


def _verdict(name: str, got: object, case: Case, hint: str, rtol: float, atol: float) -> None:
    """Fail the check, naming the mistake, unless ``got`` is the right answer for ``case``."""
    off = _mismatch(got, case.want, rtol, atol)
    if off is None:
        return
    for message, wrong in case.mistakes:
        if _mismatch(got, wrong, rtol, atol) is None:
            _fail(name, f"{case.what}: {message}")
    _fail(name, f"{case.what}: {off}. {hint if _hints['on'] else NO_HINT}")


def _require_gradient(name: str, what: str, got: object) -> None:
    """Fail unless ``got`` is a tensor that gradients can flow through (a loss that calibration minimises)."""
    if not (isinstance(got, torch.Tensor) and got.requires_grad):
        _fail(name, f"{what}: the loss has no gradient (.item() or float()?); calibration needs a tensor")


def _run(
    name: str,
    fn: Callable,
    cases: list[Case],
    hint: str,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    differentiable: bool = False,
) -> bool:
    """Judge ``fn`` on every case; a ``differentiable`` answer (a loss) must also carry a gradient."""
    for case in cases:
        got = _call(name, fn, *case.args)
        _verdict(name, got, case, hint, rtol, atol)
        if differentiable:
            _require_gradient(name, case.what, got)
    return _passed(name)
