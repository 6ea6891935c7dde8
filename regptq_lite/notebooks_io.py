"""Run, render and hand out the notebooks: papermill execution with the ``FAST``/``SEED``/``INTERACTIVE``
parameters, nbconvert HTML with figures as embedded PNG, and student copies without solutions.

nbformat, nbconvert and papermill are imported where they are used: together they take seconds to
import, and the command line imports this module for ``NotebookError`` on every command.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_atomic
from .claims import STRICT_ENV

if TYPE_CHECKING:
    from nbformat import NotebookNode

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
STUDENT_DIR = Path("student")  # student copies, where the command runs
SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?^[ \t]*### END SOLUTION[ \t]*$", re.S | re.M)
STUB = "# YOUR CODE HERE"
ANSWER_STUB = "YOUR ANSWER HERE"  # a written answer's stub, as nbgrader's
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
# Every kernel we start: figures inline whatever MPLBACKEND says (the kernel inherits the environment, and a
# non-inline backend such as Agg draws nothing into the page), and no kernel log on the terminal (its
# "running over TCP without encryption" warning, or an interrupt caught while it shuts down).
KERNEL_ARGS = ["--matplotlib=inline", "--IPKernelApp.log_level=CRITICAL"]
PLOTTING = re.compile(r"\b(?:viz|plt)\.\w+\(|\.plot\(")
PARAMETER_TAGS = ("parameters", "injected-parameters")  # papermill's: the cell written, the cell it injects
OFFLINE_TEMPLATE = {  # no require.js from a CDN; resources["nav"] (links between pages) above and below
    "offline": "{%- extends 'index.html.j2' -%}{% block html_head_js_requirejs %}{% endblock %}"
    "{% block body_header %}{{ super() }}{{ resources.get('nav', '') }}{% endblock body_header %}"
    "{% block body_footer %}{{ resources.get('nav', '') }}{{ super() }}{% endblock body_footer %}"
}
ASSIGNMENT = re.compile(r"^([ \t]*)(\w+)[ \t]*=[^#\n]*?([ \t]*#.*)?$", re.M)  # NAME = value  # comment


class NotebookError(RuntimeError):
    """A notebook failed while it was executed."""


def notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The master notebooks, in order (``NN_name.ipynb``)."""
    found = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebooks (NN_name.ipynb) in {folder}")
    return found


def execute(path: Path, out: Path, fast: bool, seed: int = 0, interactive: bool = False) -> Path:
    """Run ``path`` on a fresh ``python3`` kernel with the parameters; write the executed copy to ``out``.

    Without ``interactive`` the kernel runs with progress bars off (``TQDM_DISABLE``): a saved page
    would show each bar frozen at 0%. Every kernel runs with ``REGPTQ_STRICT_CLAIMS=1`` (``claims.py``).
    """
    import papermill

    parameters = {"FAST": fast, "SEED": seed, "INTERACTIVE": interactive}

    def run(tmp: Path) -> None:
        before = os.environ.get("TQDM_DISABLE")
        os.environ[STRICT_ENV] = "1"  # inherited by the kernel: a claim that no longer holds stops the notebook
        if not interactive:
            os.environ["TQDM_DISABLE"] = "1"  # inherited by the kernel process
        try:
            warnings.filterwarnings("ignore", message="The specified file .* does not end in", category=UserWarning)
            papermill.execute_notebook(
                str(path),
                str(tmp),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(path.parent),
                progress_bar=False,
                extra_arguments=KERNEL_ARGS,
            )
        except papermill.PapermillExecutionError as err:
            raise NotebookError(
                f"notebook {path.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}"
            ) from None
        finally:
            if before is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = before

    return write_atomic(out, run)


def plots(path: Path) -> bool:
    """Whether a notebook's page should hold figures: one of its code cells calls ``viz.*``, ``plt.*`` or
    a ``.plot(`` method."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    return any(c.cell_type == "code" and PLOTTING.search(c.source) for c in cells)


def merge_parameters(nb: NotebookNode) -> NotebookNode:
    """One parameters cell that shows the values the notebook ran with: papermill's ``injected-parameters``
    cell is dropped and each of its values written into the ``parameters`` cell's line for that name (its
    comment kept; a name the cell lacks gets a line of its own). A notebook without both cells is unchanged."""
    tagged = {tag: [c for c in nb.cells if tag in c.metadata.get("tags", [])] for tag in PARAMETER_TAGS}
    if not all(tagged.values()):
        return nb
    values = dict(nb.metadata.get("papermill", {}).get("parameters", {}))
    cell = tagged["parameters"][0]

    def assign(m: re.Match) -> str:
        return f"{m[1]}{m[2]} = {values.pop(m[2])!r}{m[3] or ''}" if m[2] in values else m[0]

    source = ASSIGNMENT.sub(assign, cell.source)
    cell.source = "\n".join([source, *(f"{name} = {value!r}" for name, value in values.items())])
    nb.cells = [c for c in nb.cells if c not in tagged["injected-parameters"]]
    return nb


def title(nb: NotebookNode, default: str) -> str:
    """The notebook's title: its first level-1 markdown heading, else ``default``."""
    lines = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()]
    return next((line[2:].strip() for line in lines if line.startswith("# ")), default)


