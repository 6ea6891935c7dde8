"""The command line. The entry point runs in real subprocesses, as a user would run it (eval, calibrate, a bad
command, a missing and a corrupt checkpoint); the many other bad inputs go through ``main`` in-process, the same
code path without ~6 s of imports each."""

import json
import subprocess
import sys

import pytest
from cli_run import assert_clean_error, run_in_process

import regptq_lite.methods  # noqa: F401  (binds coco_eval.evaluate at import: import it before a test patches that)
from regptq_lite.outputs import is_export


def run(*args):
    return subprocess.run([sys.executable, "-m", "regptq_lite", *args], capture_output=True, text=True, timeout=600)


def test_eval_text_says_when_pycocotools_has_no_ap(capsys, monkeypatch):
    """Images without an annotated object give no AP (None): the text line says so instead of failing."""
    from regptq_lite import coco_eval

    monkeypatch.setattr(coco_eval, "evaluate", lambda model, val: {"AP": None, "AP50": None, "AP75": None, "images": 1})
    result = run_in_process(capsys, "eval", "--max-images", 1)
    assert result.returncode == 0, result.stderr
    assert "AP n/a (no annotated objects)" in result.stdout


def test_out_of_memory_is_one_line(capsys, monkeypatch):
    """torch's out-of-memory message runs to several sentences; the command line gives one and exit 2."""
    import torch

    from regptq_lite import coco_eval

    def exhausted(model, val):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nIf reserved memory is large...")

    monkeypatch.setattr(coco_eval, "evaluate", exhausted)
    assert_clean_error(run_in_process(capsys, "eval", "--max-images", 1), "out of memory (CUDA out of memory)")


