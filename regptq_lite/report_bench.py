"""The benchmark on the report's index: the headline methods x bits table with its seed spread, Reg-PTQ's
verdict against the best baseline, and the budget curve as a figure, from a bench's results file.

A missing, unreadable or older-format results file gives a one-line note instead, never an error.
"""

from __future__ import annotations

import html
from pathlib import Path

from .bench import DEFAULT_MODEL, RESULTS_DIR, load, result_name
from .bench_share import RUN_FIELDS
from .bench_tables import REGPTQ, budget_curve, completion, leads, methods_table
from .provenance import code_fingerprint
from .recon import ReconSettings
from .viz import plot_budget_curve, png_base64


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


# The paper's Table 1 (PAPER.md section 6; COCO, full quantization): per tiny detector, the paper's detector of
# that kind and Reg-PTQ's lead over QDrop there, in AP
PAPER_LEADS = {
    "tiny_retinanet": ("RetinaNet-R50", {"W2A4": 23.9 - 19.9, "W3A3": 28.1 - 26.5, "W4A4": 36.7 - 34.1,
                                          "W4A8": 37.4 - 37.0}),
    "tiny_fasterrcnn": ("Faster R-CNN-R50", {"W2A4": 19.1 - 17.8, "W3A3": 28.1 - 23.6, "W4A4": 36.7 - 33.7,
                                             "W4A8": 37.8 - 37.6}),
}  # fmt: skip
VERDICT_LEGEND = (
    "mean: the row's mean AP over seeds; best baseline: the other method with the highest mean at that setting, "
    "baseline its mean; gap: mean - baseline; spread: the larger of the two rows' max - min over seeds. A gap is a "
    "lead (or behind) only beyond the spread and with three seeds each; one seed's spread is 0."
)


def _setting(runs: list[dict], field: str, table: str = "methods") -> str:
    """The distinct values that ``table``'s runs used for a ``ReconSettings`` field, as "0.01" or "0.001 and
    0.01"; "?" if none recorded it."""
    found = {r.get("settings", {}).get(field) for r in runs if r.get("table") == table} - {None}
    return " and ".join(f"{v:g}" for v in sorted(found)) or "?"


def headline(verdicts, model: str) -> str:
    """Reg-PTQ's own row against the best baseline, by verdict, beside the paper's leads on its kind of detector."""
    mine = verdicts[verdicts.row == REGPTQ]
    said = [f"{v} at {', '.join(group.setting)}" for v, group in mine.groupby("verdict", sort=False)]
    line = f"Reg-PTQ against the best baseline: {'; '.join(said) or 'no setting yet'}."
    if model not in PAPER_LEADS:
        return line
    detector, paper = PAPER_LEADS[model]
    leads_there = ", ".join(f"+{lead:.1f} at {setting}" for setting, lead in paper.items())
    return f"{line} The paper, on COCO ({detector}): ahead of QDrop by {leads_there}."


def bench_html(result: dict) -> str:
    """The section's HTML for results in the current format."""
    runs, model = result["runs"], result.get("model", DEFAULT_MODEL)
    fp = next((r["fp_AP"] for r in runs if r.get("fp_AP") is not None), None)
    done, planned = completion(result)
    commits, codes = len({r.get("commit") for r in runs}), len({r.get("code") for r in runs})
    budget = "budget not fixed yet" if result.get("iters") is None else f"{result['iters']} iterations per unit"
    step, published = _setting(runs, "weight_lr"), f"{ReconSettings().weight_lr:g}"
    setting = (
        f"{budget}, {result.get('calib_images', '?')} calibration images in batches of {_setting(runs, 'batch_size')}, "
        f"AdaRound's rounding step {step} for every method"
        + ("" if step in (published, "?") else f" (the published {published}: a departure, notebook 05 says why)")
        + f", seeds {', '.join(map(str, result['seeds']))}"
    )
    parts = [
        f"<p>From <code>{html.escape(str(result['command']))}</code>, last invoked at commit "
        f"<code>{html.escape(str(result['commit'])[:12])}</code>: {done} of the {planned} planned calibrations"
        + ("" if done >= planned else " (an unfinished bench: what has not run is blank)")
        + f", made at {commits} commit(s) with {codes} code fingerprint(s); {html.escape(setting)}."
        + ("" if fp is None else f" Full-precision AP {fp:.1f}.")
        + " AP: COCO box AP (0-100) on the 500 validation scenes.</p>",
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
    if verdicts.empty:
        parts.append(_note("No setting has both Reg-PTQ and a baseline."))
    else:
        parts += [f"<p><strong>{html.escape(headline(verdicts, model))}</strong></p>",
                  _table(verdicts, index=False, float_format="{:.2f}".format), _note(VERDICT_LEGEND)]  # fmt: skip
    curve = budget_curve(result)
    if curve.empty:
        parts.append(_note("These results hold no budget curve" + (
            "." if model == DEFAULT_MODEL else f"; their budget is the one the {DEFAULT_MODEL} bench's curve fixed."
        )))  # fmt: skip
    else:
        parts.append("<h3>Budget curve</h3>")
        curve_step = _setting(runs, "weight_lr", table="budget")
        parts.append(_note(
            f"Seed 0, AdaRound's step {curve_step}: the curve chose the number of "
            f"iterations; the tables above use the bench's step ({step}), so their AP is not the curve's."
        ))  # fmt: skip
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
