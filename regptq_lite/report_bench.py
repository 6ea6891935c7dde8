"""The benchmark on the report's index: the headline methods x bits table with its seed spread, Reg-PTQ's
verdict against the best baseline, and the budget curve as a figure, from a bench's results file.

A missing, unreadable or older-format results file gives a one-line note instead, never an error.
"""

from __future__ import annotations

import html
from pathlib import Path

from .bench import RESULTS_DIR, load, result_name
from .bench_tables import budget_curve, leads, methods_table
from .provenance import code_fingerprint
from .viz import plot_budget_curve, png_base64

RUN_FIELDS = ("table", "row", "method", "wbits", "abits", "seed", "iters", "AP")  # what the tables read per run


def is_current(result: object) -> bool:
    """Results in the format ``bench_tables`` reads: a dict of settings with ``runs`` that name their table and row."""
    if not isinstance(result, dict) or not isinstance(result.get("runs"), list) or not result["runs"]:
        return False
    return {"command", "commit", "seeds"} <= result.keys() and all(
        isinstance(r, dict) and set(RUN_FIELDS) <= r.keys() for r in result["runs"]
    )


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(frame, **options) -> str:
    return frame.to_html(border=0, na_rep="-", **options)


def bench_html(result: dict) -> str:
    """The section's HTML for results in the current format."""
    runs = result["runs"]
    fp = next((r["fp_AP"] for r in runs if r.get("fp_AP") is not None), None)
    budget = "budget not fixed yet" if result.get("iters") is None else f"{result['iters']} iterations per unit"
    setting = (
        f"{budget}, {result.get('calib_images', '?')} calibration images, seeds {', '.join(map(str, result['seeds']))}"
    )
    parts = [
        f"<p>From <code>{html.escape(str(result['command']))}</code> at commit "
        f"<code>{html.escape(str(result['commit'])[:12])}</code>: {len(runs)} calibrations, {html.escape(setting)}."
        + ("" if fp is None else f" Full-precision AP {fp:.1f}.")
        + "</p>",
    ]
    here = code_fingerprint()
    if result.get("code") != here:
        parts.append(_note(f"These numbers come from code fingerprint {result.get('code')}; the code here has {here}: "
                           "a new bench may give other numbers."))  # fmt: skip
    if result.get("fast"):
        parts.append(_note("A FAST smoke run: too few iterations and images for its numbers to mean anything."))
    parts += [
        "<h3>Methods x bits (full quantization): mean AP over seeds (min-max)</h3>",
        _table(methods_table(result).rename_axis(index=None, columns=None)),
        "<h3>Reg-PTQ against the best baseline: a lead only beyond the seed spread</h3>",
    ]
    verdicts = leads(result)
    parts.append(_note("No setting has both Reg-PTQ and a baseline.") if verdicts.empty else
                 _table(verdicts, index=False, float_format="{:.1f}".format))  # fmt: skip
    parts.append("<h3>Budget curve</h3>")
    curve = budget_curve(result)
    if curve.empty:
        parts.append(_note("These results hold no budget curve."))
    else:
        figure = png_base64(plot_budget_curve(curve, budget=result.get("iters")))
        parts.append(f'<img alt="AP against iterations per unit" src="data:image/png;base64,{figure}">')
    return "\n".join(parts)


def bench_section(path: Path | None = None) -> str:
    """``bench_html`` of the results at ``path`` (default ``data/results/bench.json``), or a one-line note."""
    path = Path(path) if path is not None else RESULTS_DIR / result_name()
    try:
        result = load(path)
    except FileNotFoundError:
        return _note(f"No benchmark results at {path.name} yet: python -m regptq_lite bench writes them.")
    except (OSError, ValueError) as err:
        return _note(f"The benchmark results in {path.name} could not be read ({type(err).__name__}).")
    if isinstance(result, dict) and result.get("runs") == []:
        return _note(f"The benchmark results in {path.name} hold no runs yet.")
    if not is_current(result):
        return _note(f"The benchmark results in {path.name} are in an older format; a new bench will replace them.")
    return bench_html(result)
