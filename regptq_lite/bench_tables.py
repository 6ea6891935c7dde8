"""The benchmark's tables, from the runs that ``bench.run_bench`` wrote.

Every table of more than one seed shows mean and min-max over seeds. A difference between two rows is
called a lead only when it exceeds the seed spread (the larger of the two rows' max - min) and both rows
have three seeds; otherwise it is "within the seed spread" or "not enough seeds".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import pandas as pd

from .bench import (
    ABLATION,
    ABLATION_BITS,
    BITS,
    DEFAULT_MODEL,
    FILTER_GRID,
    QDROP_PARTS,
    ROWS,
    SEEDS,
    STEP_SIZES,
    place,
    planned_runs,
    select,
)
from .recon import ReconSettings

SETTINGS = [f"W{w}A{a}" for w, a in BITS] + ["W8A8"]
REGPTQ = "regptq"


UNRECORDED = "an unrecorded machine"  # runs made before runs recorded their own
SESSION = ["commit", "machine"]  # what two runs made in one session share (our proxy for it)


def _session(run: dict) -> dict:
    """The run's ``SESSION`` fields; a run made before runs recorded their machine gets ``UNRECORDED``."""
    return {"commit": run.get("commit"), "machine": run.get("machine", UNRECORDED)}


def runs_frame(result: dict) -> pd.DataFrame:
    """Every run as a row: its table, row label, setting, seed, iterations, AP figures, seconds and session."""
    rows = [{**{k: v for k, v in r.items() if not isinstance(v, dict | list)}, **_session(r)} for r in result["runs"]]
    frame = pd.DataFrame(rows, columns=["table", "row", "method", "wbits", "abits", "seed", "iters", "AP", "AP50",
                                        "AP75", "fp_AP", "seconds", "calibration_seconds", *SESSION])  # fmt: skip
    frame["setting"] = "W" + frame["wbits"].astype(str) + "A" + frame["abits"].astype(str)
    return frame


