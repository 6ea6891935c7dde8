"""Shared fixtures: the shipped detector, loaded once per session."""

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
