"""``python -m regptq_lite bench``: the benchmark figures, written with their provenance.

- every method x {W2A4, W3A3, W4A4, W4A8} on the tiny RetinaNet, fully quantized, plus naive W8A8
  (``--model tiny_fasterrcnn``: the same table for the tiny Faster R-CNN, in its own file);
- the paper's Table 2 analogue: Reg-PTQ at W2A4 over theta_C x theta_I;
- the Table 3 analogue: Reg-PTQ with a uniform vs an LLAQ head at W2A4, W3A3, W4A4;
- an ablation of Reg-PTQ at W2A4 and W3A3: without the global loss, without the filter, LLAQ lr x10;
- weight-quantization MSE of LLAQ vs an MSE-searched uniform quantizer on Laplace / uniform weights;
- the cost table (bit-weighted FLOPs, storage) of the tiny RetinaNet and torchvision's R50-FPN detectors.

Each finished run is written at once, so an interrupted bench resumes where it stopped
(runs with the same settings at the same commit are reused).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
import torchvision

from .atomic import write_atomic
from .cost import cost_table
from .detectors import DATA_DIR, load_checkpoint
from .fgic import THETA_C as FGIC_THETA_C
from .fgic import THETA_I as FGIC_THETA_I
from .methods import METHODS, calibrate
from .progress import progress
from .provenance import command_line, git_commit, machine
from .quantizers import LogAffineQuantizer, UniformQuantizer, shift_gap
from .scenes import SceneSet

RESULTS_DIR = DATA_DIR / "results"
BITS = ((2, 4), (3, 3), (4, 4), (4, 8))
THETA_C = (0.0, 5e-5, 2e-4, 1e-3, 1e-2)
THETA_I = (0.0, 0.1, 0.5)
FULL = {"iters": 100, "calib_images": 128}
FAST = {"iters": 5, "calib_images": 16}
ABLATION = {
    "local loss only": {"global_loss": False},
    "global loss, no filter": {"theta_c": 0.0, "theta_i": 0.0},
    "LLAQ lr x10": {"llaq_lr": 1e-2},
}


DEFAULT_MODEL = "tiny_retinanet"


def plan(fast: bool, methods: list[str] | None = None, model: str = DEFAULT_MODEL) -> list[dict]:
    """Every run of the bench (only those of ``methods``, if given): table, method, bits, overrides.
    Models other than the tiny RetinaNet get the methods table only."""
    runs = [{"table": "methods", "method": m, "wbits": w, "abits": a} for m in METHODS for w, a in BITS]
    runs.append({"table": "methods", "method": "naive", "wbits": 8, "abits": 8})
    if model == DEFAULT_MODEL:
        runs += _component_runs()
    if methods is not None:
        runs = [r for r in runs if r["method"] in methods]
    return runs[:6] if fast else runs


def _component_runs() -> list[dict]:
    """Reg-PTQ's parts, one at a time: the head quantizer, the ablation and the filter grid."""
    runs = []
    for w, a in BITS[:3]:
        for kind in ("uniform", "llaq"):
            runs.append({"table": "head_quantizer", "method": "regptq", "wbits": w, "abits": a, "head": kind})
    for w, a in BITS[:2]:
        for variant, overrides in ABLATION.items():
            runs.append(
                {
                    "table": "ablation",
                    "method": "regptq",
                    "wbits": w,
                    "abits": a,
                    "variant": variant,
                    "overrides": overrides,
                }
            )
    hardest = BITS[0]
    for tc in THETA_C:
        for ti in THETA_I:
            runs.append(
                {
                    "table": "filter",
                    "method": "regptq",
                    "wbits": hardest[0],
                    "abits": hardest[1],
                    "overrides": {"theta_c": tc, "theta_i": ti},
                }
            )
    return runs


def ablation(runs: list[dict]) -> dict[str, dict[str, dict | None]]:
    """Reg-PTQ with one component changed at a time: row -> W/A setting -> run (None until it ran)."""
    rows = {
        "BRECQ (local loss, uniform head)": lambda r: r["table"] == "methods" and r["method"] == "brecq",
        "local loss only (LLAQ head)": lambda r: r.get("variant") == "local loss only",
        "global loss, no filter": lambda r: r.get("variant") == "global loss, no filter",
        "Reg-PTQ (global loss + filter, LLAQ head)": lambda r: r["table"] == "methods" and r["method"] == "regptq",
        "Reg-PTQ with a uniform head": lambda r: r["table"] == "head_quantizer" and r["head_weights"] == "uniform",
        "Reg-PTQ, LLAQ lr x10": lambda r: r.get("variant") == "LLAQ lr x10",
    }
    settings = [f"W{w}A{a}" for w, a in BITS[:2]]
    return {
        label: {s: next((r for r in runs if f"W{r['wbits']}A{r['abits']}" == s and test(r)), None) for s in settings}
        for label, test in rows.items()
    }