def seed_stats(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """AP over seeds per row and setting of one table: n, mean, min, max."""
    rows = frame[frame.table == table]
    stats = rows.groupby(["row", "setting"], sort=False)["AP"].agg(["count", "mean", "min", "max"])
    return stats.rename(columns={"count": "n"}).reset_index()


def _ap(value: float) -> str:
    """An AP to one decimal; rounded to 1e-6 first so that one mean summed in two orders (65.4499.. and 65.45)
    prints the same in every table."""
    return f"{round(value, 6):.1f}"


def _cell(row: pd.Series) -> str:
    """'mean (min-max)' of a ``seed_stats`` row; the mean alone for one seed."""
    if row["n"] == 1:
        return _ap(row["mean"])
    return f"{_ap(row['mean'])} ({_ap(row['min'])}-{_ap(row['max'])})"


def wide(stats: pd.DataFrame, rows: list[str], columns: list[str]) -> pd.DataFrame:
    """``seed_stats`` as row x setting cells 'mean (min-max)' ('-' where nothing ran)."""
    cells = stats.assign(cell=stats.apply(_cell, axis=1)) if len(stats) else stats.assign(cell=[])
    grid = cells.pivot_table(index="row", columns="setting", values="cell", aggfunc="first")
    return grid.reindex(index=rows, columns=columns).astype(object).fillna("-")


def methods_table(result: dict) -> pd.DataFrame:
    """Methods x bit settings: mean AP (min-max over seeds)."""
    return wide(seed_stats(runs_frame(result), "methods"), list(ROWS), SETTINGS)


def verdict(a: pd.Series, b: pd.Series, seeds: int = len(SEEDS)) -> str:
    """How row ``a`` stands against row ``b`` (each n, mean, min, max): a lead, behind, or within the spread."""
    if min(a["n"], b["n"]) < seeds:
        return "not enough seeds"
    spread = max(a["max"] - a["min"], b["max"] - b["min"])
    gap = a["mean"] - b["mean"]
    if abs(gap) <= spread:
        return "within the seed spread"
    return "lead" if gap > 0 else "behind"


def leads(result: dict) -> pd.DataFrame:
    """Per row of the methods table that runs Reg-PTQ (its default, its shift form, ...) and setting: its mean
    AP against the best other method's (by mean), the gap, the seed spread and the verdict."""
    stats = seed_stats(runs_frame(result), "methods")
    mine = [r for r in ROWS if ROWS[r][0] == REGPTQ]
    out = []
    for row in mine:
        for setting in SETTINGS:
            here = stats[stats.setting == setting].set_index("row")
            others = here.drop(index=mine, errors="ignore")
            if row not in here.index or others.empty:
                continue
            best = others["mean"].idxmax()
            a, b = here.loc[row], others.loc[best]
            out.append({"row": row, "setting": setting, "mean": a["mean"], "best baseline": best, "baseline": b["mean"],
                        "gap": a["mean"] - b["mean"], "spread": max(a["max"] - a["min"], b["max"] - b["min"]),
                        "seeds": int(min(a["n"], b["n"])), "verdict": verdict(a, b)})  # fmt: skip
    return pd.DataFrame(out)


def against(result: dict, table: str, rows: list[str], reference: str) -> pd.DataFrame:
    """Each of ``rows`` of ``table`` against its ``reference`` row, per setting where both ran: both as
    mean (min-max), the gap in mean AP and the verdict by the seed-spread rule."""
    stats = seed_stats(runs_frame(result), table).set_index(["row", "setting"])
    out = []
    for row in rows:
        for setting in SETTINGS:
            if (row, setting) in stats.index and (reference, setting) in stats.index:
                a, b = stats.loc[(row, setting)], stats.loc[(reference, setting)]
                out.append({"row": row, "setting": setting, "AP": _cell(a), reference: _cell(b),
                            "gap": a["mean"] - b["mean"], "verdict": verdict(a, b)})  # fmt: skip
    return pd.DataFrame(out, columns=["row", "setting", "AP", reference, "gap", "verdict"])


def reruns(results: dict[str, dict]) -> pd.DataFrame:
    """Runs made more than once: the same detector, settings (``key``) and code fingerprint in several of
    ``results`` (name -> bench JSON, e.g. the bench and the quiet timing files). One row per run with its AP,
    machine and torch threads ('?' where the run did not record them), and per key the AP range over its runs."""
    made: dict[tuple, list[dict]] = {}
    for name, result in results.items():
        model, seen = result.get("model", DEFAULT_MODEL), set()
        for run in result["runs"]:
            if "key" in run and run["key"] not in seen:  # a run that several tables share, once per file
                seen.add(run["key"])
                made.setdefault((model, run["key"], run.get("code")), []).append({
                    "model": model, "row": run["row"], "setting": f"W{run['wbits']}A{run['abits']}",
                    "seed": run["seed"], "file": name, "machine": _session(run)["machine"],
                    "threads": run.get("threads", "?"), "AP": run["AP"],
                })  # fmt: skip
    out = []
    for runs in made.values():
        if len(runs) > 1:
            aps = [r["AP"] for r in runs]
            out += [{**r, "range": max(aps) - min(aps)} for r in runs]
    return pd.DataFrame(out, columns=["model", "row", "setting", "seed", "file", "machine", "threads", "AP", "range"])


def has_table(result: dict, table: str) -> bool:
    """Whether the bench holds runs of ``table`` (the tiny Faster R-CNN's has no "budget" or "ablation")."""
    return any(r.get("table") == table for r in result["runs"])


def budget_curve(result: dict) -> pd.DataFrame:
    """AP against iterations per unit: index iterations, columns (method, setting)."""
    frame = runs_frame(result)
    curve = frame[frame.table == "budget"]
    return curve.pivot_table(index="iters", columns=["method", "setting"], values="AP", aggfunc="first")


def _undecided(run: dict) -> float:
    """The run's share of learned roundings still inside (0.05, 0.95) when soft rounding ended, mean over units."""
    units = run.get("units") or [{}]
    return sum(u.get("undecided", 0.0) for u in units) / len(units)


def step_size_table(result: dict) -> pd.DataFrame:
    """AP and the share of roundings left undecided by AdaRound's learning rate: each step-size run beside the
    budget curve's runs at the same setting and iterations (lr 1e-3); index (iters, lr, lr x iters), columns
    (AP or undecided, method)."""
    iters = {n for n, _ in STEP_SIZES}
    rows = [
        {"iters": r["iters"], "lr": r["settings"]["weight_lr"], "lr x iters": r["settings"]["weight_lr"] * r["iters"],
         "method": r["method"], "AP": r["AP"], "undecided": _undecided(r)}
        for r in result["runs"]
        if "settings" in r and (r.get("table") == "step size" or (
            r.get("table") == "budget" and r["iters"] in iters and (r["wbits"], r["abits"]) == ABLATION_BITS))
    ]  # fmt: skip
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).pivot_table(index=["iters", "lr", "lr x iters"], columns="method",
                                           values=["AP", "undecided"], aggfunc="first")  # fmt: skip
    return frame.sort_index(level=["lr x iters", "iters"])


