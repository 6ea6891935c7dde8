from regptq_lite.bench import BITS, FULL, THETA_C, THETA_I, _key, markdown, plan
from regptq_lite.methods import METHODS


def test_plan_covers_every_table_and_shares_identical_runs():
    runs = plan(fast=False)
    assert len([r for r in runs if r["table"] == "methods"]) == len(METHODS) * len(BITS) + 1
    assert len([r for r in runs if r["table"] == "filter"]) == len(THETA_C) * len(THETA_I)
    assert len([r for r in runs if r["table"] == "head_quantizer"]) == 6
    keys = {_key(r, FULL) for r in runs}
    # Reg-PTQ W2A4 at the default thresholds with LLAQ appears in all three tables, computed once;
    # the three LLAQ head runs are the methods table's Reg-PTQ runs.
    assert len(keys) == len(runs) - 1 - 3


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
    assert text.count("12.3") == 6  # once in each of the three grids, and three rows in the list of runs
    assert "100 iterations per unit" in text
