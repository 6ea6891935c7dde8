"""The command line run in-process (the same code path as ``python -m regptq_lite``, without its seconds of
imports), and what a clean bad-input error is: exit code 2, one line, no traceback."""

import subprocess

from regptq_lite.cli import main


def run_in_process(capsys, *args) -> subprocess.CompletedProcess:
    code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, *capsys.readouterr())


def assert_clean_error(result: subprocess.CompletedProcess, needle: str) -> None:
    """One line as a terminal shows it: a progress bar that the error overwrites (after a carriage return) is none."""
    assert result.returncode == 2, result.stderr
    lines = [line.split("\r")[-1] for line in result.stderr.strip().split("\n")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert needle in lines[0]
