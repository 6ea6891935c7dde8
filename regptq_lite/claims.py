"""Claims as code: a notebook checks each statement about its own results where it makes it.

``claim(text, holds, numbers=...)`` prints the statement with the numbers it rests on and a mark,
``claim ✓ the box branch alone costs more AP75 than the class branch alone (box 6.1, class 2.3)``, or
``claim ✗ ...`` when it no longer holds. A failed claim raises ``ClaimFailed`` when the environment sets
``REGPTQ_STRICT_CLAIMS=1`` (every kernel ``notebooks_io.execute`` starts: the tests and the report);
otherwise it only prints, so that a student who changes a setting sees the mark flip without a crash.
A claim about full settings (``full_only=True``) is not enforced on a FAST run: it prints its numbers and
"(checked at full settings only)", marked ✓ if it happens to hold and · if not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

STRICT_ENV = "REGPTQ_STRICT_CLAIMS"


class ClaimFailed(AssertionError):
    """A notebook's statement about its own numbers does not hold."""


def _number(value: object) -> str:
    """A number as a reader wants it: four significant digits; text and integers as they are."""
    if isinstance(value, (str, bool, int)):
        return str(value)
    try:
        return f"{float(value):.4g}"  # floats, numpy and 0-d torch values
    except (TypeError, ValueError):
        return str(value)


def claim(
    text: str,
    holds: object,
    *,
    numbers: Mapping[str, object] | None = None,
    full_only: bool = False,
    fast: bool = False,
) -> bool:
    """Print ``text`` with ``numbers`` and whether it ``holds``; return that. A failure raises ``ClaimFailed``
    under ``REGPTQ_STRICT_CLAIMS=1``, unless the claim is ``full_only`` and the run ``fast``."""
    holds = bool(holds)
    shown = ", ".join(f"{name} {_number(value)}" for name, value in (numbers or {}).items())
    statement = f"{text} ({shown})" if shown else text
    if full_only and fast:
        print(f"claim {'✓' if holds else '·'} {statement} (checked at full settings only)")
        return holds
    print(f"claim {'✓' if holds else '✗'} {statement}")
    if not holds and os.environ.get(STRICT_ENV) == "1":
        raise ClaimFailed(f"this claim no longer holds: {statement}")
    return holds


def claim_greater(
    text: str, a: float, b: float, *, names: tuple[str, str] = ("a", "b"), margin: float = 0.0, **kw: bool
) -> bool:
    """``claim`` that ``a > b + margin``, showing both numbers under ``names`` (and the margin if any)."""
    numbers: dict[str, object] = {names[0]: a, names[1]: b}
    if margin:
        numbers["margin"] = margin
    return claim(text, a > b + margin, numbers=numbers, **kw)


def claim_within(text: str, value: float, low: float, high: float, *, name: str = "value", **kw: bool) -> bool:
    """``claim`` that ``low <= value <= high``, showing the value under ``name`` and the range."""
    numbers = {name: value, "expected": f"{_number(low)} to {_number(high)}"}
    return claim(text, low <= value <= high, numbers=numbers, **kw)
