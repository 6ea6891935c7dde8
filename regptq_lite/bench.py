"""``python -m regptq_lite bench``: the benchmark runs, written with their provenance.

For the tiny RetinaNet (``--model tiny_fasterrcnn``: the methods table and the ``LG_COST`` runs, in its own file):

- ``budget``: AP against iterations per unit (125 to 2000, each a doubling) for BRECQ, QDrop and
  Reg-PTQ at W2A4 and W4A4; it runs first, and fixes the bench budget (``converged_budget``);
- ``methods``: every method (and Reg-PTQ in its integer shift form) at W2A4, W3A3, W4A4, W4A8, plus
  naive W8A8; three seeds for every reconstruction method (``SEEDS``);
- ``ablation``: Reg-PTQ at W2A4 with parts changed (one at a time, or its two parts moved onto QDrop), three seeds each;
- ``filter``: the filter thresholds around the defaults (the paper's Table 2 question), one seed;
- ``step size``: the curve's methods at W2A4 with AdaRound's learning rate scaled up (``STEP_SIZES``);
- the weight MSE of LLAQ vs uniform quantizers and the cost table of the tiny detector and
  torchvision's R50-FPN detectors.

Each finished run is written at once with the commit it ran at, so an interrupted bench resumes where
it stopped: a run with the same settings and the same code fingerprint (``provenance.code_fingerprint``:
the computing modules, the checkpoints, torch) is reused, whichever table asked for it first and at
whichever commit it ran. Several processes can share one bench (one per core; ``bench_share``). The tables
are made by ``bench_tables``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from .atomic import write_atomic
from .bench_share import claim, locked, read_runs
from .cost import cost_table
from .detectors import DATA_DIR, load_checkpoint
from .fgic import THETA_C, THETA_I
from .llaq import LogAffineQuantizer, shift_gap
from .methods import METHODS, calibrate
from .progress import progress
from .provenance import code_fingerprint, command_line, git_commit, machine
from .quantizers import UniformQuantizer
from .scenes import SceneSet

RESULTS_DIR = DATA_DIR / "results"
DEFAULT_MODEL = "tiny_retinanet"
BITS = ((2, 4), (3, 3), (4, 4), (4, 8))
SEEDS = (0, 1, 2)
CALIB_IMAGES = 128
CURVE_ITERS = (125, 250, 500, 1000, 2000)
CURVE_METHODS = ("brecq", "qdrop", "regptq")
CURVE_BITS = ((2, 4), (4, 4))
CONVERGED_GAIN = 0.5  # AP: the budget is where doubling the iterations gains less than this
WAIT_SECONDS = 30  # how often a process with nothing left to claim looks for the others' results
FAST = {"iters": 3, "calib_images": 8, "seeds": (0,), "curve_iters": (2, 4)}  # a smoke run: one case a table

# Rows of the methods table: label -> (method, head weights, reconstruction overrides)
VARIANTS: dict[str, tuple[str, str | None, dict]] = {  # Reg-PTQ's rows besides its own
    "regptq (shift form)": ("regptq", None, {"llaq_form": "shift"}),
    "regptq + QDrop's drop": ("regptq", None, {"drop_prob": 0.5}),  # the paper is silent on it: measured
}
ROWS: dict[str, tuple[str, str | None, dict]] = {**{name: (name, None, {}) for name in METHODS}, **VARIANTS}
# Reg-PTQ with parts changed: label -> (head weights, overrides)
ABLATION: dict[str, tuple[str | None, dict]] = {
    "Reg-PTQ": (None, {}),
    "no global loss (L_H only)": (None, {"global_loss": False}),
    "plain local loss (no Fisher weights)": (None, {"fisher": False}),  # QDrop's L_H: is the weighting what costs?
    "on QDrop's loss and drop": (None, {"fisher": False, "drop_prob": 0.5}),  # L_G and LLAQ added to QDrop
    # QDrop with one of Reg-PTQ's two parts: with the row above and QDrop itself, a 2 x 2 of (L_G, LLAQ) on QDrop
    "QDrop + LLAQ head (no L_G)": (None, {"fisher": False, "drop_prob": 0.5, "global_loss": False}),
    "QDrop + L_G (uniform head)": ("uniform", {"fisher": False, "drop_prob": 0.5}),
    "no filter (theta_C = theta_I = 0)": (None, {"theta_c": 0.0, "theta_i": 0.0}),
    "uniform head (AdaRound)": ("uniform", {}),
    "LLAQ rounded to nearest": (None, {"llaq_rounding": "nearest"}),
}
ABLATION_BITS = (2, 4)
# Reg-PTQ's two parts on QDrop: (L_G, head weights) -> (table, row) of the run that has them
QDROP_PARTS = {
    ("no L_G", "uniform head"): ("methods", "qdrop"),
    ("no L_G", "LLAQ head"): ("ablation", "QDrop + LLAQ head (no L_G)"),
    ("with L_G", "uniform head"): ("ablation", "QDrop + L_G (uniform head)"),
    ("with L_G", "LLAQ head"): ("ablation", "on QDrop's loss and drop"),
}
# Is the budget a distance? Adam moves AdaRound's V by at most about lr per step, so the curve's methods at
# W2A4 (seed 0) again with lr x iterations as at 2000 x 1e-3, and 4x and 10x that (BRECQ's 20k x 1e-3).
STEP_SIZES = ((500, 4e-3), (500, 1.6e-2), (500, 4e-2), (2000, 1e-2))  # (iterations per unit, AdaRound lr)
# The learned roundings' Adam step in the methods table, the ablation and the filter grid (every method alike):
# at the budget's 2000 steps, lr x iterations = 20, the distance of AdaRound's and BRECQ's published 20k x 1e-3.
# PAPER.md's QDrop default (1e-3) leaves a third of the roundings undecided at 2000 (the step-size table).
WEIGHT_LR = 1e-2
FAST_ROWS = ("naive", "regptq", "no global loss (L_H only)", "0.0002/0.5", "brecq 3 x 0.004")
FILTER_GRID = ((5e-5, 0.1), (2e-4, 0.1), (1e-2, 0.1), (2e-4, 0.5), (0.0, 0.0))  # (theta_C, theta_I)
# Models other than the tiny RetinaNet: Reg-PTQ at W2A4 (every seed) with L_G's pass through the rest of the
# detector made cheaper. On the tiny Faster R-CNN that pass is most of Reg-PTQ's extra time over BRECQ (notebook
# 05). Each row does a quarter of the default's L_G work (ReconSettings: every 12 steps, on 8 images): a quarter
# as often, or as often on a quarter of the images. Does either cost AP? (table "cadence": its first row's name)
LG_COST: dict[str, dict] = {"L_G every 48 steps": {"global_every": 48}, "L_G on 2 images": {"global_images": 2}}


def _run(table: str, row: str, method: str, bits: tuple[int, int], seed: int, iters: int, **extra) -> dict:
    return {"table": table, "row": row, "method": method, "wbits": bits[0], "abits": bits[1], "seed": seed,
            "iters": iters, "head": extra.get("head"), "overrides": extra.get("overrides", {})}  # fmt: skip


def curve_plan(fast: bool = False) -> list[dict]:
    """The budget curve's runs (seed 0)."""
    if fast:
        return [_run("budget", "brecq", "brecq", CURVE_BITS[0], 0, n) for n in FAST["curve_iters"]]
    # each budget's methods one after the other, so that their wall times compare side by side
    return [_run("budget", m, m, bits, 0, n) for bits in CURVE_BITS for n in CURVE_ITERS for m in CURVE_METHODS]