def step_size_distance(steps: pd.DataFrame) -> pd.DataFrame:
    """Is the budget a distance? From ``step_size_table``: per method and lr x iterations p, like for like, the AP
    that 4x the steps adds at p ("4x the steps": 2000 steps against 500, where p ran at both) beside the AP that 4x
    the learning rate adds at 500 steps from p ("4x the step": 4p against p). NaN where that comparison did not run."""
    if steps.empty:
        return pd.DataFrame()
    ap = steps["AP"].reset_index()
    at500 = ap[ap["iters"] == 500].set_index("lr x iters").drop(columns=["iters", "lr"]).sort_index()
    at2000 = ap[ap["iters"] == 2000].set_index("lr x iters").drop(columns=["iters", "lr"])
    nan = pd.Series(math.nan, index=at500.columns)
    rows = []
    for p in at500.index:
        wider = [q for q in at500.index if math.isclose(q, 4 * p)]
        steps_gain = at2000.loc[p] - at500.loc[p] if p in at2000.index else nan
        step_gain = at500.loc[wider[0]] - at500.loc[p] if wider else nan
        rows += [{"method": m, "lr x iters": p, "4x the steps": steps_gain[m], "4x the step": step_gain[m]}
                 for m in at500.columns]  # fmt: skip
    return pd.DataFrame(rows).set_index(["method", "lr x iters"]).sort_index().dropna(how="all")


def steps_gain_at_longest(distance: pd.DataFrame) -> tuple[float, pd.Series] | None:
    """From ``step_size_distance``: the largest lr x iterations at which 4x the steps ran, and per method the AP
    they add there (does the count of steps still matter where the roundings have moved furthest?); None if none."""
    gains = distance["4x the steps"].dropna() if "4x the steps" in distance else pd.Series(dtype=float)
    if gains.empty:
        return None
    longest = gains.index.get_level_values("lr x iters").max()
    return longest, gains.xs(longest, level="lr x iters")


def ablation_table(result: dict) -> pd.DataFrame:
    """Reg-PTQ with parts changed: n, mean, min, max and the verdict against full Reg-PTQ."""
    stats = seed_stats(runs_frame(result), "ablation").set_index("row").reindex(list(ABLATION)).dropna(how="all")
    if "Reg-PTQ" in stats.index:
        full = stats.loc["Reg-PTQ"]
        stats["against Reg-PTQ"] = [
            "-" if name == "Reg-PTQ" else verdict(r, full) for name, r in stats.iterrows()
        ]  # fmt: skip
    return stats.drop(columns="setting").astype({"n": int})


def qdrop_part_aps(result: dict) -> pd.DataFrame:
    """AP of each cell of ``QDROP_PARTS`` at W2A4: columns the cells, index the seeds at which all four ran."""
    frame = runs_frame(result)
    frame = frame[frame.setting == "W{}A{}".format(*ABLATION_BITS)]
    aps = {
        cell: frame[(frame.table == t) & (frame.row == r)].set_index("seed")["AP"]
        for cell, (t, r) in QDROP_PARTS.items()
    }
    return pd.concat(aps, axis=1, join="inner").sort_index()


def _part_stats(ap: pd.Series) -> pd.Series:
    """One cell's APs over seeds as n, mean, min, max (as ``seed_stats`` has them)."""
    return ap.agg(["count", "mean", "min", "max"]).rename({"count": "n"})


def qdrop_parts(result: dict) -> tuple[pd.DataFrame, list[int]]:
    """QDrop with and without each of Reg-PTQ's two parts at W2A4 (rows L_G, columns the head's weight
    quantizer): AP as mean (min-max) over the seeds at which all four ran, and those seeds."""
    aps = qdrop_part_aps(result)
    grid = pd.DataFrame(
        index=pd.Index(["no L_G", "with L_G"], name="QDrop"), columns=["uniform head", "LLAQ head"], dtype=object
    )
    for (loss, head), ap in aps.items():
        grid.loc[loss, head] = _cell(_part_stats(ap)) if len(ap) else "-"
    return grid, aps.index.tolist()


def qdrop_parts_sentence(result: dict) -> str | None:
    """What each of Reg-PTQ's two parts does to QDrop's mean AP (``qdrop_parts``), each change with its
    ``verdict`` against the seed spread, or None before all four ran."""
    aps = qdrop_part_aps(result)
    if aps.empty:
        return None
    stats = {cell: _part_stats(aps[cell]) for cell in aps.columns}

    def change(to: tuple[str, str], start: tuple[str, str]) -> str:
        judged = verdict(stats[to], stats[start])
        judged = "beyond the seed spread" if judged in ("lead", "behind") else judged
        return f"{stats[to]['mean'] - stats[start]['mean']:+.1f} ({judged})"

    return (
        f"Reg-PTQ's parts on QDrop (W2A4, seeds {', '.join(map(str, aps.index))}): L_G moves AP by "
        f"{change(('with L_G', 'uniform head'), ('no L_G', 'uniform head'))} with a uniform head and "
        f"{change(('with L_G', 'LLAQ head'), ('no L_G', 'LLAQ head'))} with LLAQ; LLAQ on the head by "
        f"{change(('no L_G', 'LLAQ head'), ('no L_G', 'uniform head'))} without L_G and "
        f"{change(('with L_G', 'LLAQ head'), ('with L_G', 'uniform head'))} with it."
    )


