"""README.md and PAPER.md as pages of the report (``readme.html``, ``paper.html``): the notebooks cite their
sections ("README, 'Decisions'", "PAPER.md section 4"), and a reader of the report may not have the repository."""

from __future__ import annotations

import html
from pathlib import Path

from .atomic import write_atomic

REPO = Path(__file__).resolve().parent.parent
DOCS = {"README.md": "readme.html", "PAPER.md": "paper.html"}  # source in the repository -> page in the report

DOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .7rem; }}
code {{ background: #f3f3f3; padding: 0 .2rem; }} pre {{ background: #f3f3f3; padding: .5rem; overflow-x: auto; }}
.anchor-link {{ visibility: hidden; margin-left: .3rem; }} :hover > .anchor-link {{ visibility: visible; }}
</style></head><body>
<nav><a href="index.html">Report index</a> &middot; {source}, rendered from the repository for this report</nav>
{body}
</body></html>
"""


def render_docs(out_dir: Path, repo: Path = REPO) -> list[Path]:
    """Render each of ``DOCS`` that ``repo`` holds to its page in ``out_dir``; the pages written. Headings get
    ids (nbconvert's markdown filter), so a section can be linked as ``readme.html#Decisions-and-their-evidence``."""
    from nbconvert.filters.markdown import markdown2html

    written = []
    for name, page in DOCS.items():
        source = repo / name
        if not source.is_file():
            continue
        text = source.read_text(encoding="utf-8")
        heading = next((line.lstrip("#").strip() for line in text.splitlines() if line.startswith("# ")), name)
        content = DOC_PAGE.format(title=html.escape(heading), source=html.escape(name), body=markdown2html(text))
        written.append(write_atomic(out_dir / page, lambda tmp, content=content: tmp.write_text(content)))
    return written


def doc_link(page: Path) -> str:
    """A link to a rendered document, labelled by its source (``readme.html`` -> "README.md")."""
    source = next(source for source, name in DOCS.items() if name == page.name)
    return f'<a href="{html.escape(page.name)}">{html.escape(source)}</a>'
