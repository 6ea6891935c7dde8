"""Where the commands may write: one rule for every output path, checked before any work starts.

- A command never overwrites a file of another kind than it writes. ``train`` writes a checkpoint (a torch
  file with its JSON card beside it), ``calibrate --save`` an integer export (a torch file without a card).
  ``bench``, ``report`` and ``student`` write into a folder whose files (subfolders are left alone) are all
  of their kind, or none: results (JSON and markdown; ``bench*.json`` and its table must be an earlier
  bench's), a report (HTML pages and executed notebooks, and its copy of MathJax in ``mathjax/``), student
  copies (notebooks with stubs, no solutions).
- It replaces its own kind only with ``--force`` or where the README documents it: ``train`` rebuilding a
  shipped checkpoint, ``bench`` resuming or restarting its results, ``report`` and ``student`` rebuilding
  their default folders (but ``student`` keeps a copy that holds a student's work without ``--force``).
- Nothing is written into ``notebooks/``, ``data/`` or the package, but for those documented defaults.
- The folder written into must exist and be writable; a missing output folder is made if its parent
  exists (a documented default: with its parents). A link is written through (``write_atomic``), so its
  target must be writable and outside the protected folders, and a link to nothing is refused.

A path that breaks the rule raises ``OutputError``: on the command line, one line and exit code 2.
"""

from __future__ import annotations

import json
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from .detectors import DATA_DIR, card_path
from .notebooks_io import NOTEBOOKS_DIR, SOLUTION, STUB, holds_work
from .offline_math import FOLDER as MATHJAX_FOLDER
from .offline_math import is_mathjax_copy

PACKAGE_DIR = Path(__file__).resolve().parent
PROTECTED = {NOTEBOOKS_DIR: "the master notebooks", DATA_DIR: "the shipped data", PACKAGE_DIR: "the package"}
TORCH_SUFFIXES = (".pt", ".pth")
TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # torch.save: zip or pickle

Recognise = Callable[[Path], bool]


class OutputError(ValueError):
    """An output path that a command must not, or cannot, write to."""


def _head(path: Path, size: int = 64) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError:  # unreadable: of no kind a command writes
        return b""


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def is_torch_file(path: Path) -> bool:
    """A file that ``torch.save`` wrote: a zip archive or a pickle."""
    return _head(path).startswith(TORCH_MAGIC)


def is_card(path: Path) -> bool:
    """A checkpoint's JSON card: it names the model and its validation metrics."""
    card = _json_object(path) if path.is_file() else None
    return card is not None and {"model", "val"} <= card.keys()


def is_checkpoint(path: Path) -> bool:
    """A torch file with its card beside it (``train``)."""
    return is_torch_file(path) and is_card(card_path(path))


def is_export(path: Path) -> bool:
    """An integer export (``calibrate --save``): a torch file without a card whose every entry is a layer's
    integer form, with its kind and bit-widths. Any other pickle or zip is someone else's file."""
    if not is_torch_file(path) or is_card(card_path(path)):
        return False
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about pickles it did not write
        try:
            layers = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError):  # not a torch file of tensors
            return False
    return (
        isinstance(layers, dict)
        and bool(layers)
        and all(isinstance(layer, dict) and {"kind", "wbits", "abits"} <= layer.keys() for layer in layers.values())
    )


def is_bench_results(path: Path) -> bool:
    """A benchmark's JSON (an object with its ``runs``), or the markdown table beside one (``bench``)."""
    if path.suffix == ".md":
        return path.with_suffix(".json").is_file() and is_bench_results(path.with_suffix(".json"))
    result = _json_object(path)
    return result is not None and "runs" in result


def is_results_file(path: Path) -> bool:
    """A markdown file or a JSON object: what a folder of results holds (``bench``)."""
    return path.suffix == ".md" or (path.suffix == ".json" and _json_object(path) is not None)


def is_report_file(path: Path) -> bool:
    """An HTML page, or a notebook that papermill executed (``report``)."""
    if path.suffix == ".html":
        return _head(path).lstrip().lower().startswith((b"<!doctype html", b"<html"))
    nb = _json_object(path) if path.suffix == ".ipynb" else None
    return nb is not None and "papermill" in nb.get("metadata", {})


def is_student_copy(path: Path) -> bool:
    """A notebook with exercise stubs and no solution block (``student``)."""
    nb = _json_object(path) if path.suffix == ".ipynb" else None
    if nb is None:
        return False
    source = "\n".join("".join(cell.get("source", "")) for cell in nb.get("cells", []))
    return STUB in source and not SOLUTION.search(source)


def _same(path: Path, other: Path | None) -> bool:
    return other is not None and path.resolve() == Path(other).resolve()


def _protected(path: Path) -> Path | None:
    """The protected folder (``PROTECTED``) that ``path``, links resolved, is or lies in; None if none."""
    resolved = path.resolve()
    return next((folder for folder in PROTECTED if resolved == folder or folder in resolved.parents), None)


def _refuse_protected(path: Path, option: str, allowed: Path | None = None) -> None:
    """Refuse a path in ``notebooks/``, ``data/`` or the package, unless it is the ``allowed`` one."""
    folder = None if _same(path, allowed) else _protected(path)
    if folder is not None:
        raise OutputError(f"{option} {path}: inside {folder.name}/ ({PROTECTED[folder]}); write somewhere else")


def _refuse_bad_link(path: Path, where: str) -> None:
    """Refuse a symbolic link that a write would go through wrongly (``write_atomic`` writes to its target): one
    that points nowhere (the user's link would become a file), one from outside a protected folder into it, or
    a link to a file whose folder has no write permission (found before the work, not after it). A link to a
    folder is written into, not replaced: its target's own permission is checked where the folder is."""
    if not path.is_symlink():
        return
    if not path.exists():
        raise OutputError(f"{where} is a link to a missing {path.readlink()}; not replacing it")
    target = _protected(path)
    if target is not None and _protected(path.parent) != target:
        raise OutputError(f"{where} is a link into {target.name}/ ({PROTECTED[target]}); not writing through it")
    if not path.is_dir():
        _writable(path.resolve().parent, f"{where} (a link to {path.resolve()})")