def filter_table(result: dict) -> pd.DataFrame:
    """Reg-PTQ AP by filter thresholds (rows theta_C, columns theta_I), one seed."""
    frame = runs_frame(result)
    cells = frame[frame.table == "filter"]
    grid = {(float(r.split("/")[0]), float(r.split("/")[1])): ap for r, ap in zip(cells["row"], cells["AP"])}
    index = sorted({c for c, _ in FILTER_GRID})
    columns = sorted({i for _, i in FILTER_GRID})
    table = pd.DataFrame(
        [[grid.get((c, i), float("nan")) for i in columns] for c in index], index=index, columns=columns
    )
    table.index.name, table.columns.name = "theta_C", "theta_I"
    return table.rename(index="{:g}".format, columns="{:g}".format)


def filter_sentence(result: dict) -> str | None:
    """Whether the filter thresholds move Reg-PTQ's AP: the range of the grid's filtered cells (``filter_table``)
    against Reg-PTQ's seed spread at W2A4 in the methods table, with the no-filter cell (0/0) beside it, whose
    verdict is the ablation's, over every seed; None before two filtered cells ran."""
    cells = filter_table(result).stack().dropna()
    off = ("0", "0")  # filter_table's labels of the no-filter cell
    unfiltered = cells.pop(off) if off in cells.index else None
    if len(cells) < 2:
        return None
    low, high = cells.idxmin(), cells.idxmax()
    filtered = sum(1 for cell in FILTER_GRID if any(cell))
    text = (f"Filter thresholds (Reg-PTQ, W2A4, seed 0, {len(cells)} of {filtered} filtered cells): AP "
            f"{cells.min():.2f} (theta_C/theta_I {'/'.join(low)}) to {cells.max():.2f} ({'/'.join(high)}), a range "
            f"of {cells.max() - cells.min():.2f}")  # fmt: skip
    if unfiltered is not None:
        text += f" (no filter, 0/0: {unfiltered:.2f}; the ablation's no-filter row judges filtering over the seeds)"
    stats = seed_stats(runs_frame(result), "methods").set_index(["row", "setting"])
    if (REGPTQ, SETTINGS[0]) not in stats.index or stats.loc[(REGPTQ, SETTINGS[0]), "n"] < len(SEEDS):
        return f"{text}; Reg-PTQ has too few seeds at W2A4 for a verdict."
    mine = stats.loc[(REGPTQ, SETTINGS[0])]
    spread = mine["max"] - mine["min"]
    excess = cells.max() - cells.min() - spread
    beyond = "beyond" if excess > 0 else "within"
    return (f"{text}, against Reg-PTQ's seed spread at W2A4 of {spread:.2f}: the thresholds move AP {beyond} it, "
            f"by {abs(excess):.2f}.")  # fmt: skip


def timing(result: dict, method: str = REGPTQ, baseline: str = "brecq") -> pd.DataFrame:
    """Calibration wall time of ``method`` (a row, or a row of the cheaper-L_G table) over ``baseline`` at the
    same setting, seed and budget, from the budget curve, which runs each budget's methods one after the other in
    one process for this; a bench without a curve (the tiny Faster R-CNN's) from its methods table, whose runs share
    the machine with whatever else ran. Only runs made in one session pair up (the same commit on the same
    machine): this machine's speed drifts between sessions."""
    frame = runs_frame(result)
    timed = "budget" if has_table(result, "budget") else "methods"
    runs = frame[frame.table.isin((timed, "cadence"))].drop_duplicates(["row", "setting", "seed", "iters"])
    pairs = runs[runs.row == method].merge(runs[runs.row == baseline], on=["setting", "seed", "iters", *SESSION])
    return pd.DataFrame({
        "setting": pairs["setting"], "seed": pairs["seed"], "iters": pairs["iters"],
        f"{method} s": pairs["calibration_seconds_x"], f"{baseline} s": pairs["calibration_seconds_y"],
        "ratio": pairs["calibration_seconds_x"] / pairs["calibration_seconds_y"],
    })  # fmt: skip


