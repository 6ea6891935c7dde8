"""Where a result came from: the command, the commit and the machine."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def command_line() -> str:
    """The command that is running, as a user would type it."""
    return " ".join(["python -m regptq_lite", *map(shlex.quote, sys.argv[1:])])


def git_commit() -> str:
    """The checked-out commit, with '-dirty' if tracked files changed; 'unknown' outside git.

    Files under ``data/results/`` do not count: a bench writes there as it goes, and an interrupted
    bench must still find its own commit to resume."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno", "--", ".", ":(exclude)data/results"],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> str:
    """CPU model and core count, e.g. 'x86_64, 2 cores, Intel Xeon ...'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {model}"