def plan(iters: int, fast: bool = False, model: str = DEFAULT_MODEL) -> list[dict]:
    """Every run after the budget curve, at ``iters`` per unit, in the order that makes a half-finished bench most
    useful: first the step-size runs (``STEP_SIZES``), then the verdict (BRECQ, QDrop and Reg-PTQ with every seed at
    W2A4, Reg-PTQ's ``VARIANTS`` there with the first seed, then the verdict at W3A3), the ablation with the first
    seed, the verdict's methods at W4A4 and W4A8 with the first seed, the ablation's other seeds (the two-by-two's
    cells first), every row at every setting (W2A4 first) with the first seed, the other seeds at W2A4 and W3A3, the
    filter grid, and the other seeds at W4A4 and W4A8. Reconstruction runs outside the step-size table use
    ``WEIGHT_LR``. Models other than the tiny RetinaNet get the methods table only, and the ``LG_COST`` runs after
    the verdict at W2A4. ``fast``: one seed, and only the first run of each table and row at W2A4."""
    seeds = FAST["seeds"] if fast else SEEDS

    def tuned(method: str, overrides: dict) -> dict:
        return {"weight_lr": WEIGHT_LR, **overrides} if METHODS[method].reconstruct else overrides

    def methods_runs(bits: tuple[tuple[int, int], ...], chosen: tuple[int, ...], rows: tuple[str, ...] = tuple(ROWS)):
        return [
            _run("methods", label, method, b, seed, iters, head=head, overrides=tuned(method, overrides))
            for b in bits
            for label, (method, head, overrides) in ((label, ROWS[label]) for label in rows)
            for seed in (chosen if METHODS[method].reconstruct else chosen[:1] if 0 in chosen else ())
        ]

    steps = [(FAST["iters"], lr) for _, lr in STEP_SIZES[:1]] if fast else STEP_SIZES
    runs = [] if model != DEFAULT_MODEL else [
        _run("step size", f"{method} {n} x {lr:g}", method, ABLATION_BITS, 0, n, overrides={"weight_lr": lr})
        for n, lr in steps
        for method in CURVE_METHODS
    ]  # fmt: skip
    # the verdict first: the curve's methods with every seed, one seed after the other, at W2A4, Reg-PTQ's
    # variants there (do they change it?), then at W3A3
    runs += [r for seed in seeds for r in methods_runs(BITS[:1], (seed,), CURVE_METHODS)]
    runs += [] if model == DEFAULT_MODEL else [
        _run("cadence", label, "regptq", BITS[0], seed, iters, overrides=tuned("regptq", changed))
        for seed in seeds
        for label, changed in LG_COST.items()
    ]  # fmt: skip
    runs += methods_runs(BITS[:1], seeds[:1], tuple(VARIANTS))
    runs += [r for seed in seeds for r in methods_runs(BITS[1:2], (seed,), CURVE_METHODS)]
    # then what explains it (the ablation with the first seed) and the verdict's methods at W4A4 and W4A8
    ablation = [] if model != DEFAULT_MODEL else [
        _run("ablation", label, "regptq", ABLATION_BITS, seed, iters, head=head, overrides=tuned("regptq", changed))
        for seed in seeds
        for label, (head, changed) in ABLATION.items()
    ]  # fmt: skip
    runs += [r for r in ablation if r["seed"] == seeds[0]] + methods_runs(BITS[2:], seeds[:1], CURVE_METHODS)
    # the ablation's other seeds, seed after seed, the two-by-two's cells (``QDROP_PARTS``) first at each
    later = [r for r in ablation if r["seed"] != seeds[0]]
    parts = {row for table, row in QDROP_PARTS.values() if table == "ablation"}
    runs += sorted(later, key=lambda r: (r["seed"], r["row"] not in parts))
    runs += methods_runs(BITS, seeds[:1]) + [_run("methods", "naive", "naive", (8, 8), 0, iters)]
    runs += methods_runs(BITS[:2], seeds[1:])
    if model == DEFAULT_MODEL:
        for theta_c, theta_i in FILTER_GRID:
            changed = tuned("regptq", {"theta_c": theta_c, "theta_i": theta_i})
            runs.append(
                _run("filter", f"{theta_c:g}/{theta_i:g}", "regptq", ABLATION_BITS, 0, iters, overrides=changed)
            )
    runs += methods_runs(BITS[2:], seeds[1:])
    if fast:
        runs = [r for r in runs if (r["wbits"], r["abits"]) == ABLATION_BITS and r["row"] in FAST_ROWS]
    return list({json.dumps(r, sort_keys=True): r for r in runs}.values())  # a run asked for twice: its first place


