"""Progress bars: tqdm (a widget in Jupyter, text in a terminal), switched off by ``TQDM_DISABLE=1``.

tqdm's own reading of that variable does not reach its notebook bars, and a rendered report would show
each bar frozen at 0%, so every long loop of the package goes through ``progress``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled when the environment says ``TQDM_DISABLE=1``."""
    return tqdm(iterable, disable=os.environ.get("TQDM_DISABLE", "") not in ("", "0"), **kwargs)
