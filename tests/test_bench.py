from regptq_lite.bench import ABLATION, BITS, FULL, THETA_C, THETA_I, _key, ablation, markdown, plan, result_name
from regptq_lite.methods import METHODS


def test_plan_covers_every_table_and_shares_identical_runs():
    runs = plan(fast=False)
    assert len([r for r in runs if r["table"] == "methods"]) == len(METHODS) * len(BITS) + 1
    assert len([r for r in runs if r["table"] == "filter"]) == len(THETA_C) * len(THETA_I)
    assert len([r for r in runs if r["table"] == "head_quantizer"]) == 6
    assert len([r for r in runs if r["table"] == "ablation"]) == 2 * len(ABLATION)
    keys = {_key(r, FULL) for r in runs}
    # Reg-PTQ W2A4 at the default thresholds with LLAQ appears in all three tables, computed once;
    # the three LLAQ head runs are the methods table's Reg-PTQ runs; the ablation's W2A4 run without
    # the filter is the filter grid's (0, 0) cell.
    assert len(keys) == len(runs) - 1 - 3 - 1


def test_ablation_rows_pick_the_right_runs():
    base = {"wbits": 2, "abits": 4, "head_weights": "llaq", "AP": 1.0}
    runs = [
        {**base, "table": "methods", "method": "brecq", "head_weights": "uniform", "AP": 2.0},
        {**base, "table": "methods", "method": "regptq", "AP": 3.0},
        {**base, "table": "ablation", "method": "regptq", "variant": "local loss only", "AP": 4.0},
        {**base, "table": "head_quantizer", "method": "regptq", "head_weights": "uniform", "AP": 5.0},
    ]
    table = ablation(runs)
    assert table["BRECQ (local loss, uniform head)"]["W2A4"]["AP"] == 2.0
    assert table["Reg-PTQ (global loss + filter, LLAQ head)"]["W2A4"]["AP"] == 3.0
    assert table["local loss only (LLAQ head)"]["W2A4"]["AP"] == 4.0
    assert table["Reg-PTQ with a uniform head"]["W2A4"]["AP"] == 5.0
    assert table["global loss, no filter"]["W2A4"] is None
    assert table["local loss only (LLAQ head)"]["W3A3"] is None


def test_markdown_renders_every_table():
    run = {
        "table": "methods",
        "method": "regptq",
        "wbits": 2,
        "abits": 4,
        "AP": 12.3,
        "AP50": 30.0,
        "AP75": 10.0,
        "fp_AP": 50.0,
        "seconds": 10.0,
        "head_weights": "llaq",
        "settings": {"theta_c": 2e-4, "theta_i": 0.1},
    }
    result = {
        "command": "python -m regptq_lite bench",
        "commit": "abc",
        "machine": "test",
        "budget": FULL,
        "runs": [run, {**run, "table": "filter"}, {**run, "table": "head_quantizer"}],
        "quantizer_mse": [],
        "cost": {},
    }
    text = markdown(result)
    # once in each of the four grids (the ablation shows the methods run as Reg-PTQ), and three rows in the list
    assert text.count("12.3") == 7
    assert "100 iterations per unit" in text


def test_results_do_not_make_the_commit_dirty(tmp_path, monkeypatch):
    import subprocess

    from regptq_lite import provenance

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


def test_a_second_model_gets_the_methods_table_in_its_own_file():
    runs = plan(fast=False, model="tiny_fasterrcnn")
    assert {r["table"] for r in runs} == {"methods"} and len(runs) == len(METHODS) * len(BITS) + 1
    assert [r["method"] for r in plan(fast=False, methods=["brecq"], model="tiny_fasterrcnn")] == ["brecq"] * 4
    assert result_name() == "bench.json" and result_name("tiny_fasterrcnn") == "bench_tiny_fasterrcnn.json"
    run = {
        "table": "methods", "method": "naive", "wbits": 2, "abits": 4, "AP": 12.3, "AP50": 30.0, "AP75": 10.0,
        "fp_AP": 50.0, "seconds": 10.0, "head_weights": "uniform", "settings": {},
    }  # fmt: skip
    result = {"command": "c", "commit": "abc", "machine": "m", "model": "tiny_fasterrcnn", "budget": FULL,
              "runs": [run], "quantizer_mse": [], "cost": {}}  # fmt: skip
    text = markdown(result)
    assert "Methods x bits, tiny_fasterrcnn" in text and "Runs: 1 of the 21 planned" in text
    assert "Filter thresholds" not in text and "Ablation" not in text


def test_gap_to_best_baseline_compares_where_regptq_ran():
    import pandas as pd

    from regptq_lite.bench import gap_to_best_baseline

    methods = pd.DataFrame({"W2A4": [10.0, 30.0, 28.0], "W8A8": [50.0, None, None]}, index=["naive", "brecq", "regptq"])
    gap = gap_to_best_baseline(methods)
    assert list(gap.index) == ["W2A4"]
    assert gap.loc["W2A4", "which"] == "brecq" and gap.loc["W2A4", "gap"] == -2.0
    assert gap_to_best_baseline(methods.drop(index="regptq")).empty
