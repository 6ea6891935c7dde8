"""The HTML report stands alone: formulas render from its own copy of MathJax with the network off, pages show
one parameters cell and no stray object reprs, and the index holds the learning path and the benchmark."""

import html
import json
import re
import shutil

import nbformat
import pytest
from browser import dom, needs_chromium
from test_bench import _result, _run

from regptq_lite.bench import CURVE_ITERS
from regptq_lite.learning_path import MINUTES_PER_EXERCISE, WORDS_PER_MINUTE, step
from regptq_lite.notebooks_io import fold_answers, merge_parameters, notebooks, title
from regptq_lite.offline_math import FOLDER, is_mathjax_copy
from regptq_lite.provenance import code_fingerprint
from regptq_lite.report_bench import bench_section, is_current
from regptq_lite.report_docs import render_docs

LOADED_FROM_NETWORK = re.compile(r'<(?:script|img)[^>]* src="(?:https?:)?//|<link[^>]* href="(?:https?:)?//')
STRAY_REPR = re.compile(r" at 0x[0-9a-f]+|&lt;Figure size \d|&lt;Axes: |&lt;matplotlib\.")


def _pages(report):
    return {p.stem: (report / f"{p.stem}.html").read_text() for p in notebooks()}


@needs_chromium
def test_formulas_render_offline_from_a_copy_of_the_report(fast_report, tmp_path):
    """The report folder moved elsewhere and opened with no network: MathJax typesets every page's formulas."""
    copy = tmp_path / "elsewhere"
    shutil.copytree(fast_report, copy)
    assert is_mathjax_copy(copy / FOLDER)
    for page in copy.glob("*.html"):
        assert not LOADED_FROM_NETWORK.findall(page.read_text()), page.name
    page = copy / "03_theory_error_argument.html"
    assert f'<script src="{FOLDER}/MathJax.js' in page.read_text()
    shown = dom(page)
    assert len(re.findall(r'class="MathJax"', shown)) >= 20, "formulas were not typeset"
    assert "MathJax_Display" in shown and "Math Processing Error" not in shown


def test_no_page_prints_an_object_repr(fast_report):
    found = {name: STRAY_REPR.findall(page) for name, page in _pages(fast_report).items()}
    assert not {name: hits for name, hits in found.items() if hits}, found


def test_each_page_shows_one_parameters_cell_with_the_values_it_ran_with(fast_report):
    for name, page in _pages(fast_report).items():
        assert page.count("celltag_parameters") == 1, name
        assert "celltag_injected-parameters" not in page and "# Parameters" not in page, name
    executed = nbformat.read(fast_report / f"{notebooks()[0].stem}.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)  # papermill's copy


def test_written_answers_are_folded_not_shown_as_markers(fast_report):
    for name, page in _pages(fast_report).items():
        assert not re.search(r"<h3[^>]*>(BEGIN|END) SOLUTION", page), name  # no markdown markers as headings
        assert "<summary>Reference answer</summary>" in page, name  # every notebook asks one question


def test_fold_answers_keeps_the_answer_inside_details():
    cell = nbformat.v4.new_markdown_cell("Before.\n\n### BEGIN SOLUTION\nThe *answer*.\n### END SOLUTION\nAfter.")
    folded = fold_answers(nbformat.v4.new_notebook(cells=[cell])).cells[0].source
    assert folded == "Before.\n\n<details><summary>Reference answer</summary>\n\nThe *answer*.\n\n</details>\nAfter."


def _papermilled(source: str, injected: str, parameters: dict) -> nbformat.NotebookNode:
    cells = [nbformat.v4.new_code_cell(source), nbformat.v4.new_code_cell(injected), nbformat.v4.new_code_cell("x")]
    cells[0].metadata["tags"], cells[1].metadata["tags"] = ["parameters"], ["injected-parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["papermill"] = {"parameters": parameters}
    return nb


def test_injected_values_are_merged_into_the_parameters_cell():
    source = "FAST = False  # True: quick\nSEED = 0\nINTERACTIVE = True  # widgets"
    nb = merge_parameters(_papermilled(source, "# Parameters\nFAST = True\nINTERACTIVE = False\nNEW = 'a'\n",
                                       {"FAST": True, "INTERACTIVE": False, "NEW": "a"}))  # fmt: skip
    assert [c.source for c in nb.cells] == [
        "FAST = True  # True: quick\nSEED = 0\nINTERACTIVE = False  # widgets\nNEW = 'a'",
        "x",
    ]
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("FAST = False")])
    assert merge_parameters(plain).cells[0].source == "FAST = False"  # never run by papermill: unchanged