def test_cpu_out_of_memory_is_one_line_and_other_runtime_errors_are_not_hidden(capsys, monkeypatch):
    from regptq_lite import coco_eval

    def exhausted(model, val):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(coco_eval, "evaluate", exhausted)
    assert_clean_error(run_in_process(capsys, "eval", "--max-images", 1), "out of memory on the CPU")

    def broken(model, val):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(coco_eval, "evaluate", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_in_process(capsys, "eval", "--max-images", 1)


def test_a_pickle_that_is_no_checkpoint_is_one_line_without_torch_warnings(tmp_path):
    import pickle

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert_clean_error(run("eval", "--weights", str(plain)), "regptq_lite: error: ")


def test_eval_json_prints_one_object_with_metrics():
    result = run("eval", "--json", "--max-images", "40")  # all 500: test_shipped_checkpoint_reproduces_its_card
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert {"AP", "AP50", "AP75", "images"} <= set(metrics)
    assert 0 <= metrics["AP"] <= 100 and metrics["images"] == 40


@pytest.mark.parametrize(
    "args, needle",
    [
        (("eval", "--checkpoint", "missing.pt"), "checkpoint not found"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_the_entry_point_reports_bad_input_in_one_line(args, needle):
    assert_clean_error(run(*args), needle)


@pytest.mark.parametrize(
    "args, needle",
    [
        (("eval", "--model", "yolo"), "invalid choice"),
        (("eval", "--bogus"), "unrecognized arguments"),
        (("train", "--iters", "0"), "positive integer"),
        (("train", "--iters", "1.5"), "positive integer"),
        (("train", "--matcher", "hungarian"), "invalid choice"),
        (("train", "--model", "tiny_fasterrcnn", "--box-loss", "giou"), "apply only to tiny_retinanet"),
        (("calibrate", "--method", "regptq", "--wbits", "4", "--abits", "4", "--llaq-form", "int"), "invalid choice"),
        (
            ("calibrate", "--method", "regptq", "--wbits", "4", "--abits", "4", "--llaq-rounding", "up"),
            "invalid choice",
        ),
        (("calibrate", "--method", "brecq", "--wbits", "2", "--abits", "4", "--adaround-lr", "0"), "positive number"),
        (("calibrate", "--method", "brecq", "--wbits", "2", "--abits", "4", "--adaround-lr", "x"), "positive number"),
        ((), "required"),
        (("train", "--seed", "-1"), "argument --seed: expected a seed in 0..2**32 - 1, got -1"),
        (("toy", "--seed", str(2**32)), "argument --seed: expected a seed"),
        (("toy", "--draws", "1001"), "argument --draws: expected at most 1000 draws, got 1001"),
        (("toy", "--draws", "0"), "argument --draws: expected a positive integer, got 0"),
        (("train", "--out", ""), "argument --out: expected a path, got an empty string"),
        (("report", "--out", " "), "argument --out: expected a path"),
        (("eval", "--weights", "."), "argument --weights/--checkpoint: . is a folder; expected a checkpoint file"),
        (("eval", "--weights", ""), "argument --weights/--checkpoint: expected a checkpoint file (or 'random'), got"),
        (("eval", "--image-size", "100000"), "argument --image-size: expected a short side of at most 4096 pixels"),
        (("bench", "--rows", "regptq", "nope"), "no row 'nope' in the tiny_retinanet bench; its rows: brecq, "),
        (("bench", "--model", "tiny_fasterrcnn", "--rows", "0.0002/0.5"), "no row '0.0002/0.5'"),  # RetinaNet's only
        (("bench", "--seeds", "0", "3"), "seed(s) 3 not in the bench; expected some of 0, 1, 2"),
        (("bench", "--seeds", "x"), "argument --seeds: expected an integer"),
        (("bench", "--methods", "naive", "--rows", "brecq"), "no run of the tiny_retinanet bench matches"),
        (("bench", "--methods", "magic"), "unknown method(s) magic; expected some of naive, "),
        (("eval", "--max-images", "0"), "--val-images / --max-images must be at least 1, got 0"),
        (("eval", "--max-images", "501"), "--val-images / --max-images must be in 1..500, got 501"),
        (("bench", "--fast", "--rows", "regptq", "--seeds", "1"), "no run of the tiny_retinanet bench --fast matches"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args, needle):
    assert_clean_error(run_in_process(capsys, *args), needle)


def test_corrupt_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    assert_clean_error(run("eval", "--checkpoint", str(bad)), "cannot read checkpoint")


def test_report_writes_index_with_metrics_and_figure(fast_report):
    page = (fast_report / "index.html").read_text()
    assert "<img" in page and "data:image/png;base64," in page
    assert "AP50" in page
    assert not list(fast_report.glob("*.tmp"))


CALIB = ("calibrate", "--method", "naive")


@pytest.mark.parametrize(
    "args, needle",
    [
        (("calibrate", "--method", "magic", "--wbits", "4", "--abits", "4"), "invalid choice"),
        ((*CALIB, "--wbits", "0", "--abits", "4"), "argument --wbits: bit-width must be an integer in [2, 16], got 0"),
        (
            (*CALIB, "--wbits", "4", "--abits", "33"),
            "argument --abits: bit-width must be an integer in [2, 16], got 33",
        ),
        ((*CALIB, "--wbits", "4", "--abits", "4", "--seed", "-1"), "argument --seed: expected a seed"),
        (
            (*CALIB, "--wbits", "4", "--abits", "4", "--theta-c", "-1"),
            "argument --theta-c: expected a number in [0, 1]",
        ),
        (
            (*CALIB, "--wbits", "4", "--abits", "4", "--theta-c", "nan"),
            "argument --theta-c: expected a number in [0, 1]",
        ),
        (
            (*CALIB, "--wbits", "4", "--abits", "4", "--theta-i", "1.5"),
            "argument --theta-i: expected a number in [0, 1]",
        ),
        ((*CALIB, "--wbits", "4", "--abits", "4", "--theta-i", "x"), "argument --theta-i: expected a number in [0, 1]"),
        ((*CALIB, "--wbits", "4.5", "--abits", "4"), "expected an integer"),
        ((*CALIB, "--wbits", "4", "--abits", "4", "--calib-images", "0"), "calibration set is empty"),
        ((*CALIB, "--wbits", "4", "--abits", "4", "--calib-images", "300"), "exceeds the 256 calibration scenes"),
        ((*CALIB, "--wbits", "4", "--abits", "4", "--val-images", "0"), "must be at least 1, got 0"),
        (
            (*CALIB, "--wbits", "4", "--abits", "4", "--iters", "-1"),
            "argument --iters: expected an integer >= 0, got -1",
        ),
        ((*CALIB, "--wbits", "4", "--abits", "4", "--checkpoint", "nope.pt"), "checkpoint not found"),
        ((*CALIB, "--wbits", "4", "--abits", "4", "--save", "no/such/dir/q.pt"), "output folder does not exist"),
        ((*CALIB, "--wbits", "4"), "required"),
    ],
)
def test_calibrate_bad_input_exits_2_with_one_line(capsys, args, needle):
    assert_clean_error(run_in_process(capsys, *args), needle)


def test_calibrate_naive_json_and_integer_export(tmp_path):
    saved = tmp_path / "w8a8.pt"
    result = run(
        *CALIB, "--wbits", "8", "--abits", "8", "--calib-images", "8", "--val-images", "40", "--json", "--save", saved,
        "--theta-c", "0.1", "--no-global-loss",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # flags that only reconstruction reads are named, once, on stderr: stdout stays one JSON object
    assert "note: --method naive rounds to nearest and ignores --theta-c, --global-loss\n" in result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for key in (
        "method",
        "wbits",
        "abits",
        "AP",
        "AP50",
        "AP75",
        "fp_AP",
        "seconds",
        "iters",
        "calib_images",
        "seed",
        "regime",
    ):
        assert key in out, key
    assert (out["method"], out["wbits"], out["abits"], out["calib_images"], out["regime"]) == ("naive", 8, 8, 8, "full")
    assert out["val_images"] == 40
    assert 0 <= out["AP"] <= 100
    assert saved.is_file() and not list(tmp_path.glob("*.tmp"))
    assert is_export(saved)  # so --save ... --force may replace it, and nothing else


@pytest.mark.parametrize("command", [("eval",), (*CALIB, "--wbits", "4", "--abits", "4")])
def test_a_model_that_detects_nothing_is_one_line_before_it_is_measured(capsys, tmp_path, command):
    import torch

    from regptq_lite.detectors import load_checkpoint

    state = load_checkpoint()[0].state_dict()
    bias = next(key for key in state if key.endswith("cls_logits.bias"))
    state[bias] = torch.full_like(state[bias], -50.0)  # every score far below the detector's threshold
    silent = tmp_path / "silent.pt"
    torch.save(state, silent)
    result = run_in_process(capsys, *command, "--checkpoint", silent)
    assert_clean_error(result, f"from {silent} detects nothing on the first 8 validation image(s)")