QUIET_PAIR = "a ratio compares the methods only where its two runs ran one after the other on a quiet machine"


def cadence_timing(result: dict, baseline: str = "brecq") -> pd.DataFrame:
    """``timing`` of each cheaper-L_G row (``bench.LG_COST``) over ``baseline``, in one table."""
    frame = runs_frame(result)
    tables = [timing(result, row, baseline).rename(columns={f"{row} s": "Reg-PTQ s"}).assign(row=row)
              for row in frame[frame.table == "cadence"].row.unique()]  # fmt: skip
    tables = [t for t in tables if not t.empty]
    columns = ["row", "setting", "seed", "iters", "Reg-PTQ s", f"{baseline} s", "ratio"]
    return pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)


def _ratio_spread(ratios: pd.Series, context: str) -> str:
    """The mean of time ratios, how many pairs it rests on and ``context`` (how the pairs ran), e.g.
    "1.50x BRECQ's wall time (1.40-1.60 over 3 pairs; ...)"."""
    spread = "one pair" if len(ratios) == 1 else f"{ratios.min():.2f}-{ratios.max():.2f} over {len(ratios)} pairs"
    return f"{ratios.mean():.2f}x BRECQ's wall time ({spread}{context})"


def _units_frame(result: dict, rows: tuple[str, ...]) -> pd.DataFrame:
    """Per unit of every run of ``rows`` (methods or cheaper-L_G table): the run's row, setting and seed with the
    unit's diagnostics."""
    units = [
        {"row": r["row"], "setting": f"W{r['wbits']}A{r['abits']}", "seed": r["seed"], **_session(r), **u}
        for r in result["runs"]
        if r.get("table") in ("methods", "cadence") and r.get("row") in rows
        for u in r.get("units", [])
    ]
    columns = dict.fromkeys(["row", "setting", "seed", *SESSION, "unit", "seconds", "undecided",
                             *(k for u in units for k in u)])  # fmt: skip
    return pd.DataFrame(units, columns=list(columns))


def unit_seconds(result: dict, method: str = REGPTQ, baseline: str = "brecq") -> pd.DataFrame:
    """Per unit, the calibration seconds of ``method`` (a row of the methods or cheaper-L_G table) and ``baseline``
    (mean over the settings and seeds at which one session ran both, as in ``timing``) and the difference: where
    ``method``'s extra time goes."""
    units = _units_frame(result, (method, baseline))
    pairs = units[units.row == method].merge(units[units.row == baseline], on=["setting", "seed", "unit", *SESSION])
    out = pairs.groupby("unit", sort=False)[["seconds_x", "seconds_y"]].mean()
    out.columns = [f"{method} s", f"{baseline} s"]
    out["extra s"] = out[f"{method} s"] - out[f"{baseline} s"]
    return out.reset_index()


def relative_spread(per_unit: pd.DataFrame, columns: tuple[str, ...] = ("brecq s", "extra s")) -> dict[str, float]:
    """Of ``unit_seconds``' columns: how much each varies from unit to unit, its standard deviation over its mean."""
    return {column: per_unit[column].std() / per_unit[column].mean() for column in columns}


def rounding_decided(result: dict, row: str = REGPTQ) -> pd.DataFrame:
    """Per unit of ``row``'s runs in the methods table: the share of learned roundings still inside
    (0.05, 0.95) when soft rounding ended (mean and max over runs) and the L_G scale c."""
    frame = _units_frame(result, (row,))
    if frame.empty:
        return pd.DataFrame(columns=["unit", "undecided mean", "undecided max", "L_G scale"])
    grouped = frame.groupby("unit", sort=False)
    out = pd.DataFrame({"undecided mean": grouped["undecided"].mean(), "undecided max": grouped["undecided"].max()})
    if "global_scale" in frame:
        out["L_G scale"] = grouped["global_scale"].median()
    return out.reset_index()