def _notebook(tmp_path, minutes=None):
    cells = [
        nbformat.v4.new_markdown_cell("# 09 · A title\n\n" + "word " * 395),
        nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    " + "x " * 500 + "\n    ### END SOLUTION"),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["regptq"] = {"summary": "does a thing", **({"minutes": minutes} if minutes else {})}
    path = tmp_path / "09_thing.ipynb"
    nbformat.write(nb, path)
    return path


def test_learning_path_minutes_come_from_metadata_or_an_estimate(tmp_path):
    entry = step(_notebook(tmp_path), run_seconds=120)
    assert (entry.title, entry.summary) == ("09 · A title", "does a thing")
    words = 400 + 2  # the markdown's, and "def f():" (the solution is not read, it is written)
    assert entry.minutes == pytest.approx(words / WORDS_PER_MINUTE + MINUTES_PER_EXERCISE + 2)
    assert entry.basis == "estimated: 402 words to read, exercises: 1 x 6 min, run: 2.0 min"
    authored = step(_notebook(tmp_path, minutes=45), run_seconds=120)
    assert authored.minutes == 45 and "author" in authored.basis


def _bench_result():
    runs = [_run("methods", "brecq", 2, 4, s, ap) for s, ap in enumerate((30.0, 30.4, 29.8))]
    runs += [_run("methods", "regptq", 2, 4, s, ap) for s, ap in enumerate((33.0, 33.5, 32.8))]
    runs += [_run("budget", m, 2, 4, 0, ap + n / 100, iters=n) for n in CURVE_ITERS for m, ap in (("brecq", 28),)]
    return _result(runs)


def test_the_index_section_shows_the_headline_table_verdicts_and_budget_curve(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_bench_result()))
    section = bench_section(path)
    assert "33.1 (32.8-33.5)" in section and "30.1 (29.8-30.4)" in section  # mean (min-max) over seeds
    assert "lead" in section and "brecq" in section
    assert "Reg-PTQ against the best baseline: lead at W2A4." in section  # the headline, beside the paper's leads
    assert "spread: the larger of the two rows" in section and "of the 151 planned calibrations" in section
    assert section.count("data:image/png;base64,") == 1  # the budget curve
    assert "a new bench may give other numbers" in section  # the test's fingerprint is not this code's
    path.write_text(json.dumps({**_bench_result(), "code": code_fingerprint()}))
    assert "a new bench may give other numbers" not in bench_section(path)


def test_the_two_stage_section_sets_reg_ptq_beside_the_papers_faster_rcnn_and_borrows_the_budget(tmp_path):
    path = tmp_path / "bench_tiny_fasterrcnn.json"
    runs = [r for r in _bench_result()["runs"] if r["table"] == "methods"]
    path.write_text(json.dumps({**_result(runs), "model": "tiny_fasterrcnn"}))
    section = bench_section(path)
    assert "The paper, on COCO (Faster R-CNN-R50): ahead of QDrop by +1.3 at W2A4, +4.5 at W3A3" in section
    assert "their budget is the one the tiny_retinanet bench" in section and "data:image/png" not in section


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "No benchmark results"),
        ("{not json", "could not be read"),
        (json.dumps({"command": "bench", "budget": 400, "runs": [{"method": "naive", "AP": 1.0}]}), "older format"),
        (json.dumps({"command": "bench", "commit": "abc", "iters": 500, "seeds": [0], "runs": []}), "no runs yet"),
    ],
)
def test_missing_or_old_results_give_a_one_line_note(tmp_path, content, needle):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    section = bench_section(path)
    assert needle in section and section.count("<p") == 1 and "<table" not in section


def test_the_committed_results_never_break_the_index():
    section = bench_section()
    assert "<table" in section and "older format" not in section and "No benchmark" not in section
    assert is_current(_bench_result()) and not is_current({"runs": [{"AP": 1}]})


def test_the_fast_index_holds_the_learning_path_and_the_benchmark(fast_report):
    index = (fast_report / "index.html").read_text()
    assert "Learning path" in index and "Benchmark" in index
    for path in notebooks():
        row = re.search(rf'<tr><td>\d+</td><td class="text"><a href="{path.stem}\.html">.*?</tr>', index)
        assert row, path.stem
        assert re.search(r"<td>\d+</td><td class=\"text\">(estimated|set by)", row[0]), row[0]


def test_each_page_is_titled_by_its_notebook_and_links_to_the_index_and_its_neighbours(fast_report):
    found = notebooks()
    pages = _pages(fast_report)
    for i, path in enumerate(found):
        page = pages[path.stem]
        name = title(nbformat.read(path, as_version=4), "")
        assert name and f"<title>{html.escape(name, quote=False)}</title>" in page, path.stem
        assert page.count('<a href="index.html">Report index</a>') == 2  # above and below the notebook
        for j in (i - 1, i + 1):
            if 0 <= j < len(found):
                assert f'<a href="{found[j].stem}.html">' in page
        assert ("previous:" in page) == (i > 0)  # the first page has no previous link
        assert (">next:" in page) == (i + 1 < len(found))  # the last page has no next link


def test_the_readme_and_paper_are_pages_of_the_report_linked_from_the_index_and_every_notebook(fast_report):
    readme, paper = (fast_report / "readme.html").read_text(), (fast_report / "paper.html").read_text()
    assert 'id="Decisions-and-their-evidence"' in readme and "<table>" in readme  # linkable sections, tables
    assert "<title>regptq-workbook</title>" in readme and "<h1" in paper
    assert '<a href="readme.html">README.md</a>' in (fast_report / "index.html").read_text()
    pages = _pages(fast_report).values()
    for page in pages:
        assert '<a href="readme.html">README.md</a>' in page and '<a href="paper.html">PAPER.md</a>' in page
        assert 'href="../README.md' not in page and 'href="../PAPER.md' not in page  # the notebooks' links, redirected
    assert any('href="readme.html#Decisions-and-their-evidence"' in page for page in pages)


def test_a_missing_document_is_left_out(tmp_path):
    (tmp_path / "README.md").write_text("# A title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (tmp_path / "out").mkdir()
    [page] = render_docs(tmp_path / "out", repo=tmp_path)  # no PAPER.md here
    assert page.name == "readme.html" and "<title>A title</title>" in page.read_text()
