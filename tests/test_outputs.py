"""Where the commands write (``regptq_lite.outputs``): every writing command refuses a bad output path in one
line with exit code 2, before any work starts, and leaves every file of the project as it was; ``--force``
replaces a command's own kind and nothing else; the report's kernels draw figures whatever MPLBACKEND says."""

import hashlib
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
import torch
from cli_run import assert_clean_error, run_in_process

from regptq_lite.cli import main
from regptq_lite.detectors import CHECKPOINTS, DATA_DIR, card_path
from regptq_lite.notebooks_io import KERNEL, NOTEBOOKS_DIR, NotebookError, notebooks, plots, render
from regptq_lite.offline_math import install_mathjax
from regptq_lite.outputs import (
    PACKAGE_DIR,
    OutputError,
    check_bench_out,
    check_checkpoint_out,
    check_export_out,
    check_report_out,
    check_student_out,
)
from regptq_lite.report import render_notebooks

ROOT = PACKAGE_DIR.parent

# Each writing command with quick settings (should a path slip through, the run stays short), and the name
# of what it writes when given a folder to write in.
WRITERS = {
    "train": (("train", "--iters", "1", "--out"), "model.pt"),
    "calibrate": (("calibrate", "--method", "naive", "--wbits", "4", "--abits", "4", "--fast", "--save"), "q.pt"),
    "bench": (("bench", "--fast", "--methods", "naive", "--out"), "results"),
    "report": (("report", "--fast", "--out"), "report"),
    "student": (("student", "--out"), "student"),
}


def _read_only(tmp: Path) -> Path:
    folder = tmp / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _foreign_folder(tmp: Path) -> Path:
    folder = tmp / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    return folder


def _broken_link(path: Path) -> Path:
    path.symlink_to(path.with_name("gone"))
    return path


BAD_PATHS = {
    "existing file of another kind": lambda tmp, leaf: ROOT / "README.md",
    "existing folder of another kind": lambda tmp, leaf: _foreign_folder(tmp),
    "read-only folder": lambda tmp, leaf: _read_only(tmp),
    "inside a read-only folder": lambda tmp, leaf: _read_only(tmp) / leaf,
    "missing parent": lambda tmp, leaf: tmp / "missing" / leaf,
    "a link to a missing file": lambda tmp, leaf: _broken_link(tmp / leaf),
    "the notebooks folder": lambda tmp, leaf: NOTEBOOKS_DIR,
    "inside the notebooks folder": lambda tmp, leaf: NOTEBOOKS_DIR / leaf,
    "the data folder": lambda tmp, leaf: DATA_DIR,
    "inside the data folder": lambda tmp, leaf: DATA_DIR / leaf,
    "inside the package": lambda tmp, leaf: PACKAGE_DIR / leaf,
}


def project_files() -> dict[str, str]:
    """Every tracked file's SHA-256, and every untracked file that git does not ignore (hash ``new``)."""

    def listed(*flags: str) -> list[str]:
        out = subprocess.run(["git", "ls-files", "-z", *flags], cwd=ROOT, capture_output=True, check=True).stdout
        return [name for name in out.decode().split("\0") if name]

    tracked = {name: hashlib.sha256((ROOT / name).read_bytes()).hexdigest() for name in listed()}
    return tracked | dict.fromkeys(listed("--others", "--exclude-standard"), "new")


@pytest.fixture
def unchanged_project():
    before = project_files()
    yield
    assert project_files() == before


@pytest.mark.parametrize("bad", BAD_PATHS)
@pytest.mark.parametrize("writer", WRITERS)
def test_a_bad_output_path_is_one_line_and_exit_2(writer, bad, tmp_path, capsys, unchanged_project):
    args, leaf = WRITERS[writer]
    path = BAD_PATHS[bad](tmp_path, leaf)
    try:
        result = run_in_process(capsys, *args, path)
    finally:
        for folder in tmp_path.glob("read_only"):
            folder.chmod(0o755)
    assert_clean_error(result, "regptq_lite: error: ")
    assert result.stderr.startswith("regptq_lite: error: ")
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_same_kind_overwrite_needs_force_and_a_foreign_file_stops_even_force(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["student", "--out", str(out)]) == 0
    assert main(["student", "--out", str(out)]) == 2
    assert "--force replaces it" in capsys.readouterr().err
    assert main(["student", "--out", str(out), "--force"]) == 0
    shutil.copy(notebooks()[0], out / "mine.ipynb")  # a master notebook, with its solutions
    assert main(["student", "--out", str(out), "--force"]) == 2
    assert "mine.ipynb exists and is not a student copy" in capsys.readouterr().err


