"""Claims as code: a notebook's statement about its own numbers is printed with them and a mark, is fatal only
where the environment makes claims strict (every kernel the tests and the report start), and a claim about
full settings is not enforced on a FAST run."""

import nbformat
import numpy as np
import pytest
import torch

from regptq_lite.claims import STRICT_ENV, ClaimFailed, claim, claim_greater, claim_within
from regptq_lite.notebooks_io import KERNEL, NotebookError, execute


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "0")


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")


def test_a_claim_that_holds_shows_its_numbers_and_a_tick(strict, capsys):
    text = "the box branch alone costs more AP75 than the class branch alone"
    assert claim(text, 6.1 > 2.3, numbers={"box": 6.1, "class": 2.3}) is True
    assert capsys.readouterr().out == f"claim ✓ {text} (box 6.1, class 2.3)\n"


def test_a_failed_claim_only_prints_for_a_student(lenient, capsys):
    assert claim("the filter keeps most anchors", False, numbers={"kept": 0.123456}) is False
    assert capsys.readouterr().out == "claim ✗ the filter keeps most anchors (kept 0.1235)\n"


def test_a_failed_claim_raises_where_claims_are_strict(strict, capsys):
    with pytest.raises(ClaimFailed, match=r"no longer holds: the filter keeps most anchors \(kept 0.1\)") as failed:
        claim("the filter keeps most anchors", False, numbers={"kept": 0.1})
    assert isinstance(failed.value, AssertionError)
    assert capsys.readouterr().out == "claim ✗ the filter keeps most anchors (kept 0.1)\n"


def test_a_full_settings_claim_is_not_enforced_on_a_fast_run(strict, capsys):
    assert claim("LLAQ beats uniform", False, numbers={"gap": -0.4}, full_only=True, fast=True) is False
    assert capsys.readouterr().out == "claim · LLAQ beats uniform (gap -0.4) (checked at full settings only)\n"
    assert claim("LLAQ beats uniform", True, numbers={"gap": 0.6}, full_only=True, fast=True) is True
    assert capsys.readouterr().out == "claim ✓ LLAQ beats uniform (gap 0.6) (checked at full settings only)\n"
    with pytest.raises(ClaimFailed):
        claim("LLAQ beats uniform", False, full_only=True, fast=False)


def test_numbers_are_shown_as_a_reader_wants_them(lenient, capsys):
    numbers = {"AP": np.float64(71.0312), "scenes": 500, "step": torch.tensor(0.000123456), "setting": "W2A4"}
    claim("numbers", True, numbers=numbers)
    assert capsys.readouterr().out == "claim ✓ numbers (AP 71.03, scenes 500, step 0.0001235, setting W2A4)\n"


def test_a_numpy_or_torch_truth_value_is_a_claim(strict):
    assert claim("numpy", np.float64(2.0) > 1.0) is True
    assert claim("torch", torch.tensor(2.0) > 1.0) is True
    with pytest.raises(ClaimFailed):
        claim("torch", torch.tensor(0.5) > 1.0)


def test_claim_greater(strict, capsys):
    assert claim_greater("the box branch costs more", 6.1, 2.3, names=("box", "class")) is True
    assert capsys.readouterr().out == "claim ✓ the box branch costs more (box 6.1, class 2.3)\n"
    with pytest.raises(ClaimFailed):
        claim_greater("equal is not greater", 2.0, 2.0)
    with pytest.raises(ClaimFailed, match=r"\(LLAQ 33.1, uniform 33, margin 0.5\)"):
        claim_greater("LLAQ wins clearly", 33.1, 33.0, names=("LLAQ", "uniform"), margin=0.5)
    assert claim_greater("at full settings", 1.0, 2.0, full_only=True, fast=True) is False


def test_claim_within(strict, capsys):
    text = "Monte Carlo agrees with the first-order formula within 5%"
    assert claim_within(text, 0.987, 0.95, 1.05, name="ratio") is True
    assert capsys.readouterr().out == f"claim ✓ {text} (ratio 0.987, expected 0.95 to 1.05)\n"
    with pytest.raises(ClaimFailed, match=r"\(ratio 0.7, expected 0.95 to 1.05\)"):
        claim_within(text, 0.7, 0.95, 1.05, name="ratio")
    assert claim_within(text, 0.7, 0.95, 1.05, full_only=True, fast=True) is False


def test_every_kernel_the_package_starts_makes_claims_strict(tmp_path, lenient):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("FAST = False"),
            nbformat.v4.new_code_cell("from regptq_lite.claims import claim\nclaim('one is more than two', 1 > 2)"),
        ]
    )
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = dict(KERNEL)
    nbformat.write(nb, tmp_path / "01_claims.ipynb")
    with pytest.raises(NotebookError, match="ClaimFailed: this claim no longer holds: one is more than two"):
        execute(tmp_path / "01_claims.ipynb", tmp_path / "out.ipynb", fast=True)
