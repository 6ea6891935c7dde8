import json
import re
import shutil
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
from cli_run import assert_clean_error, run_in_process

from regptq_lite import bench, bench_share, provenance, viz
from regptq_lite.bench import (
    ABLATION,
    BITS,
    CALIB_IMAGES,
    CURVE_ITERS,
    CURVE_METHODS,
    FAST,
    FILTER_GRID,
    LG_COST,
    QDROP_PARTS,
    ROWS,
    SEEDS,
    STEP_SIZES,
    VARIANTS,
    WEIGHT_LR,
    converged_budget,
    curve_plan,
    key,
    plan,
    planned_runs,
    result_name,
    select,
)
from regptq_lite.bench_tables import (
    ablation_table,
    against,
    cadence_table,
    cadence_timing,
    filter_sentence,
    filter_table,
    findings,
    leads,
    markdown,
    methods_table,
    qdrop_parts,
    qdrop_parts_sentence,
    relative_spread,
    reruns,
    seconds_left,
    step_size_distance,
    step_size_table,
    steps_gain_at_longest,
    still_to_run,
    timing,
    unit_seconds,
    verdict,
)
from regptq_lite.outputs import check_bench_out
from regptq_lite.recon import ReconSettings


def test_plan_covers_every_table_and_shares_identical_runs():
    runs = plan(500)
    methods = [r for r in runs if r["table"] == "methods"]
    reconstructing = [r for r in ROWS if ROWS[r][0] != "naive"]
    assert len(methods) == len(reconstructing) * len(BITS) * len(SEEDS) + len(BITS) + 1  # + naive, naive W8A8
    assert len([r for r in runs if r["table"] == "ablation"]) == len(ABLATION) * len(SEEDS)
    assert len([r for r in runs if r["table"] == "filter"]) == len(FILTER_GRID)
    keys = {key(r, CALIB_IMAGES) for r in runs}
    # the ablation's Reg-PTQ rows are the methods table's Reg-PTQ W2A4 runs; the filter grid's default
    # cell is one of them, and its (0, 0) cell is the ablation's "no filter" seed 0
    # the step-size runs differ from all others by their learning rate
    steps = [r for r in runs if r["table"] == "step size"]
    assert runs[: len(steps)] == steps and len(steps) == len(STEP_SIZES) * len(CURVE_METHODS)
    assert {(r["iters"], r["overrides"]["weight_lr"]) for r in steps} == set(STEP_SIZES)
    assert len(keys) == len(runs) - len(SEEDS) - 2
    assert all(r["iters"] == 500 for r in runs if r["table"] != "step size")
    # then the verdict: the curve's methods, seed after seed, at W2A4, Reg-PTQ's variants there, then W3A3
    verdict_runs = runs[len(steps) : len(steps) + 2 * len(SEEDS) * len(CURVE_METHODS) + len(VARIANTS)]
    expected = [(m, *BITS[0], seed) for seed in SEEDS for m in CURVE_METHODS] + [(v, *BITS[0], 0) for v in VARIANTS]
    expected += [(m, *BITS[1], seed) for seed in SEEDS for m in CURVE_METHODS]
    assert [(r["row"], r["wbits"], r["abits"], r["seed"]) for r in verdict_runs] == expected
    # every reconstruction outside the step-size table at the bench's step, naive without one
    assert all(
        ("weight_lr" in r["overrides"]) == (r["method"] != "naive")
        and r["overrides"].get("weight_lr", WEIGHT_LR) == WEIGHT_LR
        for r in runs
        if r["table"] != "step size"
    )


def test_the_ablations_later_seeds_run_seed_after_seed_the_two_by_twos_cells_first():
    parts = [row for table, row in QDROP_PARTS.values() if table == "ablation"]
    later = [(r["seed"], r["row"]) for r in plan(500) if r["table"] == "ablation" and r["seed"] != SEEDS[0]]
    order = [row for row in ABLATION if row in parts] + [row for row in ABLATION if row not in parts]
    assert later == [(seed, row) for seed in SEEDS[1:] for row in order] and order[0] != next(iter(ABLATION))


def test_the_curve_runs_each_budgets_methods_one_after_the_other():
    curve = curve_plan()
    assert len(curve) == len(CURVE_ITERS) * len(CURVE_METHODS) * 2
    assert [r["method"] for r in curve[:3]] == list(CURVE_METHODS) and len({r["iters"] for r in curve[:3]}) == 1


def _curve(gains: dict[str, list[float]]) -> list[dict]:
    runs = []
    for method, aps in gains.items():
        runs += [{"method": method, "wbits": 2, "abits": 4, "iters": n, "AP": ap} for n, ap in zip(CURVE_ITERS, aps)]
    return runs


def test_budget_is_where_doubling_gains_less_than_half_an_ap_for_every_method():
    assert converged_budget(_curve({"a": [10, 15, 18, 18.3, 18.5], "b": [10, 12, 12.2, 12.4, 12.5]})) == 500
    assert converged_budget(_curve({"a": [10, 15, 18, 18.3, 18.5], "b": [10, 12, 13, 14, 15]})) == CURVE_ITERS[-1]
    assert converged_budget(_curve({"a": [10, 10.1, 18, 19, 20]})) == CURVE_ITERS[0]  # the first doubling decides