def cadence_table(result: dict) -> pd.DataFrame:
    """Reg-PTQ at W2A4 with L_G's pass made cheaper (``bench.LG_COST``) beside its default: AP mean (min-max),
    the verdict against the default, and what each row saves, from the settings its runs recorded (a run that
    records none ran at the defaults): passes per unit, images per pass and the images that go through L_G per
    unit (their product). (Not seconds: these runs and the default's ran in different sessions, and this
    machine's speed drifts between sessions; ``cadence_timing`` has them.)"""
    base = ReconSettings()
    frame = runs_frame(result)
    recorded = [r.get("settings", {}) for r in result["runs"]]
    frame["every"] = [s.get("global_every", base.global_every) for s in recorded]
    frame["images"] = [s.get("global_images", base.global_images) for s in recorded]
    runs = frame[frame.setting == "W{}A{}".format(*BITS[0])]
    default = f"L_G every {base.global_every} steps on {base.global_images} images (default)"
    runs = pd.concat([runs[runs.table == "cadence"], runs[(runs.table == "methods") & (runs.row == REGPTQ)]])
    runs = runs.assign(table="cadence", row=runs.row.replace(REGPTQ, default))
    columns = ["row", "AP", "verdict", "passes per unit", "images per pass", "images per unit"]
    if not (runs.row != default).any():
        return pd.DataFrame(columns=columns)
    stats = seed_stats(runs, "cadence").set_index("row")
    first = runs.groupby("row")[["iters", "every", "images"]].first()
    reference = default in stats.index
    rows = []
    for row in [default] * reference + [r for r in stats.index if r != default]:
        passes = -(-int(first.loc[row, "iters"]) // int(first.loc[row, "every"]))
        images = int(first.loc[row, "images"])
        verdict_ = "no default run" if not reference else "reference" if row == default else None
        verdict_ = verdict_ or verdict(stats.loc[row], stats.loc[default])
        rows.append(dict(zip(columns, [row, _cell(stats.loc[row]), verdict_, passes, images, passes * images])))
    return pd.DataFrame(rows, columns=columns)


def _markdown_table(frame: pd.DataFrame, index: bool = True, digits: int = 2, empty: str = "no runs yet") -> list[str]:
    if frame.empty:
        return [f"({empty})"]
    frame = frame.reset_index() if index else frame

    def text(v: object) -> str:
        if isinstance(v, float):
            return "-" if pd.isna(v) else f"{v:.{digits}f}"
        return str(v)

    cells = [[text(v) for v in row] for row in frame.itertuples(False)]
    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|---" * len(frame.columns) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in cells]


def _tally(values: Iterable[str]) -> str:
    """Each distinct value with how many runs had it, in first-seen order: "a (2), b (1)"."""
    return ", ".join(f"{v} ({n})" for v, n in Counter(values).items())


def markdown(result: dict) -> str:
    """The benchmark as markdown tables (AP on the 0-100 scale, 500 validation scenes)."""
    model = result.get("model", DEFAULT_MODEL)
    frame = runs_frame(result)
    fp = frame["fp_AP"].iloc[0] if len(frame) else float("nan")
    done, planned = completion(result)
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit of this invocation: `{result['commit']}`; runs made at "
        + _tally(f"`{r['commit'][:12]}`" for r in result["runs"])
        + f"; code fingerprint `{result.get('code')}`  ",
        f"Machine of this invocation: {result['machine']}, {result.get('threads', '?')} torch thread(s); runs made on "
        + _tally(_session(r)["machine"] for r in result["runs"])
        + "  ",
        f"Budget: {result.get('iters') or 'not fixed yet:'} iterations per unit (fixed by the budget curve), "
        f"{result['calib_images']}"
        " calibration images (the paper: 2k iterations per unit, batch 256). Seeds: "
        + ", ".join(map(str, result["seeds"]))
        + ".  ",
        f"Runs: {done} of the {planned} planned"
        + ("." if done == planned else ' (an unfinished bench: the rest is blank; "Still to run" at the end).'),
        "",
        *[f"- {line}" for line in findings(result)],
        "",
        f"## Methods x bits, {model}, full quantization (FP AP {fp:.1f}; mean, min-max over seeds)",
        "",
        *_markdown_table(methods_table(result)),
        "",
        "## Reg-PTQ against the best baseline (a lead only beyond the seed spread)",
        "",
        *_markdown_table(leads(result), index=False),
        "",
        "## Calibration time, Reg-PTQ over BRECQ (same setting, seed and budget)",
        "",
        *_markdown_table(timing(result), index=False),
    ]
    if model == DEFAULT_MODEL:
        lines += ["", "## Budget curve: AP against iterations per unit (seed 0)", ""]
        curve = budget_curve(result)
        curve.columns = [f"{m} {s}" for m, s in curve.columns]
        lines += _markdown_table(curve, digits=1)
        undecided = undecided_by_budget(result)
        if not undecided.empty:
            undecided.columns = [f"{m} {s}" for m, s in undecided.columns]
            lines += ["", "Share of learned roundings still undecided when soft rounding ended (mean over units):", ""]
            lines += _markdown_table(undecided, digits=3)
        steps = step_size_table(result)
        if not steps.empty:
            steps.columns = [f"{value} {method}" for value, method in steps.columns]
            lines += ["", "## Step size: AdaRound's learning rate x iterations (W2A4, seed 0)", ""]
            lines += _markdown_table(steps, digits=3)
        lines += ["", "## Ablation at W2A4 (Reg-PTQ with parts changed)", ""]
        lines += _markdown_table(ablation_table(result))
        grid, seeds = qdrop_parts(result)
        shared = ", ".join(map(str, seeds)) or "none yet"
        lines += ["", f"## Reg-PTQ's two parts on QDrop (W2A4, seeds at which all four ran: {shared})", ""]
        lines += _markdown_table(grid)
        lines += ["", "## Filter thresholds (Reg-PTQ, W2A4, seed 0): rows theta_C, columns theta_I", ""]
        lines += _markdown_table(filter_table(result), digits=1)
    else:
        lines += ["", "## L_G's pass made cheaper (Reg-PTQ, W2A4)", ""]
        lines += _markdown_table(cadence_table(result), index=False)
        lines += ["", f"Their calibration time over BRECQ's (same setting, seed and budget; {QUIET_PAIR}):", ""]
        alone = "no pair made in one session yet; a quiet pair each has its own timing file"
        lines += _markdown_table(cadence_timing(result), index=False, empty=alone)
    lines += ["", "## Learned rounding left undecided when soft rounding ended (Reg-PTQ, per unit)", ""]
    lines += _markdown_table(rounding_decided(result), index=False, digits=4)
    lines += ["", "## Weight MSE: LLAQ vs MSE-searched uniform", ""]
    lines += _markdown_table(pd.DataFrame(result["quantizer_mse"]), index=False, digits=6)
    for name, rows in result["cost"].items():
        lines += ["", f"## Cost: {name}", ""]
        columns = ["setting", "regime", "GFLOPs", "bit_GFLOPs", "compute_saving", "storage_MB", "storage_saving"]
        lines += _markdown_table(pd.DataFrame(rows)[columns], index=False)
    remaining = still_to_run(result)
    if remaining:
        hours = f"about {seconds_left(result) / 3600:.1f} hours of one core at the median time of each row's runs"
        lines += ["", f"## Still to run, in the order the bench takes them ({hours})", ""]
        lines += [f"- {line}" for line in remaining]
    return "\n".join(lines) + "\n"


