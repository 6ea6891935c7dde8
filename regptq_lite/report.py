"""The HTML report: every notebook executed and rendered to ``reports/NN_name.html``, MathJax copied beside
them (``reports/mathjax/``) so that formulas render offline, and ``reports/index.html`` with the learning path,
the benchmark's headline results and the FP detector's card, metrics and detections."""

from __future__ import annotations

import html
import json
import sys
import time
from pathlib import Path

from .atomic import write_atomic
from .bench import RESULTS_DIR, result_name
from .coco_eval import evaluate, predict
from .detectors import CHECKPOINTS, card_path, load_checkpoint
from .learning_path import MINUTES_PER_EXERCISE, WORDS_PER_MINUTE, Step, step
from .notebooks_io import NOTEBOOKS_DIR, execute, notebooks, plots, render, title
from .offline_math import install_mathjax
from .report_bench import bench_section
from .report_docs import DOCS, doc_link, render_docs
from .scenes import SceneSet
from .viz import plot_detections, png_base64

REPORTS_DIR = Path(__file__).resolve().parent.parent / "reports"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>regptq-workbook report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .7rem; text-align: right; }}
.text {{ text-align: left; }} .note {{ color: #555; }}
img {{ max-width: 100%; }} code {{ background: #f3f3f3; padding: 0 .2rem; }}
</style></head><body>
<h1>regptq-workbook</h1>
<p>Post-training quantization of a fully quantized detector, after Reg-PTQ (CVPR 2024).</p>
<h2>Learning path</h2>
<p>The notebooks in order, executed top to bottom for this report with {mode}. Minutes for a student: set by a
notebook's author, or estimated as its words (text and code) at {wpm} a minute, plus {per_exercise} minutes per
exercise, plus the time it took to run in this build{run_note}. In the pages, a line "claim ✓" is a statement
checked against the numbers printed beside it, whether or not it agrees with the paper; one that failed would
have stopped this build.</p>
<table><tr><th>#</th><th class="text">notebook</th><th class="text">what you do</th><th>minutes</th>
<th class="text">how the minutes were found</th></tr>
{path_rows}
<tr><th colspan="3">in all</th><th>{total_minutes:.0f}</th><th></th></tr></table>
{docs}
<h2>Benchmark: the tiny RetinaNet</h2>
{bench}
<h2>Benchmark: the tiny Faster R-CNN</h2>
{bench_two_stage}
<h2>The full-precision detector</h2>
<p>{model}: {parameters:,} parameters, trained from scratch by <code>{command}</code>
(seed {seed}, {iters} iterations of {batch_size} scenes, {train_minutes:.1f} min on {threads} CPU threads).</p>
<table><tr>{metric_heads}</tr><tr>{metric_cells}</tr></table>
<p>COCO box metrics (0-100) on the {images} validation scenes, recomputed while this report was built{apl_note}.</p>
<img alt="detections of the FP detector on validation scenes" src="data:image/png;base64,{figure}">
</body></html>
"""


def render_notebooks(
    out_dir: Path, fast: bool, seed: int = 0, folder: Path = NOTEBOOKS_DIR, docs: list[Path] = ()
) -> list[tuple[Path, float]]:
    """Execute every notebook (``INTERACTIVE=False``) and render it with MathJax copied into ``out_dir``, its
    navigation and its links to README.md and PAPER.md leading to the pages ``docs``; (html path, seconds it took
    to run) each.

    One line on stderr as each notebook starts. A failing cell, or a page without figures from a notebook
    that plots, raises ``NotebookError`` naming the notebook.
    """
    found = notebooks(folder)
    mathjax_url = install_mathjax(out_dir)
    written = {doc.name for doc in docs}
    links = {f"../{source}": name for source, name in DOCS.items() if name in written}  # a notebook's link to a doc
    pages = []
    for i, path in enumerate(found, 1):
        print(f"notebook {i}/{len(found)}: {path.stem}", file=sys.stderr, flush=True)
        executed = out_dir / path.name
        started = time.monotonic()
        execute(path, executed, fast=fast, seed=seed)
        seconds = time.monotonic() - started
        nav = navigation(found, i - 1, docs)
        page = render(executed, out_dir / f"{path.stem}.html", plots(path), mathjax_url, nav, links)
        pages.append((page, seconds))
    return pages


def navigation(found: list[Path], i: int, docs: list[Path] = ()) -> str:
    """Links from the page of notebook ``found[i]`` to the index, to the notebooks before and after it and to the
    rendered documents ``docs`` (``report_docs``)."""
    import nbformat

    def link(path: Path, label: str) -> str:
        name = title(nbformat.read(path, as_version=4), path.stem)
        return f'<a href="{html.escape(path.stem)}.html">{label} {html.escape(name)}</a>'

    links = ['<a href="index.html">Report index</a>']
    if i > 0:
        links.append(link(found[i - 1], "&larr; previous:"))
    if i + 1 < len(found):
        links.append(link(found[i + 1], "next:"))
    links += [doc_link(page) for page in docs]
    return f'<nav style="margin: 1rem 0; font-family: system-ui, sans-serif">{" &middot; ".join(links)}</nav>'


def _docs_paragraph(docs: list[Path]) -> str:
    """The index's pointer to the rendered README and PAPER.md, which the notebooks cite."""
    if not docs:
        return ""
    links = " and ".join(doc_link(page) for page in docs)
    return (f"<p>The notebooks cite two documents, here as pages: {links} (README.md: the commands, the benchmark's "
            "status, the decisions and their evidence; PAPER.md: the method and the paper's numbers in our words, "
            "and where the paper is silent).</p>")  # fmt: skip


def _path_row(number: int, page: Path, entry: Step) -> str:
    cells = [
        f"<td>{number}</td>",
        f'<td class="text"><a href="{html.escape(page.name)}">{html.escape(entry.title)}</a></td>',
        f'<td class="text">{html.escape(entry.summary)}</td>',
        f"<td>{entry.minutes:.0f}</td>",
        f'<td class="text">{html.escape(entry.basis)}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def build_report(
    out_dir: Path = REPORTS_DIR,
    fast: bool = False,
    name: str = "tiny_retinanet",
    bench: Path | None = None,
    folder: Path = NOTEBOOKS_DIR,
    bench_two_stage: Path | None = None,
) -> Path:
    """Run and render the notebooks in ``folder``, evaluate the shipped detector and write ``out_dir/index.html``
    (with the benchmark results at ``bench``, default ``data/results/bench.json``, and the tiny Faster R-CNN's at
    ``bench_two_stage``, default ``data/results/bench_tiny_fasterrcnn.json``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = render_docs(out_dir)
    pages = render_notebooks(out_dir, fast, folder=folder, docs=docs)
    path = [step(notebook, seconds) for notebook, (_, seconds) in zip(notebooks(folder), pages)]
    model, _ = load_checkpoint(name)
    card = json.loads(card_path(CHECKPOINTS[name]).read_text())
    val = SceneSet("val")
    metrics = evaluate(model, val)
    shown = SceneSet("val", size=8)
    figure = png_base64(plot_detections([shown[i] for i in range(len(shown))], predict(model, shown)))
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    page = PAGE.format(
        mode="FAST settings (a quick run: fewer images and iterations)" if fast else "full settings",
        wpm=WORDS_PER_MINUTE,
        per_exercise=MINUTES_PER_EXERCISE,
        run_note=" (FAST settings: with the full ones a notebook runs longer)" if fast else "",
        path_rows="\n".join(_path_row(i, p, e) for i, ((p, _), e) in enumerate(zip(pages, path), 1)),
        total_minutes=sum(e.minutes for e in path),
        docs=_docs_paragraph(docs),
        bench=bench_section(bench),
        bench_two_stage=bench_section(bench_two_stage or RESULTS_DIR / result_name("tiny_fasterrcnn")),
        model=html.escape(name),
        parameters=card["parameters"],
        command=html.escape(card["command"]),
        seed=card["seed"],
        iters=card["iters"],
        batch_size=card["batch_size"],
        train_minutes=card["train_seconds"] / 60,
        threads=card["threads"],
        metric_heads="".join(f"<th>{n}</th>" for n in names),
        metric_cells="".join("<td>n/a</td>" if metrics[n] is None else f"<td>{metrics[n]:.1f}</td>" for n in names),
        images=metrics["images"],
        apl_note="; APl is n/a: no scene object has more than 96 x 96 visible pixels" if metrics["APl"] is None else "",
        figure=figure,
    )
    return write_atomic(out_dir / "index.html", lambda tmp: tmp.write_text(page))
