"""nbgrader metadata of the master notebooks, derived from their structure so that it cannot drift.

- An exercise is a code cell holding a ``### BEGIN SOLUTION`` .. ``### END SOLUTION`` block (nbgrader's
  *autograded answer*) and the code cell right after it, which calls a check (*autograder tests*: locked,
  ``CHECK_POINTS`` points, full marks when it runs without an error).
- A markdown cell holding such a block is the reference answer to a "predict, then run" question (a
  *manually graded answer*, ``ANSWER_POINTS`` points: nbgrader accepts a markdown solution cell only as a
  graded one).
- Every other cell is *read-only* (locked): nbgrader restores its source before it grades.

Grade ids are ``NN-exerciseK-answer`` / ``NN-exerciseK-tests`` and ``NN-questionK-answer`` (NN the
notebook's number, K the exercise's or question's place in the notebook) and ``NN-readonly-<cell id>``
for the rest, so that adding prose or figures changes no other cell's id.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_atomic
from .notebooks_io import NOTEBOOKS_DIR, SOLUTION, notebooks

if TYPE_CHECKING:
    from nbformat import NotebookNode

SCHEMA_VERSION = 3  # nbgrader's cell metadata schema
CHECK_POINTS = 1
ANSWER_POINTS = 1


def _metadata(grade_id: str, solution: bool = False, grade: bool = False, locked: bool = False) -> dict:
    """One cell's ``metadata.nbgrader``, keys as nbgrader's assignment editor writes them."""
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": SCHEMA_VERSION,
        "solution": solution,
        "task": False,
    }
    if grade:
        meta["points"] = ANSWER_POINTS if solution else CHECK_POINTS
    return meta


def grading_metadata(nb: NotebookNode, name: str) -> list[dict]:
    """The nbgrader metadata of every cell of the master notebook ``nb`` (file stem ``name``), in order.

    Raises ``ValueError`` when an exercise's solution cell is not followed by a code cell without a solution.
    """
    number = name.split("_", 1)[0]
    cells = nb.cells
    metas: list[dict] = []
    exercises = questions = 0
    for i, cell in enumerate(cells):
        solved = SOLUTION.search(cell.source) is not None
        if solved and cell.cell_type == "markdown":
            questions += 1
            metas.append(_metadata(f"{number}-question{questions}-answer", solution=True, grade=True))
        elif solved:
            exercises += 1
            after = cells[i + 1] if i + 1 < len(cells) else None
            if after is None or after.cell_type != "code" or SOLUTION.search(after.source):
                raise ValueError(f"{name}: exercise {exercises} (cell {cell.id}) is not followed by a check cell")
            metas.append(_metadata(f"{number}-exercise{exercises}-answer", solution=True))
        elif metas and metas[-1]["solution"] and not metas[-1]["grade"]:
            metas.append(_metadata(f"{number}-exercise{exercises}-tests", grade=True, locked=True))
        else:
            metas.append(_metadata(f"{number}-readonly-{cell.id}", locked=True))
    return metas


def annotate(nb: NotebookNode, name: str) -> NotebookNode:
    """Set every cell's ``metadata.nbgrader`` to ``grading_metadata(nb, name)``; returns ``nb``."""
    for cell, meta in zip(nb.cells, grading_metadata(nb, name), strict=True):
        cell.metadata["nbgrader"] = meta
    return nb


def annotate_file(path: Path) -> Path:
    """Rewrite the notebook at ``path`` in place with its nbgrader metadata."""
    import nbformat

    nb = annotate(nbformat.read(path, as_version=4), path.stem)
    return write_atomic(path, lambda tmp: nbformat.write(nb, str(tmp)))


def annotate_notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Rewrite every master notebook in ``folder`` in place with its nbgrader metadata."""
    return [annotate_file(path) for path in notebooks(folder)]
