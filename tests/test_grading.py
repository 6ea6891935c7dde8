"""Grading with nbgrader: the master notebooks carry the metadata derived from their structure, student copies
replace written answers too, and nbgrader generates an assignment from a master notebook and grades it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from nbgrader.api import Gradebook
from nbgrader.nbgraderformat import MetadataValidator

from regptq_lite.grading import annotate, grading_metadata
from regptq_lite.notebooks_io import (
    ANSWER_STUB,
    KERNEL,
    KERNEL_ARGS,
    notebooks,
    strip_solutions,
    student_copy,
    write_students,
)

SOLVED = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
ANSWER = "**Answer.**\n### BEGIN SOLUTION\nThe error doubles.\n### END SOLUTION"
ROUND_TRIP = "04_"  # a quick notebook in FAST mode (28 s under papermill; 02: 36 s)


def _workbook(*sources: tuple[str, str]) -> nbformat.NotebookNode:
    """A notebook of (cell type, source) pairs, kernel python3, as a master notebook is stored."""
    make = {"code": new_code_cell, "markdown": new_markdown_cell}
    nb = new_notebook(cells=[make[kind](source) for kind, source in sources])
    nb.metadata["kernelspec"] = dict(KERNEL)
    return nb


def _example() -> nbformat.NotebookNode:
    return _workbook(
        ("markdown", "# Title"),
        ("code", "FAST = False"),
        ("code", SOLVED),
        ("code", "checks.f(f);"),
        ("markdown", "**Predict.** What happens to the error?"),
        ("markdown", ANSWER),
        ("code", SOLVED.replace("f()", "g()")),
        ("code", "checks.g(g);"),
        ("markdown", "## What you now know"),
    )


def test_master_notebooks_carry_the_derived_grading_metadata():
    """Stored metadata == derived metadata. Re-derive after editing a notebook (``annotate_notebooks()``)."""
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        stored = [cell.metadata.get("nbgrader") for cell in nb.cells]
        assert stored == grading_metadata(nb, path.stem), f"{path.name}: run regptq_lite.grading.annotate_notebooks()"


def test_each_cell_gets_its_nbgrader_role():
    nb = _example()
    metas = grading_metadata(nb, "07_example")
    roles = [(m["grade_id"].split("-", 2)[1], m["solution"], m["grade"], m["locked"], m.get("points")) for m in metas]
    assert roles == [
        ("readonly", False, False, True, None),
        ("readonly", False, False, True, None),
        ("exercise1", True, False, False, None),  # autograded answer
        ("exercise1", False, True, True, 1),  # autograder tests
        ("readonly", False, False, True, None),
        ("question1", True, True, False, 1),  # manually graded answer
        ("exercise2", True, False, False, None),
        ("exercise2", False, True, True, 1),
        ("readonly", False, False, True, None),
    ]
    ids = [m["grade_id"] for m in metas]
    assert len(set(ids)) == len(ids) and all(i.startswith("07-") for i in ids)
    assert ids[2:4] == ["07-exercise1-answer", "07-exercise1-tests"] and ids[5] == "07-question1-answer"
    MetadataValidator().validate_nb(annotate(nb, "07_example"))  # what nbgrader checks before it generates


def test_grade_ids_are_stable():
    nb = _example()
    before = grading_metadata(nb, "07_example")
    assert grading_metadata(nb, "07_example") == before
    nb.cells.insert(1, new_markdown_cell("More prose."))
    after = grading_metadata(nb, "07_example")
    assert [m for i, m in enumerate(after) if i != 1] == before


@pytest.mark.parametrize("after", [None, ("markdown", "Text."), ("code", SOLVED)])
def test_an_exercise_must_be_followed_by_its_check(after):
    nb = _workbook(("code", "FAST = False"), ("code", SOLVED), *([after] if after else []))
    with pytest.raises(ValueError, match="07_example: exercise 1 .* is not followed by a check cell"):
        grading_metadata(nb, "07_example")


def test_student_copies_replace_written_answers(tmp_path):
    assert strip_solutions(ANSWER, "markdown") == f"**Answer.**\n{ANSWER_STUB}"
    assert strip_solutions("  ### BEGIN SOLUTION\n  x\n  ### END SOLUTION", "markdown") == f"  {ANSWER_STUB}"
    master = tmp_path / "07_example.ipynb"
    nbformat.write(_example(), master)
    student = nbformat.read(student_copy(master, tmp_path / "student.ipynb"), as_version=4)
    sources = [cell.source for cell in student.cells]
    assert sources[4:6] == ["**Predict.** What happens to the error?", f"**Answer.**\n{ANSWER_STUB}"]
    assert sources[2] == "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert "The error doubles." not in "\n".join(sources)


def test_student_copies_without_hints_turn_the_checks_hints_off_in_their_imports_cell(tmp_path):
    from regptq_lite.notebooks_io import HINTS_OFF, NotebookError

    for master in notebooks():
        copy = nbformat.read(student_copy(master, tmp_path / master.name, hints=False), as_version=4)
        imports = [cell.source for cell in copy.cells if HINTS_OFF in cell.source]
        assert len(imports) == 1 and imports[0].endswith(HINTS_OFF) and "from regptq_lite import" in imports[0]
        with_hints = nbformat.read(student_copy(master, tmp_path / "with.ipynb"), as_version=4)
        assert not any(HINTS_OFF in cell.source for cell in with_hints.cells)
    no_checks = tmp_path / "07_example.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("from regptq_lite import viz")]), no_checks
    )
    renamed = tmp_path / "08_example.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("from regptq_lite import checks as c")]), renamed
    )
    no_imports = tmp_path / "09_example.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Notes")]), no_imports)
    for master in (no_checks, renamed, no_imports):
        with pytest.raises(NotebookError, match=f"{master.name}: no cell imports checks from regptq_lite"):
            student_copy(master, tmp_path / "out.ipynb", hints=False)
    assert not (tmp_path / "out.ipynb").exists()
    with pytest.raises(NotebookError, match="07_example.ipynb"):  # 01-06 (copies above) are made, none written
        write_students(tmp_path / "copies", folder=tmp_path, hints=False)
    assert not (tmp_path / "copies").exists()


def _nbgrader(course, *args: str) -> None:
    """Run ``nbgrader ARGS`` in the course folder."""
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, f"nbgrader {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_nbgrader_grades_the_solutions_full_and_the_stubs_zero(tmp_path, monkeypatch):
    """A course folder with one master notebook (FAST, no widgets, plus one written question): nbgrader's
    release copy is the project's student copy; autograded, the master gets every check's points and the
    release copy none, and the written answer waits for a grader."""
    # nbgrader's gradebook runs the environment's `alembic` command; its kernels: no progress bars, figures inline
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    master = next(p for p in notebooks() if p.name.startswith(ROUND_TRIP))
    name, course = master.stem, tmp_path / "course"
    nb = nbformat.read(master, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = "FAST = True\nSEED = 0\nINTERACTIVE = False"  # nbgrader does not inject parameters
    nb.cells += [new_markdown_cell("**Predict.** How many levels has a 3-bit grid?"), new_markdown_cell(ANSWER)]
    source = course / "source" / "ps" / f"{name}.ipynb"
    source.parent.mkdir(parents=True)
    nbformat.write(annotate(nb, name), source)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"  # whatever a user-wide nbgrader_config.py says
        "c.CourseDirectory.course_id = 'regptq'\n"
        "c.Execute.timeout = 600\n"
        f"c.Execute.extra_arguments = {KERNEL_ARGS!r}\n"
    )

    _nbgrader(course, "generate_assignment", "ps")
    release = course / "release" / "ps" / f"{name}.ipynb"
    student = student_copy(source, tmp_path / "student.ipynb")
    released = [c.source for c in nbformat.read(release, as_version=4).cells]
    assert released == [c.source for c in nbformat.read(student, as_version=4).cells]

    for student_id, submission in (("solved", source), ("stubs", release)):
        (course / "submitted" / student_id / "ps").mkdir(parents=True)
        shutil.copy(submission, course / "submitted" / student_id / "ps" / f"{name}.ipynb")
    _nbgrader(course, "autograde", "ps")

    metas = grading_metadata(nb, name)
    tests = {m["grade_id"] for m in metas if m["grade"] and not m["solution"]}
    written = {m["grade_id"] for m in metas if m["grade"] and m["solution"]}
    assert len(tests) >= 2 and len(written) >= 1
    scores = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student_id in ("solved", "stubs"):
            graded = gradebook.find_submission_notebook(name, "ps", student_id).grades
            scores[student_id] = {g.name: (g.auto_score, g.max_score, g.needs_manual_grade) for g in graded}
    assert set(scores["solved"]) == set(scores["stubs"]) == tests | written
    for grade_id in tests:
        assert scores["solved"][grade_id] == (1, 1, False), grade_id
        assert scores["stubs"][grade_id] == (0, 1, False), grade_id
    for grade_id in written:
        assert scores["solved"][grade_id] == (None, 1, True), grade_id  # an answer: a grader reads it
        assert scores["stubs"][grade_id] == (0, 1, False), grade_id  # unchanged stub: no response

    graded_nb = nbformat.read(course / "autograded" / "solved" / "ps" / f"{name}.ipynb", as_version=4)
    for cell in graded_nb.cells:
        if cell.metadata["nbgrader"].get("grade_id") in tests:
            assert "passed" in "".join(o.get("text", "") for o in cell.outputs), cell.source