def _writable(folder: Path, where: str) -> None:
    """Refuse a folder without write permission: read-only by its mode (which does not stop root, so the mode
    is read), or failing a trial write (another owner, a read-only file system)."""
    try:
        allowed = bool(folder.stat().st_mode & 0o222)
        if allowed:
            with tempfile.TemporaryFile(dir=folder):
                pass
    except OSError:
        allowed = False
    if not allowed:
        raise OutputError(f"{where}: no permission to write in {folder}")


def _check_files(files: dict[Path, Recognise], kind: str, option: str, path: Path, replace: bool) -> None:
    """Each of ``files`` that exists must be of ``kind``; replacing one needs ``replace``."""

    def where(file: Path) -> str:
        return f"{option} {path}" if file == path else f"{option} {path}: {file.name}"

    for file, is_own in files.items():
        _refuse_bad_link(file, where(file))
        if file.is_dir():
            raise OutputError(f"{where(file)} is a folder, not {kind}")
        if file.exists() and not is_own(file):
            raise OutputError(f"{where(file)} exists and is not {kind}; not overwriting it")
    existing = [file for file in files if file.exists()]
    if existing and not replace:
        raise OutputError(f"{where(existing[0])} exists ({kind}); --force replaces it")


def _check_file_output(
    path: Path, option: str, kind: str, files: dict[Path, Recognise], force: bool, default: Path | None
) -> None:
    """A torch file to write at ``path`` (with ``files``, itself included, beside it)."""
    documented = _same(path, default)
    _refuse_protected(path, option, allowed=default)
    _check_files(files, kind, option, path, replace=force or documented)
    if path.suffix not in TORCH_SUFFIXES:
        raise OutputError(f"{option} {path}: {kind} is a {' or '.join(TORCH_SUFFIXES)} file")
    if not path.parent.is_dir():
        raise OutputError(f"{option} {path}: output folder does not exist: {path.parent}")
    _writable(path.parent, f"{option} {path}")


def _check_folder_output(folder: Path, option: str, default: Path, allowed: Path | None) -> bool:
    """A folder to write in: it exists or can be made, is writable and is not protected (but for ``allowed``).
    Whether it is the documented ``default``."""
    documented = _same(folder, default)
    _refuse_protected(folder, option, allowed)
    _refuse_bad_link(folder, f"{option} {folder}")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file, where a folder is needed")
    if folder.is_dir():
        _writable(folder, f"{option} {folder}")
    elif not documented:
        if not folder.parent.is_dir():
            raise OutputError(f"{option} {folder}: output folder does not exist: {folder.parent}")
        _writable(folder.parent, f"{option} {folder}")
    return documented


def _check_folder_of(
    folder: Path, kind: str, is_own: Recognise, force: bool, default: Path, allowed: Path | None = None
) -> None:
    """A folder whose files (its subfolders are left alone) are all of ``kind``, or none."""
    documented = _check_folder_output(folder, "--out", default, allowed)
    files = [p for p in sorted(folder.iterdir()) if not p.is_dir()] if folder.is_dir() else []
    _check_files(dict.fromkeys(files, is_own), kind, "--out", folder, replace=force or documented)


def check_checkpoint_out(path: Path, shipped: Path, force: bool = False) -> None:
    """``train --out``: a checkpoint and its card; the shipped checkpoint is rebuilt without ``--force``."""
    files = {path: is_checkpoint, card_path(path): is_card}
    _check_file_output(path, "--out", "a checkpoint", files, force, shipped)


def check_export_out(path: Path, force: bool = False) -> None:
    """``calibrate --save``: an integer export."""
    _check_file_output(path, "--save", "an integer export", {path: is_export}, force, None)


def check_bench_out(folder: Path, name: str, default: Path) -> None:
    """``bench --out``: a folder of results, where ``name`` and its markdown table, if there, are an earlier
    bench's. The bench resumes or restarts them (documented), so it needs no ``--force``."""
    _check_folder_of(folder, "a results file", is_results_file, force=True, default=default, allowed=default)
    results = folder / name
    files = {results: is_bench_results, results.with_suffix(".md"): is_bench_results}
    _check_files(files, "an earlier bench's results", "--out", folder, replace=True)


def check_report_out(folder: Path, default: Path, force: bool = False) -> None:
    """``report --out``: a folder of HTML pages and executed notebooks, and the report's copy of MathJax in its
    subfolder ``mathjax`` (a subfolder of that name must be an earlier report's)."""
    _check_folder_of(folder, "part of a report", is_report_file, force, default)
    mathjax = folder / MATHJAX_FOLDER
    if mathjax.exists() and not is_mathjax_copy(mathjax):
        raise OutputError(f"--out {folder}: {MATHJAX_FOLDER} exists and is not a report's copy of MathJax")


def check_student_out(folder: Path, default: Path, force: bool = False) -> None:
    """``student --out``: a folder of student copies; one that holds a student's work (``holds_work``) is
    replaced only with ``--force``, in the default folder too."""
    _check_folder_of(folder, "a student copy", is_student_copy, force, default)
    if force or not folder.is_dir():
        return
    worked = [path for path in sorted(folder.glob("*.ipynb")) if holds_work(path)]
    if worked:
        raise OutputError(
            f"--out {folder}: {worked[0].name} differs from a fresh copy (a student's work, or an older master's "
            "copy); --force replaces it"
        )
