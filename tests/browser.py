"""Debian's headless chromium, for the tests that look at pages as a reader would: screenshots, and the page's
DOM after its scripts ran, with the network off."""

import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

OFFLINE = ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]  # no request leaves the machine


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="Debian's chromium is not installed (make test installs it as root)"
)


def _run(*args: str) -> subprocess.CompletedProcess:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", *OFFLINE, *args]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)


def screenshot(page: Path, shot: Path) -> np.ndarray:
    """An RGB screenshot of ``page`` in a 1200 x 4000 window."""
    _run("--hide-scrollbars", "--window-size=1200,4000", f"--screenshot={shot}", page.as_uri())
    return mpimg.imread(shot)[..., :3]


def dom(page: Path, wait_ms: int = 20000) -> str:
    """``page``'s DOM once its scripts have run, offline (``wait_ms`` of virtual time for those that load more)."""
    return _run(f"--virtual-time-budget={wait_ms}", "--dump-dom", page.as_uri()).stdout
