"""The notebooks: stored clean, run in FAST mode (via ``report --fast``, once per session), rendered with their
figures, shown by a real browser, handed out as student copies, and graded by checks that can fail."""

import json
import math
import re

import nbformat
import numpy as np
import pytest
import torch
from browser import needs_chromium, screenshot
from nbclient import NotebookClient

from regptq_lite import checks, recon
from regptq_lite.cli import main
from regptq_lite.notebooks_io import (
    ANSWER_STUB,
    KERNEL,
    KERNEL_ARGS,
    NOTEBOOKS_DIR,
    SOLUTION,
    NotebookError,
    notebooks,
    strip_solutions,
)
from regptq_lite.report import render_notebooks

CHECK_CALL = re.compile(r"^checks\.(\w+)\((\w+)\);?$")


def exercises(path):
    """(solution cell, check cell) pairs of a master notebook (written answers are markdown cells)."""
    cells = nbformat.read(path, as_version=4).cells
    return [(c, cells[i + 1]) for i, c in enumerate(cells) if c.cell_type == "code" and SOLUTION.search(c.source)]


def test_notebooks_are_stored_clean():
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.kernelspec.name == "python3", path.name
        assert "widgets" not in nb.metadata, path.name
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), path.name
        first = code[0]
        assert "parameters" in first.metadata.get("tags", []), path.name
        assert all(f"{p} =" in first.source for p in ("FAST", "SEED", "INTERACTIVE")), path.name
        assert nb.metadata["regptq"]["summary"], path.name
        assert all("id" in c for c in json.loads(path.read_text())["cells"]), f"{path.name}: a cell has no id"


def test_every_notebook_runs_fast_without_error_output(fast_report):
    for path in notebooks():
        nb = nbformat.read(fast_report / path.name, as_version=4)
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert out.output_type != "error", f"{path.name}: {out.get('ename')}: {out.get('evalue')}"
                if out.output_type == "stream" and out.name == "stderr":
                    assert "Error" not in out.text and "Traceback" not in out.text, f"{path.name}: {out.text[:300]}"
                shown = out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
                assert "%|" not in shown, f"{path.name}: a progress bar was saved in the page"


def test_rendered_pages_carry_their_figures_and_the_index_links_them(fast_report):
    index = (fast_report / "index.html").read_text()
    for path in notebooks():
        page = (fast_report / f"{path.stem}.html").read_text()
        assert page.count("data:image/png;base64,") >= 2, path.name
        assert f'href="{path.stem}.html"' in index
    assert not list(fast_report.glob("*.tmp"))


@needs_chromium
def test_a_real_browser_shows_every_page_with_its_images(fast_report, tmp_path):
    """Chromium renders each page; the same page with its images blanked out must look clearly different
    (at least 2% of the pixels of a 1200 x 4000 screenshot; measured 5-12% on the notebook pages)."""
    pages = [fast_report / "index.html"] + [fast_report / f"{p.stem}.html" for p in notebooks()]
    for page in pages:
        rgb = screenshot(page, tmp_path / f"{page.stem}.png")
        assert rgb.std() > 0.05, f"{page.name}: the screenshot is blank"
        blanked = tmp_path / f"{page.stem}_no_images.html"
        blanked.write_text(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=\s]+", "", page.read_text()))
        without = screenshot(blanked, tmp_path / f"{page.stem}_no_images.png")
        changed = (np.abs(rgb - without).max(-1) > 0.1).mean()
        assert changed > 0.02, f"{page.name}: its images did not show"


def test_student_copies_have_no_solutions(tmp_path):
    assert main(["student", "--out", str(tmp_path)]) == 0
    for path in notebooks():
        master = nbformat.read(path, as_version=4)
        student = nbformat.read(tmp_path / path.name, as_version=4)
        solutions = [m[0] for c in master.cells for m in SOLUTION.finditer(c.source)]
        written = sum(len(SOLUTION.findall(c.source)) for c in master.cells if c.cell_type == "markdown")
        text = "\n".join(c.source for c in student.cells)
        assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text
        assert text.count("# YOUR CODE HERE") == text.count("raise NotImplementedError()") == len(solutions) - written
        assert text.count(ANSWER_STUB) == written
        elsewhere = {line.strip() for c in master.cells for line in SOLUTION.sub("", c.source).splitlines()}
        for block in solutions:
            for line in block.splitlines()[1:-1]:
                if line.strip() and line.strip() not in elsewhere:
                    assert line.strip() not in {s.strip() for s in text.splitlines()}, f"{path.name}: {line}"
        assert all(c.outputs == [] for c in student.cells if c.cell_type == "code")
        assert student.metadata.kernelspec.name == "python3"


def test_student_copies_fail_only_with_not_implemented_error(tmp_path):
    """Run each student copy's set-up cells and every exercise with its check: each exercise raises
    NotImplementedError and nothing else fails (the other cells are the master's, run in FAST mode above)."""
    main(["student", "--out", str(tmp_path)])
    for path in notebooks():
        student = nbformat.read(tmp_path / path.name, as_version=4)
        code = [c for c in student.cells if c.cell_type == "code"]
        params = code[0].copy()
        params.source = "FAST = True\nSEED = 0\nINTERACTIVE = False"
        keep = [params, code[1]]
        for i, cell in enumerate(student.cells):
            if "# YOUR CODE HERE" in cell.source:
                keep += [cell, student.cells[i + 1]]
        student.cells = keep
        NotebookClient(
            student, kernel_name="python3", allow_errors=True, timeout=300, extra_arguments=KERNEL_ARGS
        ).execute()
        errors = [o for c in student.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert errors, path.name
        assert {e.ename for e in errors} == {"NotImplementedError"}, path.name
        assert len(errors) == (len(keep) - 2) // 2, path.name


def _namespace(source: str) -> dict:
    ns = {"torch": torch, "math": math, "np": np, "recon": recon}
    exec(source, ns)  # the master's own solution cell, or its student version
    return ns


def test_each_check_passes_on_the_solution_and_fails_on_a_stub(capsys):
    seen = set()
    for path in notebooks():
        for solution, check_cell in exercises(path):
            name, fn_name = CHECK_CALL.match(check_cell.source.strip()).groups()
            check = checks.ALL[name]
            assert check(_namespace(solution.source)[fn_name]) is True, f"{path.name}: {name}"
            assert "passed" in capsys.readouterr().out

            with pytest.raises(checks.CheckFailed):
                check(lambda *args: torch.zeros(1))  # a wrong answer
            assert "not yet" in capsys.readouterr().out

            student = _namespace(strip_solutions(solution.source))
            with pytest.raises(NotImplementedError):
                check(student[fn_name])  # the student copy before the exercise is done
            seen.add(name)
    assert len(seen) >= 11 and seen == set(checks.ALL)


def test_notebooks_folder_is_where_the_package_looks():
    assert NOTEBOOKS_DIR.is_dir() and len(notebooks()) == 6


def test_a_failing_notebook_is_named_with_its_cell(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("FAST = False"), nbformat.v4.new_code_cell("1 / 0")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = dict(KERNEL)
    nbformat.write(nb, folder / "01_broken.ipynb")
    (tmp_path / "out").mkdir()
    with pytest.raises(NotebookError, match=r"01_broken.ipynb failed in cell \d+: ZeroDivisionError"):
        render_notebooks(tmp_path / "out", fast=True, folder=folder)
    assert not list((tmp_path / "out").glob("*.tmp"))
