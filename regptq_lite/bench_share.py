"""One bench, several processes: start ``python -m regptq_lite bench`` once per core (each with
``OMP_NUM_THREADS=1``) and they share the work through the results file.

A process claims a run before computing it (``claim``: an exclusive lock on a file named after the run's
key, released by the kernel if the process dies, so a killed process never blocks a run) and merges what the
others wrote whenever it reads or writes the results (``read_runs``, ``locked``). Where ``fcntl`` is missing
(Windows) every claim succeeds: one process at a time, as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no sharing
    fcntl = None


RUN_FIELDS = ("table", "row", "method", "wbits", "abits", "seed", "iters", "AP")  # what the tables read per run
LOCK = "lock"  # the file in the claims folder that guards the results file (claims are named by hex digests)


def claims_dir(results: Path) -> Path:
    """Where the claims of ``results``' runs and its lock live: a hidden folder beside it (ignored by git)."""
    return results.parent / f".{results.stem}-claims"


@contextmanager
def claim(results: Path, key: str) -> Iterator[bool]:
    """Hold run ``key`` while the block runs; yields False if another live process holds it."""
    if fcntl is None:
        yield True
        return
    folder = claims_dir(results)
    folder.mkdir(exist_ok=True)
    path = folder / hashlib.sha256(key.encode()).hexdigest()[:16]
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)  # before the lock goes: a later claimant re-reads the results first
    finally:
        os.close(fd)


@contextmanager
def locked(results: Path) -> Iterator[None]:
    """No other process reads-and-writes ``results`` while the block runs."""
    if fcntl is None:
        yield
        return
    folder = claims_dir(results)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_CREAT | os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_runs(results: Path, fast: bool, code: str) -> list[dict]:
    """The finished runs in ``results`` that this code would compute the same way."""
    if not results.is_file():
        return []
    try:
        previous = json.loads(results.read_text())
    except ValueError as err:  # UnicodeDecodeError is one too
        raise ValueError(f"{results} is not a bench's results: not JSON ({err})") from None
    runs = previous.get("runs") if isinstance(previous, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ValueError(f"{results} is not a bench's results: its runs are not a list of runs")
    if previous.get("fast") != fast:
        return []
    mine = [r for r in runs if r.get("code") == code and "key" in r]
    for run in mine:
        missing = [field for field in RUN_FIELDS if field not in run]
        if missing:
            raise ValueError(f"{results} is damaged: a run lacks {', '.join(missing)} (key {run['key']})")
    return mine
