"""The learning path on the report's index: the notebooks in order, each with its title, one-line summary and
the minutes a student needs for it.

The minutes come from the notebook's ``metadata.regptq.minutes`` where its author set them; otherwise they are
estimated: the words a student reads (markdown and code, solutions left out) at ``WORDS_PER_MINUTE``, plus
``MINUTES_PER_EXERCISE`` per exercise, plus the time the notebook took to run while the report was built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .notebooks_io import SOLUTION, title

WORDS_PER_MINUTE = 200
MINUTES_PER_EXERCISE = 6


@dataclass(frozen=True)
class Step:
    """One notebook of the path."""

    name: str
    title: str
    summary: str
    minutes: float
    basis: str  # where the minutes come from, in words


def step(path: Path, run_seconds: float) -> Step:
    """The path's entry for the notebook at ``path``, which took ``run_seconds`` to run for the report."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("regptq", {})
    if "minutes" in meta:
        minutes, basis = float(meta["minutes"]), "set by the notebook's author"
    else:
        words = sum(len(SOLUTION.sub("", c.source).split()) for c in nb.cells if c.cell_type in ("markdown", "code"))
        exercises = sum(len(SOLUTION.findall(c.source)) for c in nb.cells if c.cell_type == "code")
        minutes = words / WORDS_PER_MINUTE + MINUTES_PER_EXERCISE * exercises + run_seconds / 60
        basis = (
            f"estimated: {words} words to read, exercises: {exercises} x {MINUTES_PER_EXERCISE} min, "
            f"run: {run_seconds / 60:.1f} min"
        )
    return Step(path.stem, title(nb, path.stem), meta.get("summary", ""), minutes, basis)