def _checkpoint(path: Path) -> Path:
    torch.save({"w": torch.zeros(1)}, path)
    path.with_suffix(".json").write_text(json.dumps({"model": "tiny_retinanet", "val": {"AP": 0.0}}))
    return path


def test_a_link_beside_an_output_is_written_through_only_where_its_target_may_be_written(tmp_path):
    out, card = tmp_path / "out" / "m.pt", tmp_path / "out" / "m.json"
    out.parent.mkdir()
    shipped = CHECKPOINTS["tiny_retinanet"]
    card.symlink_to(card_path(shipped))  # train would overwrite the shipped card through it
    with pytest.raises(OutputError, match=r"m\.json is a link into data/ \(the shipped data\); not writing through"):
        check_checkpoint_out(out, shipped=shipped, force=True)
    card.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _checkpoint(elsewhere / "m.pt")
    card.symlink_to(elsewhere / "m.json")
    check_checkpoint_out(out, shipped=shipped, force=True)  # a card of the user's own, in a folder they may write
    elsewhere.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=f"m.json \\(a link to .*\\): no permission to write in {elsewhere}"):
            check_checkpoint_out(out, shipped=shipped, force=True)
    finally:
        elsewhere.chmod(0o755)


def test_a_link_to_a_folder_is_written_into_where_that_folder_may_be_written(tmp_path):
    shelf = tmp_path / "shelf"
    target = shelf / "results"
    target.mkdir(parents=True)
    link = tmp_path / "results"
    link.symlink_to(target)
    shelf.chmod(0o555)  # the target's parent is read-only; the target itself is not
    try:
        check_bench_out(link, "bench.json", default=tmp_path / "default")
        target.chmod(0o555)
        with pytest.raises(OutputError, match=f"no permission to write in {link}"):
            check_bench_out(link, "bench.json", default=tmp_path / "default")
    finally:
        target.chmod(0o755)
        shelf.chmod(0o755)