def _key(spec: dict, budget: dict) -> str:
    """The same computation gets the same key, whichever table asks for it."""
    overrides = spec.get("overrides", {})
    canonical = {
        "method": spec["method"],
        "wbits": spec["wbits"],
        "abits": spec["abits"],
        "head": spec.get("head") or METHODS[spec["method"]].head_weight_kind,
        "theta_c": overrides.get("theta_c", FGIC_THETA_C),
        "theta_i": overrides.get("theta_i", FGIC_THETA_I),
        **{k: v for k, v in overrides.items() if k not in ("theta_c", "theta_i")},
        **budget,
    }
    return json.dumps(canonical, sort_keys=True)


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


def _grid(rows: list, cols: list, cell) -> list[str]:
    """A markdown grid; ``cell(row, col)`` gives the run or None."""
    out = ["| | " + " | ".join(str(c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        cells = [cell(r, c) for c in cols]
        out.append(f"| {r} | " + " | ".join("-" if x is None else f"{x['AP']:.1f}" for x in cells) + " |")
    return out


def _component_sections(runs: list[dict]) -> list[str]:
    """The filter grid, the head quantizer and the ablation tables (tiny RetinaNet only)."""
    lines = ["", f"## Filter thresholds (Reg-PTQ, W{BITS[0][0]}A{BITS[0][1]}): rows theta_C, columns theta_I", ""]

    def filter_cell(tc, ti):
        return next(
            (
                r
                for r in runs
                if r["table"] == "filter" and r["settings"]["theta_c"] == tc and r["settings"]["theta_i"] == ti
            ),
            None,
        )

    lines += _grid(list(THETA_C), list(THETA_I), filter_cell)
    lines += ["", "## Head weight quantizer (Reg-PTQ)", ""]

    def head_cell(kind, setting):
        return next(
            (
                r
                for r in runs
                if r["table"] == "head_quantizer"
                and r["head_weights"] == kind
                and f"W{r['wbits']}A{r['abits']}" == setting
            ),
            None,
        )

    lines += _grid(["uniform", "llaq"], [f"W{w}A{a}" for w, a in BITS[:3]], head_cell)
    table = ablation(runs)
    lines += ["", "## Ablation (Reg-PTQ with one component changed)", ""]
    lines += _grid(list(table), [f"W{w}A{a}" for w, a in BITS[:2]], lambda row, setting: table[row][setting])
    return lines


def markdown(result: dict) -> str:
    """The benchmark as markdown tables (AP on the 0-100 scale, 500 validation scenes)."""
    runs = result["runs"]
    fp = runs[0]["fp_AP"] if runs else float("nan")
    budget = result.get("budget", {})
    model = result.get("model", DEFAULT_MODEL)
    planned = len(plan(result.get("fast", False), model=model))
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit: `{result['commit']}`  ",
        f"Machine: {result['machine']}  ",
        f"Budget: {budget.get('iters')} iterations per unit, {budget.get('calib_images')} calibration images "
        "(the paper: 2k iterations per unit, batch 256).  ",
        f"Runs: {len(runs)} of the {planned} planned"
        + ("." if len(runs) >= planned else " (an unfinished bench: the rest is blank)."),
        "",
        f"## Methods x bits, {model}, full quantization (FP AP {fp:.1f})",
        "",
    ]
    settings = [f"W{w}A{a}" for w, a in BITS] + ["W8A8"]

    def method_cell(method, setting):
        return next(
            (
                r
                for r in runs
                if r["table"] == "methods" and r["method"] == method and f"W{r['wbits']}A{r['abits']}" == setting
            ),
            None,
        )

    lines += _grid(list(METHODS), settings, method_cell)
    if model == DEFAULT_MODEL:
        lines += _component_sections(runs)
    lines += [
        "",
        "## Every run",
        "",
        "| table | method | W/A | head | changed | AP | AP50 | AP75 | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        changed = r.get("variant") or "-"
        if r["table"] == "filter":
            changed = f"theta_C {r['settings']['theta_c']:g}, theta_I {r['settings']['theta_i']:g}"
        lines.append(
            f"| {r['table']} | {r['method']} | W{r['wbits']}A{r['abits']} | {r['head_weights']} | {changed}"
            f" | {r['AP']:.1f} | {r['AP50']:.1f} | {r['AP75']:.1f} | {r['seconds']:.0f} |"
        )
    lines += ["", "## Weight MSE: LLAQ vs MSE-searched uniform", "", "| weights | bits | uniform | LLAQ | LLAQ shift |"]
    lines.append("|---|---|---|---|---|")
    for r in result["quantizer_mse"]:
        lines.append(
            f"| {r['distribution']} | {r['bits']} | {r['mse_uniform']:.4g} | {r['mse_llaq']:.4g}"
            f" | {r['mse_llaq_shift']:.4g} |"
        )
    for model, rows in result["cost"].items():
        lines += [
            "",
            f"## Cost: {model}",
            "",
            "| setting | regime | GFLOPs | bit-GFLOPs | saving | storage MB | saving |",
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for r in rows:
            lines.append(
                f"| {r['setting']} | {r['regime']} | {r['GFLOPs']:.2f} | {r['bit_GFLOPs']:.2f}"
                f" | {r['compute_saving']:.2f}x | {r['storage_MB']:.2f} | {r['storage_saving']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def result_name(model: str = DEFAULT_MODEL) -> str:
    """The results file of a model's bench: ``bench.json`` for the tiny RetinaNet, else ``bench_<model>.json``."""
    return "bench.json" if model == DEFAULT_MODEL else f"bench_{model}.json"


def load(path: Path | None = None) -> dict:
    """A committed benchmark result (default ``data/results/bench.json``)."""
    path = Path(path) if path is not None else RESULTS_DIR / result_name()
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path}; run python -m regptq_lite bench")
    return json.loads(path.read_text())


def frames(result: dict) -> dict[str, pd.DataFrame]:
    """The benchmark's tables as DataFrames of AP: ``methods`` (method x W/A), ``filter`` (theta_C x
    theta_I), ``head_quantizer`` (kind x W/A), ``ablation`` (variant x W/A) and ``runs`` (every run, all
    fields that are not nested)."""
    runs = pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, dict | list)} for r in result["runs"]])
    runs["setting"] = "W" + runs["wbits"].astype(str) + "A" + runs["abits"].astype(str)
    settings = [r.get("settings", {}) for r in result["runs"]]
    runs["theta_c"] = [s.get("theta_c") for s in settings]
    runs["theta_i"] = [s.get("theta_i") for s in settings]
    order = [f"W{w}A{a}" for w, a in BITS] + ["W8A8"]

    def table(rows: pd.DataFrame, index: str, columns: str) -> pd.DataFrame:
        grid = rows.pivot_table(index=index, columns=columns, values="AP", aggfunc="first")
        return grid.reindex(columns=[c for c in order if c in grid.columns] if columns == "setting" else grid.columns)

    return {
        "methods": table(runs[runs.table == "methods"], "method", "setting").reindex(
            [m for m in METHODS if m in set(runs.method)]
        ),
        "filter": table(runs[runs.table == "filter"], "theta_c", "theta_i"),
        "head_quantizer": table(runs[runs.table == "head_quantizer"], "head_weights", "setting"),
        "ablation": pd.DataFrame.from_dict(
            {
                row: {s: None if r is None else r["AP"] for s, r in cells.items()}
                for row, cells in ablation(result["runs"]).items()
            },
            orient="index",
        ),
        "runs": runs,
    }