def select(
    runs: list[dict], methods: list[str] | None = None, rows: list[str] | None = None, seeds: list[int] | None = None
) -> list[dict]:
    """The runs whose method, row and seed are among those given (``None``: any)."""
    wanted = {"method": methods, "row": rows, "seed": seeds}
    return [r for r in runs if all(chosen is None or r[field] in chosen for field, chosen in wanted.items())]


def planned_runs(model: str = DEFAULT_MODEL, fast: bool = False, iters: int | None = None) -> list[dict]:
    """Every run of ``model``'s bench: the budget curve's (the tiny RetinaNet's), then the plan's at ``iters`` per
    unit (the curve's largest budget where none is given)."""
    return (curve_plan(fast) if model == DEFAULT_MODEL else []) + plan(iters or CURVE_ITERS[-1], fast, model)


def key(spec: dict, calib_images: int) -> str:
    """The same computation gets the same key, whichever table asks for it."""
    method = spec["method"]
    overrides = spec["overrides"]
    canonical = {
        "method": method,
        "wbits": spec["wbits"],
        "abits": spec["abits"],
        "head": spec["head"] or METHODS[method].head_weight_kind,
        "seed": spec["seed"],
        "iters": spec["iters"] if METHODS[method].reconstruct else 0,
        "calib_images": calib_images,
        **({"theta_c": THETA_C, "theta_i": THETA_I} if method == "regptq" else {}),
        **overrides,
    }
    return json.dumps(canonical, sort_keys=True)


