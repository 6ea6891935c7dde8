"""Write a file so that an interrupted run never leaves it half-written."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path


def _free_temp_name(path: Path) -> Path:
    """A name beside ``path`` that no file has yet, e.g. ``out.pt.3f9a1c2e.tmp``."""
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        if not tmp.exists() and not tmp.is_symlink():
            return tmp


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a new temp file beside ``path``, then rename it over ``path``.

    If ``write`` fails, the temp file is removed and ``path`` is left as it was. The temp name is one that
    no file has, so a user's own ``<path>.tmp`` is never touched. A ``path`` that is a symbolic link keeps
    its link: the file it points to is replaced.
    """
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    tmp = _free_temp_name(target)
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return path