def stats(n, mean, low, high):
    return pd.Series({"n": n, "mean": mean, "min": low, "max": high})


def test_the_decided_budget_is_the_curves_else_the_largest(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    assert bench.decided_budget() == CURVE_ITERS[-1]  # no bench yet
    (tmp_path / "bench.json").write_text(json.dumps({"iters": None, "runs": []}))
    assert bench.decided_budget() == CURVE_ITERS[-1]  # an unfinished curve
    (tmp_path / "bench.json").write_text(json.dumps({"iters": 500, "runs": []}))
    assert bench.decided_budget() == 500


def test_a_lead_must_exceed_the_seed_spread_of_both_rows():
    assert verdict(stats(3, 30.0, 29.5, 30.5), stats(3, 28.0, 27.8, 28.2)) == "lead"
    assert verdict(stats(3, 30.0, 29.0, 31.0), stats(3, 28.5, 28.4, 28.6)) == "within the seed spread"
    assert verdict(stats(3, 25.0, 24.9, 25.1), stats(3, 28.0, 27.0, 29.0)) == "behind"
    assert verdict(stats(1, 40.0, 40.0, 40.0), stats(3, 28.0, 27.9, 28.1)) == "not enough seeds"


def _run(table, row, wbits, abits, seed, ap, iters=500, seconds=10.0, **extra):
    method = ROWS[row][0] if row in ROWS else "regptq"
    return {"table": table, "row": row, "method": method, "wbits": wbits, "abits": abits, "seed": seed, "iters": iters,
            "AP": ap, "AP50": ap + 20, "AP75": ap, "fp_AP": 70.0, "seconds": seconds + 5,
            "calibration_seconds": seconds, "commit": "abc", **extra}  # fmt: skip


def _result(runs):
    return {"command": "python -m regptq_lite bench", "commit": "abc", "code": "f00", "machine": "test",
            "model": "tiny_retinanet", "fast": False, "calib_images": 128, "seeds": [0, 1, 2], "iters": 500,
            "runs": runs, "quantizer_mse": [], "cost": {}}  # fmt: skip


def test_tables_show_mean_and_spread_and_the_verdict_against_the_best_baseline():
    runs = [_run("methods", "brecq", 2, 4, s, ap) for s, ap in enumerate((30.0, 30.4, 29.8))]
    runs += [_run("methods", "qdrop", 2, 4, s, ap) for s, ap in enumerate((31.0, 31.2, 30.9))]
    runs += [_run("methods", "regptq", 2, 4, s, ap, seconds=13.0) for s, ap in enumerate((33.0, 33.5, 32.8))]
    runs += [_run("methods", "regptq (shift form)", 2, 4, s, 40.0) for s in range(3)]  # not a baseline
    runs += [_run("methods", "naive", 2, 4, 0, 5.0)]
    result = _result(runs)
    assert methods_table(result).loc["regptq", "W2A4"] == "33.1 (32.8-33.5)"
    assert methods_table(result).loc["naive", "W2A4"] == "5.0"
    row = leads(result).iloc[0]
    assert row["best baseline"] == "qdrop" and row["verdict"] == "lead" and row["gap"] == pytest.approx(2.067, abs=1e-3)
    ratios = timing(result)
    assert len(ratios) == 3 and (ratios["ratio"] == 1.3).all()
    curve = [_run("budget", m, 2, 4, 0, 30.0, seconds=s) for m, s in (("brecq", 10.0), ("regptq", 12.0))]
    assert timing(_result(runs + curve))["ratio"].tolist() == [1.2]  # the curve's pair, run one after the other
    # runs made in different sessions (another commit, or another machine) are not timed against each other
    later = [{**r, "seed": 3, "commit": "def"} for r in curve] + [{**curve[0], "seed": 4, "machine": "cpu B"}]
    assert timing(_result(runs + curve + later + [{**curve[1], "seed": 4}]))["seed"].tolist() == [0, 3]


def test_unit_seconds_pair_each_unit_of_reg_ptq_with_brecqs_at_the_same_setting_and_seed():
    def units(*seconds):
        return [{"unit": name, "seconds": s} for name, s in zip(("stem", "head"), seconds)]

    runs = [_run("methods", "brecq", 2, 4, 0, 30.0, units=units(10.0, 4.0)),
            _run("methods", "regptq", 2, 4, 0, 31.0, units=units(16.0, 5.0)),
            _run("methods", "regptq", 2, 4, 1, 31.0, units=units(99.0, 99.0)),  # BRECQ at seed 1 only elsewhere:
            _run("methods", "brecq", 2, 4, 1, 30.0, units=units(1.0, 1.0), commit="def"),  # left out
            _run("methods", "qdrop", 2, 4, 0, 31.0, units=units(50.0, 50.0))]  # fmt: skip
    table = unit_seconds(_result(runs))
    assert table["unit"].tolist() == ["stem", "head"]
    assert table["extra s"].tolist() == [6.0, 1.0] and table["regptq s"].tolist() == [16.0, 5.0]
    assert unit_seconds(_result([_run("methods", "brecq", 2, 4, 0, 30.0)])).empty
    spread = relative_spread(table)  # brecq s 10, 4 (mean 7); extra s 6, 1 (mean 3.5)
    assert spread["brecq s"] == pytest.approx(18**0.5 / 7) and spread["extra s"] == pytest.approx(12.5**0.5 / 3.5)
    cheaper = [_run("cadence", "L_G on 2 images", 2, 4, 0, 31.0, units=units(12.0, 4.5))]
    assert unit_seconds(_result(runs + cheaper), "L_G on 2 images")["extra s"].tolist() == [2.0, 0.5]


def test_the_cadence_table_sets_each_cheaper_l_g_beside_the_default_with_the_work_it_saves():
    runs = [_run("methods", "brecq", 2, 4, s, 30.0) for s in range(3)]
    runs += [_run("methods", "regptq", 2, 4, s, 40.0 + s) for s in range(3)]
    runs += [_run("methods", "regptq", 4, 4, 0, 60.0)]  # another setting: not in the table
    base = ReconSettings()
    every48 = {"settings": {"global_every": 48, "global_images": base.global_images}}  # as its runs record them
    runs += [_run("cadence", "L_G every 48 steps", 2, 4, s, 36.0 + s / 10, **every48) for s in range(3)]
    two = {"settings": {"global_every": base.global_every, "global_images": 2}}
    runs += [_run("cadence", "L_G on 2 images", 2, 4, 0, 40.5, **two)]  # one seed so far
    table = cadence_table(_result(runs)).set_index("row")
    default = f"L_G every {base.global_every} steps on {base.global_images} images (default)"
    assert table.index.tolist() == [default, "L_G every 48 steps", "L_G on 2 images"]
    assert table.loc[default, "AP"] == "41.0 (40.0-42.0)" and table.loc[default, "verdict"] == "reference"
    assert table.loc["L_G every 48 steps", "AP"] == "36.1 (36.0-36.2)"
    assert table.loc["L_G every 48 steps", "verdict"] == "behind"
    assert table.loc["L_G on 2 images", "verdict"] == "not enough seeds"
    passes = -(-500 // base.global_every)  # 500 iterations
    assert table["passes per unit"].tolist() == [passes, 11, passes]
    assert table["images per pass"].tolist() == [base.global_images, base.global_images, 2]
    assert table["images per unit"].tolist() == [passes * base.global_images, 11 * base.global_images, passes * 2]
    assert cadence_table(_result(runs[:7])).empty  # no cadence run yet
    renamed = [{**runs[-1], "row": "a row no longer planned", "settings": {"global_every": 6, "global_images": 3}}]
    assert cadence_table(_result(runs + renamed)).iloc[-1, 3:].tolist() == [84, 3, 252]  # from its recorded settings
    work = f"{11 * base.global_images} images through L_G per unit against {passes * base.global_images}"
    sentence = f"L_G every 48 steps: 36.1 (36.0-36.2) AP against {default} 41.0 (40.0-42.0), behind ({work})."
    assert sentence in findings(_result(runs))


def test_a_cheaper_l_g_is_timed_against_brecq_and_shown_without_a_default_run():
    # a quiet pair (``bench --rows brecq "L_G on 2 images" --seeds 0``): no default Reg-PTQ run to compare AP with
    runs = [_run("methods", "brecq", 2, 4, 0, 30.0, seconds=10.0), _run("methods", "brecq", 2, 4, 1, 30.0)]
    runs += [_run("cadence", "L_G on 2 images", 2, 4, 0, 40.5, seconds=14.0)]
    result = _result(runs)
    table = cadence_table(result)
    assert table["row"].tolist() == ["L_G on 2 images"] and table["verdict"].tolist() == ["no default run"]
    times = cadence_timing(result)
    assert times[["row", "seed", "Reg-PTQ s", "brecq s"]].values.tolist() == [["L_G on 2 images", 0, 14.0, 10.0]]
    assert times["ratio"].tolist() == [pytest.approx(1.4)]
    assert any(line.startswith("L_G on 2 images: calibration took 1.40x BRECQ's wall time (one pair; ")
               for line in findings(result))  # fmt: skip
    assert timing(result).empty  # the default row's own timing has no Reg-PTQ run
    assert "| L_G on 2 images | W2A4 | 0 | 500 | 14.00 | 10.00 | 1.40 |" in markdown(
        {**result, "model": "tiny_fasterrcnn"}
    )
    assert cadence_timing(_result(runs[:2])).empty
    elsewhere = _result([{**r, "commit": "def"} if r["row"] == "brecq" else r for r in runs])
    assert cadence_timing(elsewhere).empty and "a quiet pair each has its own timing file" in markdown(
        {**elsewhere, "model": "tiny_fasterrcnn"}
    )


def test_runs_are_chosen_by_method_row_and_seed():
    runs = planned_runs("tiny_fasterrcnn")
    assert runs == plan(CURVE_ITERS[-1], model="tiny_fasterrcnn")  # no budget curve for the second model
    assert {r["method"] for r in select(runs, methods=["brecq"])} == {"brecq"}
    pair = select(runs, rows=["brecq", "L_G on 2 images"], seeds=[0])
    assert [(r["row"], r["wbits"], r["abits"]) for r in pair[:2]] == [("brecq", 2, 4), ("L_G on 2 images", 2, 4)]
    assert {r["seed"] for r in pair} == {0} and {r["row"] for r in pair} == {"brecq", "L_G on 2 images"}
    assert select(runs) == runs and select(runs, methods=["naive"], rows=["brecq"]) == []
    assert planned_runs()[: len(curve_plan())] == curve_plan()  # the RetinaNet's curve first


def test_step_sizes_beside_the_curve_at_the_same_iterations():
    def run(table, method, iters, lr, ap):
        row = f"{method} {iters} x {lr:g}"
        return _run(table, row, 2, 4, 0, ap, iters=iters, method=method, settings={"weight_lr": lr},
                    units=[{"undecided": 0.5}, {"undecided": 0.3}])  # fmt: skip

    runs = [run("budget", "brecq", 500, 1e-3, 55.0), run("budget", "brecq", 250, 1e-3, 50.0)]
    runs += [run("step size", "brecq", 500, 4e-3, 60.0), run("budget", "brecq", 500, 1e-3, 44.0) | {"wbits": 4}]
    table = step_size_table(_result(runs))
    assert table.index.tolist() == [(500, 1e-3, 0.5), (500, 4e-3, 2.0)]  # W4A4 and 250 iterations left out
    assert table[("AP", "brecq")].tolist() == [55.0, 60.0] and table[("undecided", "brecq")].iloc[0] == 0.4


def test_step_size_distance_sets_4x_the_steps_beside_4x_the_step_from_the_same_product():
    def run(iters, lr, ap):
        return _run("step size", f"brecq {iters} x {lr:g}", 2, 4, 0, ap, iters=iters, method="brecq",
                    settings={"weight_lr": lr}, units=[{"undecided": 0.5}])  # fmt: skip

    runs = [run(500, 1e-3, 50.0), run(500, 4e-3, 58.0), run(2000, 1e-3, 59.0), run(500, 1.6e-2, 60.0)]
    runs.append(run(500, 4e-2, 62.0))  # products 8 and 20: neither 4x nor 2000 steps ran there, so no row
    distance = step_size_distance(step_size_table(_result(runs)))
    assert distance.index.tolist() == [("brecq", 0.5), ("brecq", 2.0)]
    assert distance["4x the step"].tolist() == pytest.approx([8.0, 2.0])
    assert distance["4x the steps"].isna().tolist() == [True, False]
    assert distance.loc[("brecq", 2.0), "4x the steps"] == 1.0
    assert step_size_distance(step_size_table(_result([]))).empty
    longest, gains = steps_gain_at_longest(distance)
    assert longest == 2.0 and gains.to_dict() == {"brecq": 1.0}
    assert steps_gain_at_longest(distance.drop(index=("brecq", 2.0))) is None  # 4x the steps ran nowhere
    assert steps_gain_at_longest(pd.DataFrame()) is None


def test_ablation_and_filter_tables():
    runs = [_run("ablation", "Reg-PTQ", 2, 4, s, 33.0 + s / 10) for s in range(3)]
    runs += [_run("ablation", "no global loss (L_H only)", 2, 4, s, 30.0 + s / 10) for s in range(3)]
    runs += [_run("filter", "0.0002/0.1", 2, 4, 0, 33.0), _run("filter", "0/0", 2, 4, 0, 32.0)]
    result = _result(runs)
    table = ablation_table(result)
    assert table.loc["no global loss (L_H only)", "against Reg-PTQ"] == "behind" and table["n"].tolist() == [3, 3]
    grid = filter_table(result)
    assert grid.loc["0.0002", "0.1"] == 33.0 and grid.loc["0", "0"] == 32.0 and pd.isna(grid.loc["0.01", "0.1"])
    assert filter_sentence(_result(runs + [_run("filter", "0.01/0.1", 2, 4, 0, 32.5)])).endswith(
        "a range of 0.50 (no filter, 0/0: 32.00; the ablation's no-filter row judges filtering over the seeds); "
        "Reg-PTQ has too few seeds at W2A4 for a verdict."
    )
    assert filter_sentence(result) is None  # one filtered cell (the no-filter cell is no threshold): no range yet


def test_the_filter_grids_range_is_judged_against_reg_ptqs_seed_spread():
    grid = [_run("filter", "0.0002/0.1", 2, 4, 0, 64.5), _run("filter", "0/0", 2, 4, 0, 63.0)]
    grid += [_run("filter", "0.01/0.1", 2, 4, 0, 64.1)]
    for aps, judged in (((64.5, 64.3, 64.6), "beyond it, by 0.10"), ((64.5, 64.0, 64.6), "within it, by 0.20")):
        result = _result(grid + [_run("methods", "regptq", 2, 4, s, ap) for s, ap in enumerate(aps)])
        sentence = filter_sentence(result)
        # the no-filter cell, far below, is shown but left out of the thresholds' range
        assert sentence.startswith("Filter thresholds (Reg-PTQ, W2A4, seed 0, 2 of 4 filtered cells): AP 64.10 "
                                   "(theta_C/theta_I 0.01/0.1) to 64.50 (0.0002/0.1), a range of 0.40 (no filter, "
                                   "0/0: 63.00;")  # fmt: skip
        assert sentence.endswith(f"the thresholds move AP {judged}.") and sentence in findings(result)


def test_reg_ptqs_two_parts_on_qdrop_over_the_seeds_all_four_cells_share():
    runs = [_run("methods", "qdrop", 2, 4, s, 65.0 + s) for s in range(3)]
    runs += [_run("methods", "qdrop", 4, 4, 0, 99.0)]  # another setting: not a cell
    runs += [_run("ablation", "QDrop + L_G (uniform head)", 2, 4, s, 65.5 + s) for s in range(2)]
    runs += [_run("ablation", "QDrop + LLAQ head (no L_G)", 2, 4, s, 64.0 + s) for s in range(3)]
    runs += [_run("ablation", "on QDrop's loss and drop", 2, 4, s, 64.2 + s) for s in range(2)]
    result = _result(runs)
    grid, seeds = qdrop_parts(result)
    assert seeds == [0, 1]  # seed 2 lacks two cells
    assert (
        grid.loc["no L_G", "uniform head"] == "65.5 (65.0-66.0)"
        and grid.loc["with L_G", "LLAQ head"] == "64.7 (64.2-65.2)"
    )
    sentence = [line for line in findings(result) if "parts on QDrop" in line]
    assert sentence == ["Reg-PTQ's parts on QDrop (W2A4, seeds 0, 1): L_G moves AP by +0.5 (not enough seeds) with a "
                        "uniform head and +0.2 (not enough seeds) with LLAQ; LLAQ on the head by -1.0 (not enough "
                        "seeds) without L_G and -1.3 (not enough seeds) with it."]  # fmt: skip
    tight = [_run("methods", "qdrop", 2, 4, s, 65.0 + 0.1 * s) for s in range(3)]
    tight += [_run("ablation", "QDrop + L_G (uniform head)", 2, 4, s, 65.5 + 0.1 * s) for s in range(3)]
    tight += [_run("ablation", "QDrop + LLAQ head (no L_G)", 2, 4, s, ap) for s, ap in enumerate((65.0, 65.1, 65.3))]
    tight += [_run("ablation", "on QDrop's loss and drop", 2, 4, s, 64.0 + 0.1 * s) for s in range(3)]
    # spreads 0.2 or 0.3: +0.5 and -1.0 are beyond them, +0.0 within
    assert qdrop_parts_sentence(_result(tight)) == (
        "Reg-PTQ's parts on QDrop (W2A4, seeds 0, 1, 2): L_G moves AP by +0.5 (beyond the seed spread) with a "
        "uniform head and -1.0 (beyond the seed spread) with LLAQ; LLAQ on the head by +0.0 (within the seed "
        "spread) without L_G and -1.5 (beyond the seed spread) with it."
    )
    assert "| with L_G | 66.0 (65.5-66.5) | 64.7 (64.2-65.2) |" in markdown(result)
    assert qdrop_parts(_result(runs[:3]))[1] == []  # no QDrop row ran with Reg-PTQ's parts: no seeds, no finding
    assert qdrop_parts_sentence(_result(runs[:3])) is None and sentence == [qdrop_parts_sentence(result)]


def test_the_time_ratio_of_a_single_pair_has_no_range_and_says_how_it_was_run():
    runs = [_run("methods", "regptq", 2, 4, 0, 40.0, seconds=30.0), _run("methods", "brecq", 2, 4, 0, 39.0)]
    text = "Reg-PTQ's calibration took 3.00x BRECQ's wall time (one pair from the methods table; a ratio compares the"
    assert any(line.startswith(text) for line in findings(_result(runs)))
    curve = [_run("budget", "regptq", 2, 4, 0, 40.0, seconds=30.0), _run("budget", "brecq", 2, 4, 0, 39.0)]
    text = "Reg-PTQ's calibration took 3.00x BRECQ's wall time (one pair run one after the other)."
    assert text in findings(_result(runs + curve))


def test_a_row_against_its_reference_where_both_ran():
    runs = [_run("methods", "regptq", 2, 4, s, 40.0 + s) for s in range(3)]
    runs += [_run("methods", "regptq (shift form)", 2, 4, s, 36.0 + s / 10) for s in range(3)]
    runs += [_run("methods", "regptq (shift form)", 4, 4, 0, 60.0)]  # no reference at W4A4: no row
    table = against(_result(runs), "methods", ["regptq (shift form)"], "regptq")
    assert table[["setting", "AP", "regptq", "verdict"]].values.tolist() == [
        ["W2A4", "36.1 (36.0-36.2)", "41.0 (40.0-42.0)", "behind"]
    ]
    assert table["gap"].iloc[0] == pytest.approx(-4.9)


def test_markdown_renders_every_table():
    runs = [_run("methods", "regptq", 2, 4, 0, 12.3, units=[{"unit": "backbone.stem", "undecided": 0.01}])]
    runs += [_run("budget", "brecq", 2, 4, 0, 11.1, iters=n) for n in CURVE_ITERS]
    text = markdown(_result(runs))
    for heading in ("Methods x bits", "best baseline", "Calibration time", "Budget curve", "Ablation", "Filter",
                    "undecided", "Weight MSE"):  # fmt: skip
        assert heading in text, heading
    assert "12.3" in text and "500 iterations per unit" in text and "`abc` (6)" in text
    # runs made before runs recorded their machine are not credited to this invocation's
    assert "Machine of this invocation: test, ? torch thread(s); runs made on an unrecorded machine (6)" in text
    text = markdown(_result([{**r, "machine": "cpu A"} for r in runs[:2]] + runs[2:]))
    assert "runs made on cpu A (2), an unrecorded machine (4)" in text


def test_still_to_run_lists_the_missing_runs_in_the_benchs_order_seeds_grouped():
    missing = {("methods", "brecq", 4, 8, seed) for seed in (1, 2)} | {("methods", "naive", 8, 8, 0)}
    planned = [
        _run(r["table"], r["row"], r["wbits"], r["abits"], r["seed"], 50.0) for r in plan(500, model="tiny_fasterrcnn")
    ]
    runs = [r for r in planned if (r["table"], r["row"], r["wbits"], r["abits"], r["seed"]) not in missing]
    result = {**_result(runs), "model": "tiny_fasterrcnn"}
    assert still_to_run(result) == ["methods W8A8: naive (seed 0)", "methods W4A8: brecq (seeds 1, 2)"]
    assert seconds_left(result) == 3 * 15.0  # each missing run at the median of its row's runs (15 s each here)
    assert "## Still to run, in the order the bench takes them (about 0.0 hours" in markdown(result)
    assert "\n\n- methods W8A8: naive (seed 0)\n- methods W4A8: brecq (seeds 1, 2)\n" in markdown(result)
    assert still_to_run({**result, "runs": planned}) == []
    assert "Still to run" not in markdown({**result, "runs": planned})
    chosen = {**result, "selection": {"methods": None, "rows": ["naive"], "seeds": None}}  # a bench of one row
    assert still_to_run(chosen) == ["methods W8A8: naive (seed 0)"]
    assert "Runs: 4 of the 5 planned (an unfinished bench" in markdown(chosen)  # naive at five settings, one missing


def test_an_unfinished_curve_reports_its_last_doublings_and_undecided_roundings():
    units = [{"unit": "backbone.stem", "undecided": 0.5}, {"unit": "head.cls", "undecided": 0.3}]
    runs = [_run("budget", "brecq", 2, 4, 0, ap, iters=n, units=units) for n, ap in [(125, 40.0), (250, 43.5)]]
    runs += [_run("budget", "qdrop", 2, 4, 0, 41.0, iters=125, units=units)]
    result = {**_result(runs), "iters": None}
    text = markdown(result)
    assert "The budget curve is unfinished; the last doubling so far gains: brecq W2A4 125->250 +3.5 AP." in text
    assert "qdrop W2A4 125->" not in text  # one point is no doubling
    assert "| 125 | 0.400 | 0.400 |" in text  # mean share over units, per budget and method


def test_a_second_model_gets_the_methods_table_in_its_own_file():
    runs = plan(500, model="tiny_fasterrcnn")
    assert {r["table"] for r in runs} == {"methods", "cadence"}
    # the cheaper-L_G runs come right after the verdict at W2A4, every seed, Reg-PTQ with only L_G's pass changed
    cadence = runs[len(SEEDS) * len(CURVE_METHODS) :][: len(SEEDS) * len(LG_COST)]
    assert {r["table"] for r in cadence} == {"cadence"} and {r["seed"] for r in cadence} == set(SEEDS)
    expected = [{"weight_lr": WEIGHT_LR, **changed} for _ in SEEDS for changed in LG_COST.values()]
    assert [r["overrides"] for r in cadence] == expected
    assert result_name() == "bench.json" and result_name("tiny_fasterrcnn") == "bench_tiny_fasterrcnn.json"
    text = markdown({**_result([_run("methods", "naive", 2, 4, 0, 12.3)]), "model": "tiny_fasterrcnn"})
    assert "Methods x bits, tiny_fasterrcnn" in text and "Filter thresholds" not in text and "Budget curve" not in text
    assert "L_G's pass made cheaper" in text and "made cheaper" not in markdown(_result([]))
    # naive has no Reg-PTQ to compare or time: those tables say so instead of a header with no rows
    assert "## Reg-PTQ against the best baseline (a lead only beyond the seed spread)\n\n(no runs yet)" in text


def test_an_interrupted_bench_resumes_runs_of_the_same_code_only(tmp_path, monkeypatch):
    calls = []

    def fake(spec, calib_images, model):
        calls.append(spec["row"])
        if spec["table"] != "budget" and (tmp_path / "bench.json").is_file():  # the file holds the budget already
            budgets.append(json.loads((tmp_path / "bench.json").read_text())["iters"])
        return _run(spec["table"], spec["row"], spec["wbits"], spec["abits"], spec["seed"], 10.0, spec["iters"])

    monkeypatch.setattr(bench, "_calibrate", fake)
    monkeypatch.setattr(bench, "quantizer_mse", lambda: [])
    monkeypatch.setattr(bench, "cost_table", lambda model, images: [])
    monkeypatch.setattr(bench, "code_fingerprint", lambda: "one")
    seen, budgets = [], []
    first = bench.run_bench(fast=True, out_dir=tmp_path, after_run=lambda result: seen.append(len(result["runs"])))
    assert len(calls) == len(first["runs"]) > 0
    assert seen[-1] == len(first["runs"]) and seen == sorted(seen)  # told after every run: bench.md follows
    written = json.loads((tmp_path / "bench.json").read_text())["runs"]
    assert all(r["code"] == "one" for r in written)
    # each run keeps what its float sums depend on besides the code: the CPU and torch's thread count
    assert all(r["machine"] == provenance.machine() and r["threads"] == torch.get_num_threads() for r in written)
    assert budgets and None not in budgets
    bench.run_bench(fast=True, out_dir=tmp_path)
    assert len(calls) == len(first["runs"])  # every run reused
    monkeypatch.setattr(bench, "code_fingerprint", lambda: "two")
    bench.run_bench(fast=True, out_dir=tmp_path)
    assert len(calls) == 2 * len(first["runs"])  # new code: every run again
    assert first["selection"] == {"methods": None, "rows": None, "seeds": None}  # every run was asked for
    chosen = bench.run_bench(fast=True, out_dir=tmp_path, rows=["naive"])
    assert chosen["selection"] == {"methods": None, "rows": ["naive"], "seeds": None}  # the tables plan only these


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{", "is not a bench's results: not JSON"),
        ('{"fast": true, "runs": 5}', "its runs are not a list of runs"),
        ('{"fast": true, "runs": [1, 2]}', "its runs are not a list of runs"),
        ('[{"runs": []}]', "its runs are not a list of runs"),
        ('{"fast": true, "runs": [{"key": "k", "code": "one", "table": "methods", "row": "naive"}]}',
         "is damaged: a run lacks method, wbits, abits, seed, iters, AP (key k)"),
    ],
)  # fmt: skip
def test_a_damaged_results_file_is_named_before_anything_is_written(tmp_path, capsys, monkeypatch, content, needle):
    (tmp_path / "bench.json").write_text(content)
    with pytest.raises(ValueError, match=re.escape(needle)):
        bench_share.read_runs(tmp_path / "bench.json", fast=True, code="one")
    monkeypatch.setattr(bench, "code_fingerprint", lambda: "one")
    monkeypatch.setattr(bench, "_calibrate", lambda *a: pytest.fail("a damaged results file must stop the bench"))
    # the command line: one line, exit 2 (where the file is not even a bench's, the output check says so first)
    assert_clean_error(run_in_process(capsys, "bench", "--fast", "--methods", "naive", "--out", tmp_path), "bench.json")
    assert (tmp_path / "bench.json").read_text() == content and not (tmp_path / "bench.md").exists()


def test_two_processes_share_one_bench_and_compute_each_run_once(tmp_path, monkeypatch):
    calls = []

    def fake(spec, calib_images, model):
        calls.append(key(spec, calib_images))
        time.sleep(0.02)  # long enough for the other to try the same run
        return _run(spec["table"], spec["row"], spec["wbits"], spec["abits"], spec["seed"], 10.0, spec["iters"])

    monkeypatch.setattr(bench, "_calibrate", fake)
    monkeypatch.setattr(bench, "quantizer_mse", lambda: [])
    monkeypatch.setattr(bench, "cost_table", lambda model, images: [])
    monkeypatch.setattr(bench, "code_fingerprint", lambda: "one")
    monkeypatch.setattr(bench, "WAIT_SECONDS", 0.01)
    results = []
    workers = [threading.Thread(target=lambda: results.append(bench.run_bench(fast=True, out_dir=tmp_path)))
               for _ in range(2)]  # fmt: skip
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)  # a safety limit for a deadlock, far above the second or so this takes
    assert not any(w.is_alive() for w in workers), "a bench worker still waits after 10 minutes: a deadlock"
    assert len(results) == 2
    assert len(calls) == len(set(calls)) == len({r["key"] for r in results[0]["runs"]})  # each run once
    written = json.loads((tmp_path / "bench.json").read_text())
    assert (
        [r["key"] for r in written["runs"]]
        == [r["key"] for r in results[0]["runs"]]
        == [r["key"] for r in results[1]["runs"]]
    )
    left = [p.name for p in bench_share.claims_dir(tmp_path / "bench.json").iterdir()]
    assert left == [bench_share.LOCK]  # no claim left behind
    assert [p.name for p in tmp_path.iterdir() if not p.is_dir()] == ["bench.json"]  # nothing else beside it
    check_bench_out(tmp_path, "bench.json", default=tmp_path)  # so a later bench may resume there
    foreign = {**_run("lr", "brecq 500 it", 2, 4, 0, 50.0), "key": "a later plan's run", "code": "one"}
    stale = {**written["runs"][0], "key": "an earlier plan's run in this plan's place", "AP": -1.0}
    written["runs"] += [foreign, stale]
    (tmp_path / "bench.json").write_text(json.dumps(written))
    bench.run_bench(fast=True, out_dir=tmp_path)  # a plan without the first run, with the second's place
    runs = json.loads((tmp_path / "bench.json").read_text())["runs"]
    assert foreign in runs and stale not in runs