def gap_to_best_baseline(methods: pd.DataFrame) -> pd.DataFrame:
    """Per setting where Reg-PTQ ran: its AP, the best other method's AP and the difference (empty
    until both ran)."""
    if "regptq" not in methods.index or len(methods.index) < 2:
        return pd.DataFrame(columns=["Reg-PTQ", "best baseline", "which", "gap"])
    methods = methods.loc[:, methods.loc["regptq"].notna()]
    others = methods.drop(index="regptq")
    return pd.DataFrame(
        {
            "Reg-PTQ": methods.loc["regptq"],
            "best baseline": others.max(),
            "which": others.idxmax(),
            "gap": methods.loc["regptq"] - others.max(),
        }
    )


def run_bench(
    fast: bool = False, out_dir: Path | None = None, methods: list[str] | None = None, model: str = DEFAULT_MODEL
) -> dict:
    """Run (or resume) every benchmark of ``model``; write its JSON and markdown (``result_name``) to ``out_dir``."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = FAST if fast else FULL
    commit = git_commit()
    path = out_dir / result_name(model)
    done: dict[str, dict] = {}
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("commit") == commit:
            done = {r["key"]: r for r in previous.get("runs", []) if "key" in r}
    result = {
        "command": command_line(),
        "commit": commit,
        "machine": machine(),
        "model": model,
        "fast": fast,
        "budget": budget,
        "runs": [],
        "quantizer_mse": quantizer_mse(),
        "cost": {},
    }
    result["cost"][model] = cost_table(load_checkpoint(model)[0], SceneSet("val", size=1).images())
    if not fast and model == DEFAULT_MODEL:
        result["cost"].update(torchvision_costs())
    for spec in progress(plan(fast, methods, model), desc=f"bench {model}", unit="run"):
        key = _key(spec, budget)
        if key not in done:
            _, run = calibrate(
                spec["method"],
                spec["wbits"],
                spec["abits"],
                iters=budget["iters"],
                calib_images=budget["calib_images"],
                model_name=model,
                head_weight_kind=spec.get("head"),
                overrides=spec.get("overrides"),
            )
            run.pop("units", None)
            done[key] = {**run, "key": key}
        result["runs"].append({**done[key], "table": spec["table"], "variant": spec.get("variant")})
        write_atomic(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    write_atomic(path.with_suffix(".md"), lambda tmp: tmp.write_text(markdown(result)))
    return result