def place(run: dict) -> tuple:
    """Where a run sits in the tables: table, row, bits, seed, iterations (none without reconstruction)."""
    iters = run["iters"] if METHODS[run["method"]].reconstruct else 0
    return run["table"], run["row"], run["wbits"], run["abits"], run["seed"], iters


def converged_budget(curve: list[dict], gain: float = CONVERGED_GAIN) -> int:
    """The fewest iterations per unit at which doubling gains less than ``gain`` AP for every
    (method, bits) of the curve, else the curve's largest budget."""
    iters = sorted({r["iters"] for r in curve})
    ap = {(r["method"], r["wbits"], r["abits"], r["iters"]): r["AP"] for r in curve}
    series = {(r["method"], r["wbits"], r["abits"]) for r in curve}
    for low, high in zip(iters, iters[1:]):
        gains = [ap.get((*s, high), float("inf")) - ap.get((*s, low), float("-inf")) for s in series]
        if all(g < gain for g in gains):
            return low
    return iters[-1]


def _laplace(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=g) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs())


def quantizer_mse(seed: int = 0, shape: tuple[int, ...] = (64, 64, 3, 3)) -> list[dict]:
    """Per-channel weight MSE of MSE-initialised LLAQ vs MSE-searched uniform, by distribution and bits."""
    g = torch.Generator().manual_seed(seed)
    weights = {"laplace": _laplace(shape, seed), "uniform": torch.rand(shape, generator=g) * 2 - 1}
    rows = []
    for dist, w in weights.items():
        for bits in (2, 3, 4):
            row = {"distribution": dist, "bits": bits}
            for name, q in (("uniform", UniformQuantizer(bits, 0, "mse")), ("llaq", LogAffineQuantizer(bits))):
                q.init(w)
                with torch.no_grad():
                    row[f"mse_{name}"] = (q(w) - w).pow(2).mean().item()
            row["mse_llaq_shift"] = shift_gap(w, bits)["mse_shift"]
            rows.append(row)
    return rows


def torchvision_costs() -> dict[str, list[dict]]:
    """Cost tables of torchvision's R50-FPN detectors (random weights) on one 800 x 1333 image."""
    image = [torch.rand(3, 800, 1333)]
    out = {}
    for name in ("retinanet_resnet50_fpn", "fasterrcnn_resnet50_fpn"):
        torch.manual_seed(0)
        model = torchvision.models.detection.__dict__[name](weights=None, weights_backbone=None)
        out[name] = cost_table(model, image)
    return out


def result_name(model: str = DEFAULT_MODEL) -> str:
    """The results file of a model's bench: ``bench.json`` for the tiny RetinaNet, else ``bench_<model>.json``."""
    return "bench.json" if model == DEFAULT_MODEL else f"bench_{model}.json"


def load(path: Path | None = None) -> dict:
    """A committed benchmark result (default ``data/results/bench.json``)."""
    path = Path(path) if path is not None else RESULTS_DIR / result_name()
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path}; run python -m regptq_lite bench")
    return json.loads(path.read_text())


UNIT_FIELDS = ("unit", "seconds", "undecided", "global_scale", "first_local", "last_local", "last_global", "llaq_da")


def _calibrate(spec: dict, calib_images: int, model: str) -> dict:
    """One run of the bench: its result without the quantized model, units reduced to their diagnostics."""
    _, run = calibrate(
        spec["method"],
        spec["wbits"],
        spec["abits"],
        iters=spec["iters"],
        calib_images=calib_images,
        seed=spec["seed"],
        model_name=model,
        head_weight_kind=spec["head"],
        overrides=spec["overrides"],
    )
    run["units"] = [{k: u[k] for k in UNIT_FIELDS if k in u} for u in run.get("units", [])]
    return run