def test_a_run_held_by_a_killed_process_is_free_again(tmp_path):
    results = tmp_path / "bench.json"
    holder = (
        "import time; from pathlib import Path; from regptq_lite.bench_share import claim\n"
        f"with claim(Path({str(results)!r}), 'run A') as mine:\n"
        "    print(mine, flush=True); time.sleep(60)"
    )
    with subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "True"
        with bench_share.claim(results, "run A") as mine, bench_share.claim(results, "run B") as other:
            assert not mine and other  # A is held by the other process, B is free
        proc.kill()
    with bench_share.claim(results, "run A") as mine:
        assert mine  # the kernel released the dead process's lock


def test_the_fingerprint_follows_computing_code_not_presentation(tmp_path, monkeypatch):
    package = tmp_path / "regptq_lite"
    shutil.copytree(provenance.REPO / "regptq_lite", package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    before = provenance.code_fingerprint()
    assert {"atomic", "progress", "coco_folder"} <= {path.stem for path in provenance.calibration_modules()}
    for presentation in ("viz.py", "atomic.py", "progress.py", "coco_folder.py"):  # the last three: reached, no numbers
        (package / presentation).write_text((package / presentation).read_text() + "\n# a comment\n")
    assert provenance.code_fingerprint() == before
    (package / "recon.py").write_text((package / "recon.py").read_text() + "\n# a comment\n")
    assert provenance.code_fingerprint() != before


def test_a_bench_run_never_calls_coco_folder_which_the_fingerprint_leaves_out(monkeypatch):
    from regptq_lite import coco_folder

    importers = {p.stem for p in provenance.calibration_modules() if "coco_folder" in provenance._imports(p)}
    assert importers == {"methods"}  # its only caller, which calls it for torchvision's detectors only

    def off(*args, **kwargs):
        raise AssertionError("a bench run called coco_folder")

    monkeypatch.setattr(coco_folder.CocoFolder, "__init__", off)
    monkeypatch.setattr(coco_folder, "category_map", off)
    spec = next(s for s in plan(FAST["iters"], fast=True) if s["method"] == "regptq")
    assert bench._calibrate(spec, FAST["calib_images"], "tiny_retinanet")["AP"] >= 0


def test_results_do_not_make_the_commit_dirty(tmp_path, monkeypatch):
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "data" / "results" / "bench.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "c"], check=True)
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    clean = provenance.git_commit()
    assert len(clean) == 40
    (tmp_path / "data" / "results" / "bench.json").write_text('{"runs": []}')
    assert provenance.git_commit() == clean  # a bench writing its results: still resumable
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_commit() == clean + "-dirty"


def test_a_run_made_twice_shows_both_aps_and_their_range():
    first = _run("methods", "brecq", 2, 4, 0, 64.0, key="k1", code="c", threads=1)
    shared = [{**first, "table": "budget", "row": "brecq 500 x 0.01"}]  # the same run in a second table: once
    again = {**first, "AP": 65.5, "threads": 2}
    other_code = {**first, "AP": 70.0, "code": "d"}
    other_model = {**_result([{**first, "AP": 10.0}]), "model": "tiny_fasterrcnn"}
    results = {
        "bench.json": _result([first, *shared, _run("methods", "qdrop", 2, 4, 0, 66.0, key="k2", code="c")]),
        "timing.json": _result([again, other_code]),
        "frcnn.json": other_model,
    }
    table = reruns(results)
    assert list(table["file"]) == ["bench.json", "timing.json"] and list(table["threads"]) == [1, 2]
    assert list(table["AP"]) == [64.0, 65.5] and list(table["range"]) == pytest.approx([1.5, 1.5])
    assert reruns({"bench.json": results["bench.json"]}).empty


def test_the_bits_plot_zooms_on_the_reconstruction_rows_beside_every_row():
    means = pd.DataFrame({"W2A4": [15.3, 64.4], "W4A4": [68.1, 68.6]}, index=["naive", "regptq"])
    fig = viz.plot_bench_bits(means, fp_ap=71.0)
    every, zoomed = fig.axes
    assert [line.get_label() for line in every.lines] == ["naive", "regptq", "FP 71.0"]
    assert [line.get_label() for line in zoomed.lines] == ["regptq", "FP 71.0"]
    assert zoomed.get_ylim()[0] > 15.3  # naive's collapse no longer sets the axis
    assert len(viz.plot_bench_bits(means.loc[["regptq"]], fp_ap=71.0).axes) == 1  # nothing to zoom on
