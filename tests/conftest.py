"""Shared fixtures: the shipped detector and the FAST report, each made once per session."""

import os
import subprocess
import sys
import threading

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
def fast_report(tmp_path_factory, pytestconfig):
    """``python -m regptq_lite report --fast`` run once, as a user would: the folder it wrote. What it prints
    (a line as each notebook starts) reaches the terminal as it comes; it is killed after 30 minutes."""
    out = tmp_path_factory.mktemp("reports")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    command = [sys.executable, "-m", "regptq_lite", "report", "--fast", "--out", str(out)]
    env = {**os.environ, "TQDM_DISABLE": "1"}  # no evaluation bar between the lines
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        watchdog = threading.Timer(1800, proc.kill)
        watchdog.start()
        for line in proc.stdout:
            lines.append(line)
            with capture.global_and_fixture_disabled():
                print(f"\n  report --fast: {line.rstrip()}", end="", flush=True)
        watchdog.cancel()
    with capture.global_and_fixture_disabled():
        print(flush=True)
    assert proc.returncode == 0, "".join(lines)[-2000:]
    return out