def completion(result: dict) -> tuple[int, int]:
    """(runs made, runs planned) of the bench that wrote ``result``: only the planned runs count."""
    planned = len(_planned(result))
    return planned - len(_missing(result)), planned


def _planned(result: dict) -> list[dict]:
    """Every run the bench that wrote ``result`` plans: those its ``selection`` chose, if it records one."""
    runs = planned_runs(result.get("model", DEFAULT_MODEL), result.get("fast", False), result.get("iters"))
    return select(runs, **result.get("selection", {}))


def _missing(result: dict) -> list[dict]:
    """The planned runs not in ``result`` yet, in the bench's order."""
    done = {place(r) for r in result["runs"]}
    return [spec for spec in _planned(result) if place(spec) not in done]


def seconds_left(result: dict) -> float:
    """The seconds the missing runs would take: each the median of its row's runs so far (of any run at that
    many iterations where its row has none)."""
    frame = runs_frame(result).assign(iters=[place(r)[-1] for r in result["runs"]])  # none without reconstruction
    by_row = frame.groupby(["row", "iters"])["seconds"].median()
    by_iters = frame.groupby("iters")["seconds"].median()
    total = 0.0
    for spec in _missing(result):
        iters = place(spec)[-1]
        total += by_row.get((spec["row"], iters), by_iters.get(iters, 0.0))
    return total


def still_to_run(result: dict) -> list[str]:
    """The planned runs not in ``result`` yet, in the bench's order, one line per stretch of runs at one table and
    setting, with its rows and their seeds: "methods W4A4: brecq, qdrop (seeds 1, 2)"."""
    stretches: list[tuple[str, dict[str, list[int]]]] = []
    for spec in _missing(result):
        setting = f"{spec['table']} W{spec['wbits']}A{spec['abits']}"
        if not stretches or stretches[-1][0] != setting:
            stretches.append((setting, {}))
        row = spec["row"] + (f" at {spec['iters']}" if spec["table"] == "budget" else "")
        stretches[-1][1].setdefault(row, []).append(spec["seed"])
    return [f"{setting}: " + "; ".join(_rows_by_seeds(rows)) for setting, rows in stretches]


def _rows_by_seeds(rows: dict[str, list[int]]) -> list[str]:
    """Rows that share their seeds named together: ["brecq, qdrop (seeds 1, 2)", "naive (seed 0)"]."""
    by_seeds: dict[tuple[int, ...], list[str]] = {}
    for row, seeds in rows.items():
        by_seeds.setdefault(tuple(seeds), []).append(row)
    return [
        f"{', '.join(names)} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
        for seeds, names in by_seeds.items()
    ]