def test_file_outputs_replace_their_own_kind_only_with_force(tmp_path):
    export = tmp_path / "q.pt"
    torch.save({"layer": {"kind": "uniform", "wbits": 4, "abits": 4, "bias": None}}, export)
    with pytest.raises(OutputError, match="--force"):
        check_export_out(export)
    check_export_out(export, force=True)
    checkpoint = _checkpoint(tmp_path / "model.pt")
    with pytest.raises(OutputError, match="is not an integer export"):
        check_export_out(checkpoint, force=True)
    with pytest.raises(OutputError, match="--force"):
        check_checkpoint_out(checkpoint, shipped=CHECKPOINTS["tiny_retinanet"])
    check_checkpoint_out(checkpoint, shipped=CHECKPOINTS["tiny_retinanet"], force=True)
    with pytest.raises(OutputError, match="is not a checkpoint"):
        check_checkpoint_out(export, shipped=CHECKPOINTS["tiny_retinanet"], force=True)
    text = tmp_path / "notes.pt"
    text.write_text("not a tensor")
    with pytest.raises(OutputError, match="is not an integer export"):
        check_export_out(text, force=True)
    with pytest.raises(OutputError, match=r"\.pt or \.pth file"):
        check_export_out(tmp_path / "q.bin")
    # torch files of other kinds, even without a card: a bare state dict, any pickle, a zip
    torch.save({"w": torch.zeros(1)}, tmp_path / "state.pt")
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    (tmp_path / "archive.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    for name in ("state.pt", "plain.pt", "archive.pt"):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(OutputError, match="is not an integer export"):
            check_export_out(tmp_path / name, force=True)
        assert (tmp_path / name).read_bytes() == before


def test_the_documented_overwrites_keep_working(tmp_path):
    """``train`` rebuilds a shipped checkpoint, ``bench`` resumes data/results/, ``report`` and ``student``
    rebuild their default folders (made with their parents when missing), all without ``--force``."""
    for path in CHECKPOINTS.values():
        check_checkpoint_out(path, shipped=path)
    results = DATA_DIR / "results"
    check_bench_out(results, "bench.json", default=results)
    check_bench_out(tmp_path / "reports" / "bench", "bench.json", default=tmp_path / "reports" / "bench")
    report = tmp_path / "reports"
    report.mkdir()
    (report / "index.html").write_text("<!doctype html><html></html>")
    (report / "bench").mkdir()  # bench --fast writes its results here; subfolders are left alone
    with pytest.raises(OutputError, match="--force"):
        check_report_out(report, default=tmp_path / "elsewhere")
    check_report_out(report, default=report)
    check_report_out(report, default=tmp_path / "elsewhere", force=True)
    check_student_out(tmp_path / "new", default=tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="inside notebooks/"):  # student/ is where the command runs
        check_student_out(NOTEBOOKS_DIR / "student", default=NOTEBOOKS_DIR / "student")


def test_the_default_student_folder_is_rebuilt_only_where_no_student_has_worked(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["student", "--out", str(out), "--no-hints"]) == 0
    check_student_out(out, default=out)  # fresh copies, with or without hints: rebuilt without --force
    copy = out / notebooks()[0].name
    nb = nbformat.read(copy, as_version=4)
    stub = next(cell for cell in nb.cells if "raise NotImplementedError()" in cell.source)
    stub.source = stub.source.replace(
        "raise NotImplementedError()", "return x  # a first try\n    raise NotImplementedError()"
    )
    nbformat.write(nb, copy)  # one exercise begun, the others still stubs: still a student copy
    with pytest.raises(OutputError, match=f"{copy.name} differs from a fresh copy .*; --force replaces it"):
        check_student_out(out, default=out)
    check_student_out(out, default=out, force=True)


def test_a_damaged_student_copy_is_kept_without_force_and_replaced_with_it(tmp_path, capsys):
    out = tmp_path / "student"
    out.mkdir()
    damaged = out / notebooks()[0].name
    damaged.write_text('{"cells": [{"source": "# YOUR CODE HERE"}]}')  # a student copy by its text, not a notebook
    with pytest.raises(OutputError, match=f"{damaged.name} differs from a fresh copy"):
        check_student_out(out, default=out)  # even in the folder that student rebuilds without --force
    assert main(["student", "--out", str(out), "--force"]) == 0
    assert nbformat.read(damaged, as_version=4).cells


def test_report_replaces_its_copy_of_mathjax_and_no_other_folder_of_that_name(tmp_path):
    install_mathjax(tmp_path)
    check_report_out(tmp_path, default=tmp_path)
    shutil.rmtree(tmp_path / "mathjax")
    (tmp_path / "mathjax").mkdir()
    (tmp_path / "mathjax" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="mathjax exists and is not a report's copy of MathJax"):
        check_report_out(tmp_path, default=tmp_path)


def test_bench_replaces_only_its_own_results(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps({"runs": []}))
    (tmp_path / "bench.md").write_text("# tables\n")
    (tmp_path / "seeds.json").write_text("{}")  # other results beside them are left alone
    check_bench_out(tmp_path, "bench.json", default=DATA_DIR / "results")
    (tmp_path / "bench.json").write_text(json.dumps({"name": "my package"}))
    with pytest.raises(OutputError, match="bench.json exists and is not an earlier bench's results"):
        check_bench_out(tmp_path, "bench.json", default=DATA_DIR / "results")


def _notebook(folder: Path, name: str, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in ("FAST = False", *sources)])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = dict(KERNEL)
    nbformat.write(nb, folder / name)
    return folder / name


def test_every_master_notebook_plots_and_a_page_without_figures_is_an_error(tmp_path):
    assert all(plots(path) for path in notebooks())
    assert not plots(_notebook(tmp_path, "quiet.ipynb", "print(1)"))
    drawn = _notebook(tmp_path, "01_drawn.ipynb", "plt.plot([1, 2])")  # never executed: no image output
    with pytest.raises(NotebookError, match="01_drawn.ipynb plots, but its page holds no figure"):
        render(drawn, tmp_path / "01_drawn.html", figures=plots(drawn))
    assert not (tmp_path / "01_drawn.html").exists() and not list(tmp_path.glob("*.tmp"))


def test_figures_come_out_inline_with_mplbackend_agg(tmp_path, monkeypatch, capfd):
    """The kernel inherits MPLBACKEND=Agg, which would draw nothing into the page; the report's kernels
    draw inline anyway, and print nothing of their own."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(NOTEBOOKS_DIR / "04_interactive_log_affine.ipynb", folder)  # the quickest notebook
    (tmp_path / "out").mkdir()
    [(page, _)] = render_notebooks(tmp_path / "out", fast=True, folder=folder)
    assert page.read_text().count("<img") >= 2
    assert capfd.readouterr().err.strip().splitlines() == ["notebook 1/1: 04_interactive_log_affine"]