def render(
    executed: Path,
    out: Path,
    figures: bool = False,
    mathjax_url: str | None = None,
    nav: str = "",
    links: dict[str, str] | None = None,
) -> Path:
    """HTML of an executed notebook (no re-execution) with one parameters cell (``merge_parameters``), titled by
    its first heading; figures stay embedded PNG images. With ``mathjax_url`` (a copy of MathJax beside the page)
    the page loads nothing from the network: MathJax from there, and not the require.js that nbconvert's page
    takes from a CDN (only embedded widget state needs it, and our notebooks store none); ``nav`` (HTML) then
    goes above and below the notebook. ``links`` maps a link target in the notebooks (``../README.md``) to the page
    beside this one that stands for it (``readme.html``), keeping any ``#section``.

    With ``figures``, a page without a single image is a ``NotebookError`` and is not written.
    """
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    offline = {"mathjax_url": mathjax_url, "extra_loaders": [DictLoader(OFFLINE_TEMPLATE)], "template_file": "offline"}
    exporter = HTMLExporter() if mathjax_url is None else HTMLExporter(**offline)
    nb = fold_answers(merge_parameters(nbformat.read(executed, as_version=4)))
    nb.metadata["title"] = title(nb, executed.stem)
    body, _ = exporter.from_notebook_node(nb, resources={"nav": nav})
    for target, page in (links or {}).items():
        body = body.replace(f'href="{target}', f'href="{page}')
    if figures and "<img" not in body:
        raise NotebookError(f"notebook {executed.name} plots, but its page holds no figure")
    return write_atomic(out, lambda tmp: tmp.write_text(body, encoding="utf-8"))


def fold_answers(nb: NotebookNode) -> NotebookNode:
    """Each written answer of a "predict, then run" question (a markdown solution block) folded into a
    ``<details>`` element that the reader opens, instead of bare ``### BEGIN SOLUTION`` headings."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = SOLUTION.sub(_folded, cell.source)
    return nb


def _folded(block: re.Match) -> str:
    """A solution block's lines between its markers, inside ``<details>``."""
    inner = "\n".join(block[0].splitlines()[1:-1])
    return f"<details><summary>Reference answer</summary>\n\n{inner}\n\n</details>"


def strip_solutions(source: str, cell_type: str = "code") -> str:
    """Each ``### BEGIN SOLUTION`` .. ``### END SOLUTION`` block -> ``# YOUR CODE HERE`` + raise in a code cell,
    ``YOUR ANSWER HERE`` in a markdown cell; same indent."""
    if cell_type == "code":
        return SOLUTION.sub(lambda m: f"{m[1]}{STUB}\n{m[1]}raise NotImplementedError()", source)
    return SOLUTION.sub(lambda m: f"{m[1]}{ANSWER_STUB}", source)


def clean(nb: NotebookNode) -> NotebookNode:
    """No outputs, execution counts or widget state; kernel ``python3``."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = dict(KERNEL)
    return nb


HINTS_OFF = "checks.set_hints(False)  # set by your instructor: a failed check names the mistake, not the formula"


def _student_notebook(path: Path, hints: bool = True) -> NotebookNode:
    """The student version of ``path``: solutions and written answers replaced, outputs cleared; without
    ``hints``, the imports cell (the one that imports ``checks``) ends with ``HINTS_OFF``."""
    import nbformat

    nb = clean(nbformat.read(path, as_version=4))
    for cell in nb.cells:
        cell.source = strip_solutions(cell.source, cell.cell_type)
    if not hints:
        is_imports = (c for c in nb.cells if c.cell_type == "code" and "from regptq_lite import" in c.source)
        imports = next(is_imports, None)
        if imports is None or not re.search(r"from regptq_lite import .*\bchecks\b(?!\s+as\b)", imports.source):
            raise NotebookError(f"{path.name}: no cell imports checks from regptq_lite (under that name)")
        imports.source = imports.source.rstrip() + "\n" + HINTS_OFF
    return nb


def _write_notebook(nb: NotebookNode, out: Path) -> Path:
    import nbformat

    return write_atomic(out, lambda tmp: nbformat.write(nb, str(tmp)))


def student_copy(path: Path, out: Path, hints: bool = True) -> Path:
    """Write the student version of ``path`` (``_student_notebook``) to ``out``."""
    return _write_notebook(_student_notebook(path, hints), out)


def holds_work(copy: Path, folder: Path = NOTEBOOKS_DIR) -> bool:
    """Whether a student copy's cells differ from a fresh copy of the master of its name in ``folder`` (with
    or without hints): a student has worked in it, or it was made from an older master. False where no master
    has its name (``student`` does not write it)."""
    import nbformat

    master = folder / copy.name
    if not master.is_file():
        return False
    try:
        sources = [cell.source for cell in nbformat.read(copy, as_version=4).cells]
    except (OSError, ValueError, nbformat.ValidationError):  # not a notebook nbformat can read: keep it too
        return True
    fresh = ([cell.source for cell in _student_notebook(master, hints).cells] for hints in (True, False))
    return all(sources != cells for cells in fresh)


def write_students(out_dir: Path, folder: Path = NOTEBOOKS_DIR, hints: bool = True) -> list[Path]:
    """Student copies of every master notebook in ``out_dir``, all made before any is written."""
    copies = [(_student_notebook(p, hints), out_dir / p.name) for p in notebooks(folder)]
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_write_notebook(nb, out) for nb, out in copies]