def findings(result: dict) -> list[str]:
    """The bench's results in sentences written from its numbers: the budget the curve chose, Reg-PTQ against
    the best baseline per setting (with the verdict), the ablation against full Reg-PTQ, Reg-PTQ's two parts on
    QDrop, the filter grid's range, the time ratio."""
    out = []
    curve = budget_curve(result) if has_table(result, "budget") else pd.DataFrame()
    if not curve.empty and result.get("iters") is not None:
        budget = result["iters"]
        later = [n for n in curve.index if n > budget]
        if later:
            gains = ", ".join(f"{m} {s} {curve.loc[later[0], (m, s)] - curve.loc[budget, (m, s)]:+.1f}"
                              for m, s in curve.columns)  # fmt: skip
            out.append(f"The budget curve fixed {budget} iterations per unit: doubling to {later[0]} gains {gains} AP.")
        else:
            out.append(
                f"The budget curve found no budget from which doubling gains less than 0.5 AP in all of its series at "
                f"once: the budget is {budget}, its largest."
            )
    elif not curve.empty:
        gains = [f"{m} {s} {curve[(m, s)].dropna().index[-2]}->{curve[(m, s)].dropna().index[-1]} "
                 f"{curve[(m, s)].dropna().diff().iloc[-1]:+.1f}"
                 for m, s in curve.columns if curve[(m, s)].count() > 1]  # fmt: skip
        if gains:
            out.append(f"The budget curve is unfinished; the last doubling so far gains: {', '.join(gains)} AP.")
    stats = seed_stats(runs_frame(result), "methods").set_index(["row", "setting"])
    for _, lead in leads(result).iterrows():
        mine = stats.loc[(lead["row"], lead["setting"])]
        theirs = stats.loc[(lead["best baseline"], lead["setting"])]
        out.append(f"{lead['setting']}: {lead['row']} {_cell(mine)} against {lead['best baseline']} "
                   f"{_cell(theirs)}, {lead['gap']:+.1f} AP: {lead['verdict']}.")  # fmt: skip
    steps = step_size_table(result)
    for product, rows in steps["AP"].groupby(level="lr x iters") if not steps.empty else []:
        cells = [f"{method} {ap:.1f} at {n} iterations" for (n, _, _), row in rows.iterrows()
                 for method, ap in row.dropna().items()]  # fmt: skip
        out.append(f"Step size, AdaRound lr x iterations = {product:g}: {', '.join(cells)}.")
    ablation = ablation_table(result) if has_table(result, "ablation") else pd.DataFrame()
    for name, row in ablation.iterrows():
        if name != "Reg-PTQ" and "against Reg-PTQ" in row:
            out.append(f"Ablation, {name}: {_cell(row)} AP ({row['against Reg-PTQ']} against full Reg-PTQ).")
    out += [s for s in (qdrop_parts_sentence(result), filter_sentence(result)) if s is not None]
    ratios = timing(result)["ratio"]
    if len(ratios):
        how = (
            "run one after the other" if has_table(result, "budget") else f"from the methods table; {QUIET_PAIR}"
        )  # as ``timing`` chose its pairs
        out.append(f"Reg-PTQ's calibration took {_ratio_spread(ratios, f' {how}')}.")
    cadence = cadence_table(result)
    reference = cadence.iloc[0] if (cadence.verdict == "reference").any() else None
    for _, row in cadence[cadence.verdict != "reference"].iterrows():
        if reference is not None:
            work = f"{row['images per unit']} images through L_G per unit against {reference['images per unit']}"
            out.append(f"{row['row']}: {row['AP']} AP against {reference['row']} {reference['AP']}, "
                       f"{row['verdict']} ({work}).")  # fmt: skip
        ratios = timing(result, row["row"])["ratio"]
        if len(ratios):
            out.append(f"{row['row']}: calibration took {_ratio_spread(ratios, f'; {QUIET_PAIR}')}.")
    return out


def undecided_by_budget(result: dict) -> pd.DataFrame:
    """On the budget curve: the share of learned roundings still inside (0.05, 0.95) when soft rounding
    ended, averaged over units; index iterations, columns (method, setting)."""
    rows = [
        {"iters": r["iters"], "method": r["method"], "setting": f"W{r['wbits']}A{r['abits']}",
         "undecided": _undecided(r)}
        for r in result["runs"] if r.get("table") == "budget" and r.get("units")
    ]  # fmt: skip
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot_table(index="iters", columns=["method", "setting"], values="undecided")
