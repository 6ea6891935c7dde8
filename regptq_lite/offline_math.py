"""Formulas that render with no network: MathJax 2.7 (the files of the pinned ``jupyter-server-mathjax``
package) copied into the report folder, and the URL by which a page there loads it.

The package ships the HTML-CSS output with the STIX-Web fonts only, so a small configuration file of our own
(``config/local/offline.js`` in the copy) points MathJax at those fonts.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

FOLDER = "mathjax"
CONFIG = "local/offline"
CONFIG_SOURCE = """MathJax.Hub.Config({
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null}
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/offline.js");
"""


def mathjax_source() -> Path:
    """MathJax's files inside the installed ``jupyter_server_mathjax`` package (found without importing it)."""
    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("jupyter-server-mathjax is not installed (pip install -r requirements.txt)")
    return Path(spec.submodule_search_locations[0]) / "static"


def is_mathjax_copy(folder: Path) -> bool:
    """A folder that ``install_mathjax`` wrote."""
    return (folder / "MathJax.js").is_file() and (folder / "config" / f"{CONFIG}.js").is_file()


def install_mathjax(out_dir: Path) -> str:
    """Copy MathJax into ``out_dir/mathjax`` (replacing an earlier copy); the relative URL of its script with
    the configuration nbconvert's pages expect (TeX input, HTML-CSS output, ``Safe`` mode)."""
    target = out_dir / FOLDER
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=out_dir))
    try:
        shutil.copytree(mathjax_source(), tmp, dirs_exist_ok=True)
        config = tmp / "config" / f"{CONFIG}.js"
        config.parent.mkdir(exist_ok=True)
        config.write_text(CONFIG_SOURCE)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return f"{FOLDER}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,{CONFIG}"
