"""Shared fixtures: the shipped detector, loaded once per session."""

import subprocess
import sys

import pytest
import torch

torch.set_flush_denormal(True)  # as the CLI does, before any thread pool starts

from regptq_lite.detectors import load_checkpoint  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _fixed_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fp_model():
    model, _ = load_checkpoint("tiny_retinanet")
    return model


@pytest.fixture(scope="session")
def fast_report(tmp_path_factory):
    """``python -m regptq_lite report --fast`` run once, as a user would: the folder it wrote."""
    out = tmp_path_factory.mktemp("reports")
    result = subprocess.run(
        [sys.executable, "-m", "regptq_lite", "report", "--fast", "--out", str(out)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return out
