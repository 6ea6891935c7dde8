"""The HTML report: every notebook executed and rendered to ``reports/NN_name.html``, and
``reports/index.html`` with the FP detector's card, metrics and detections and a link to each notebook."""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt

from .atomic import write_atomic
from .coco_eval import evaluate, predict
from .detectors import CHECKPOINTS, card_path, load_checkpoint
from .notebooks_io import NOTEBOOKS_DIR, execute, notebooks, plots, render, summary
from .scenes import SceneSet
from .viz import plot_detections

REPORTS_DIR = Path(__file__).resolve().parent.parent / "reports"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>regptq-workbook report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .7rem; text-align: right; }}
img {{ max-width: 100%; }} code {{ background: #f3f3f3; padding: 0 .2rem; }}
</style></head><body>
<h1>regptq-workbook</h1>
<p>Post-training quantization of a fully quantized detector, after Reg-PTQ (CVPR 2024).</p>
<h2>The full-precision detector</h2>
<p>{model}: {parameters:,} parameters, trained from scratch by <code>{command}</code>
(seed {seed}, {iters} iterations of {batch_size} scenes, {train_minutes:.1f} min on {threads} CPU threads).</p>
<table><tr>{metric_heads}</tr><tr>{metric_cells}</tr></table>
<p>COCO box metrics (0-100) on the {images} validation scenes, recomputed while this report was built.</p>
<img alt="detections of the FP detector on validation scenes" src="data:image/png;base64,{figure}">
<h2>Notebooks</h2>
<p>Executed top to bottom for this report, with {mode}.</p>
{notebooks}
</body></html>
"""


def _png_base64(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_notebooks(out_dir: Path, fast: bool, seed: int = 0, folder: Path = NOTEBOOKS_DIR) -> list[tuple[Path, str]]:
    """Execute every notebook (``INTERACTIVE=False``) and render it; (html path, one-line summary) each.

    One line on stderr as each notebook starts. A failing cell, or a page without figures from a notebook
    that plots, raises ``NotebookError`` naming the notebook.
    """
    found = notebooks(folder)
    pages = []
    for i, path in enumerate(found, 1):
        print(f"notebook {i}/{len(found)}: {path.stem}", file=sys.stderr, flush=True)
        executed = out_dir / path.name
        execute(path, executed, fast=fast, seed=seed)
        page = render(executed, out_dir / f"{path.stem}.html", figures=plots(path))
        pages.append((page, summary(path)))
    return pages


def build_report(out_dir: Path = REPORTS_DIR, fast: bool = False, name: str = "tiny_retinanet") -> Path:
    """Run and render the notebooks, evaluate the shipped detector and write ``out_dir/index.html``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = render_notebooks(out_dir, fast)
    model, _ = load_checkpoint(name)
    card = json.loads(card_path(CHECKPOINTS[name]).read_text())
    val = SceneSet("val")
    metrics = evaluate(model, val)
    shown = SceneSet("val", size=8)
    figure = _png_base64(plot_detections([shown[i] for i in range(len(shown))], predict(model, shown)))
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    page = PAGE.format(
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
        figure=figure,
        mode="FAST settings (a quick run: fewer images and iterations)" if fast else "full settings",
        notebooks="<ul>"
        + "".join(f'<li><a href="{p.name}">{html.escape(p.stem)}</a>: {html.escape(text)}</li>' for p, text in pages)
        + "</ul>",
    )
    return write_atomic(out_dir / "index.html", lambda tmp: tmp.write_text(page))