def run_bench(
    fast: bool = False,
    out_dir: Path | None = None,
    methods: list[str] | None = None,
    model: str = DEFAULT_MODEL,
    after_run: Callable[[dict], None] | None = None,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
) -> dict:
    """Run (or resume) every benchmark of ``model`` (only the runs of ``methods``, ``rows`` and ``seeds``, if
    given); write its JSON (``result_name``) to ``out_dir`` after every run (then call ``after_run`` with the
    result so far), and return it."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    calib_images = FAST["calib_images"] if fast else CALIB_IMAGES
    commit, code = git_commit(), code_fingerprint()
    path = out_dir / result_name(model)
    done = {r["key"]: r for r in read_runs(path, fast, code)}  # from this process or any other sharing the file
    result = {
        "command": command_line(),
        "commit": commit,
        "code": code,
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "model": model,
        "fast": fast,
        "calib_images": calib_images,
        "seeds": list(FAST["seeds"] if fast else SEEDS),
        "iters": None,  # the budget, once the curve has fixed it
        "selection": {"methods": methods, "rows": rows, "seeds": seeds},  # None: every one (``select``)
        "runs": [],
        "quantizer_mse": quantizer_mse(),
        "cost": {model: cost_table(load_checkpoint(model)[0], SceneSet("val", size=1).images())},
    }
    if not fast and model == DEFAULT_MODEL:
        result["cost"].update(torchvision_costs())

    scheduled: list[dict] = []  # every run asked for so far, in plan order

    def refresh() -> list[dict]:
        """The runs in the file now (this process's and the others'), added to ``done``."""
        written = read_runs(path, fast, code)
        done.update((r["key"], r) for r in written)
        return written

    def save() -> None:
        """Merge what other processes wrote, write the results, tell ``after_run``."""
        with locked(path):
            written = refresh()
            result["runs"] = [{**done[k], "table": s["table"], "row": s["row"]}
                              for s in scheduled if (k := key(s, calib_images)) in done]  # fmt: skip
            # others' plans are kept; a run that fills a place of this plan under other settings is an earlier plan's
            places = {place(s) for s in scheduled}
            result["runs"] += [r for r in written if place(r) not in places]
            write_atomic(path, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
            if after_run is not None:
                after_run(result)

    def execute(specs: list[dict], desc: str) -> list[dict]:
        """Every run of ``specs``: reused, computed here, or, while another process holds it, waited for."""
        scheduled.extend(specs)
        keys = [key(s, calib_images) for s in specs]
        bar = progress(None, total=len(specs), desc=desc, unit="run")
        while True:
            refresh()
            bar.update(sum(k in done for k in keys) - bar.n)
            todo = [(spec, k) for spec, k in zip(specs, keys) if k not in done]
            if not todo:
                break
            for spec, k in todo:
                with claim(path, f"{code} {k}") as mine:
                    if mine and k not in {r["key"] for r in refresh()}:
                        done[k] = {**_calibrate(spec, calib_images, model), "key": k, "commit": commit, "code": code,
                                   "machine": result["machine"], "threads": result["threads"]}  # fmt: skip
                        save()
                        break
            else:
                time.sleep(WAIT_SECONDS)  # every run left is another process's: wait for its result
        bar.close()
        save()
        return [{**done[k], "table": s["table"], "row": s["row"]} for s, k in zip(specs, keys)]

    curve = select(curve_plan(fast), methods, rows, seeds)
    if model == DEFAULT_MODEL and curve:
        result["iters"] = converged_budget(execute(curve, "budget curve"))
        save()  # the budget, before the first run of the plan ends
    else:
        result["iters"] = FAST["iters"] if fast else decided_budget()
    execute(select(plan(result["iters"], fast, model), methods, rows, seeds), f"bench {model}")
    return result


def decided_budget() -> int:
    """The budget that the tiny RetinaNet's budget curve fixed (its committed bench), else the largest."""
    path = RESULTS_DIR / result_name()
    fixed = json.loads(path.read_text()).get("iters") if path.is_file() else None  # None: the curve is unfinished
    return fixed or CURVE_ITERS[-1]
