"""Where a result came from: the command, the commit and the machine."""

from __future__ import annotations

import ast
import hashlib
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


def _imports(path: Path) -> set[str]:
    """The package modules that one module imports (``from .name import ...``), at any depth of the file."""
    tree = ast.parse(path.read_text())
    return {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    }


def calibration_modules(root: str = "methods") -> list[Path]:
    """The files of ``root`` (the module behind ``calibrate``) and of every package module it imports,
    directly or not."""
    package = REPO / "regptq_lite"
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in seen and (package / f"{name}.py").is_file():
            seen.add(name)
            todo += _imports(package / f"{name}.py")
    return sorted(package / f"{name}.py" for name in seen)


# Modules that ``methods`` reaches but no bench number passes through: one writes files, one draws progress
# bars, and one reads real COCO folders for torchvision's detectors, which the bench (tiny detectors on the
# scenes) never calls (test_bench checks that a bench run works with it switched off).
NO_NUMBERS = ("atomic", "progress", "coco_folder")


def code_fingerprint() -> str:
    """A hash of everything a bench run's numbers depend on: the modules that ``methods`` reaches
    (``calibration_modules``) except ``NO_NUMBERS``, the shipped checkpoints and the torch version. Two runs
    with the same settings and fingerprint compute the same numbers on one machine at one torch thread count,
    whatever commit they ran at; across CPUs and thread counts they may not (notebook 05 shows by how much)."""
    import torch

    modules = [path for path in calibration_modules() if path.stem not in NO_NUMBERS]
    digest = hashlib.sha256(torch.__version__.encode())
    for path in modules + sorted((REPO / "data").glob("*.pt")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]
