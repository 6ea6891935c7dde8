"""``python -m regptq_lite``: train, eval, calibrate, report.

Bad input never ends in a traceback: one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from .coco_folder import CocoFolder
    from .scenes import SceneSet

EXIT_BAD_INPUT = 2
MAX_IMAGE_SIDE = 4096  # --image-size at most: torchvision's COCO detectors use 800
MAX_DRAWS = 1000  # toy --draws at most: 1000 draws took 43 s on 2 cores


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _image_size(text: str) -> int:
    side = _positive_int(text)
    if side > MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(f"expected a short side of at most {MAX_IMAGE_SIDE} pixels, got {side}")
    return side


def _draws(text: str) -> int:
    draws = _positive_int(text)
    if draws > MAX_DRAWS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_DRAWS} draws, got {draws}")
    return draws


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..2**32 - 1, got {value}")
    return value


def _bits(text: str) -> int:
    from .quantizers import check_bits

    try:
        return check_bits(_integer(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def _checkpoint(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a checkpoint file (or 'random'), got an empty string")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; expected a checkpoint file (or 'random')")
    return text


def _cmd_train(args: argparse.Namespace) -> None:
    from .detectors import CHECKPOINTS
    from .outputs import check_checkpoint_out
    from .provenance import command_line
    from .train import train

    out = args.out or CHECKPOINTS[args.model]
    check_checkpoint_out(out, shipped=CHECKPOINTS[args.model], force=args.force)

    card = train(
        args.model,
        iters=args.iters,
        batch_size=args.batch_size,
        seed=args.seed,
        matcher=args.matcher,
        box_loss=args.box_loss,
        head_init=args.head_init,
        threads=args.threads,
        out=out,
        command=command_line(),
    )
    print(json.dumps(card, indent=2))


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    return name


def _ap(value: float | None) -> str:
    """An AP figure for the text output: pycocotools has none (None) when the images hold no annotated object."""
    return "n/a (no annotated objects)" if value is None else f"{value:.1f}"


DETECTION_CHECK_IMAGES = 8  # validation images a model must detect something on before it is measured


def _require_detections(args: argparse.Namespace, val: SceneSet | CocoFolder, model: nn.Module | None = None) -> None:
    """One line and exit 2 when the FP detector from ``--weights`` detects nothing on the first images of ``val``:
    its AP would be 0 by construction, and as FGIC's teacher it leaves the filter nothing to keep. ``model`` is
    that detector if already built. ``--weights random`` is a smoke run of the code path, not checked."""
    import torch

    from .detectors import RANDOM_WEIGHTS
    from .methods import load_detector

    if args.checkpoint == RANDOM_WEIGHTS:
        return
    model = model or load_detector(args.model, args.checkpoint, args.image_size, _device(args.device))
    device, few = next(model.parameters()).device, range(min(DETECTION_CHECK_IMAGES, len(val)))
    with torch.inference_mode():  # one batch, no progress bar: a check, not an evaluation
        outputs = model([image.to(device) for image in val.images(few)])
    if not any(len(out["boxes"]) for out in outputs):
        raise UsageError(
            f"the model from {args.checkpoint or 'the shipped checkpoint'} detects nothing on the first {len(few)} "
            "validation image(s) (no score above its threshold): there is no AP to measure; check the weights"
        )


def _cmd_eval(args: argparse.Namespace) -> None:
    from .coco_eval import evaluate
    from .methods import data, load_detector

    _, val = data(args.model, 0, args.max_images, args.coco_root)  # a bad folder fails before a ResNet-50 is built
    model = load_detector(args.model, args.checkpoint, args.image_size, _device(args.device))
    _require_detections(args, val, model)
    metrics = evaluate(model, val)
    if args.json:
        print(json.dumps({"model": args.model, **metrics}))
    else:
        print(
            f"{args.model}: AP {_ap(metrics['AP'])}  AP50 {_ap(metrics['AP50'])}  AP75 {_ap(metrics['AP75'])}"
            f"  ({metrics['images']} validation images)"
        )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


NAIVE_IGNORES = ("iters", "theta_c", "theta_i", "global_loss", "llaq_form", "llaq_rounding", "adaround_lr")


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from .bench import CALIB_IMAGES, WEIGHT_LR, decided_budget
    from .detectors import TORCHVISION_DETECTORS
    from .export import save_integer
    from .methods import FAST, calibrate, data
    from .outputs import check_export_out
    from .scenes import SPLIT_SIZES

    if args.save is not None:
        check_export_out(args.save, force=args.force)
    if args.method == "naive":
        unused = [f"--{name.replace('_', '-')}" for name in NAIVE_IGNORES if getattr(args, name) is not None]
        if unused:
            print(f"note: --method naive rounds to nearest and ignores {', '.join(unused)}", file=sys.stderr)
    every_image = None if args.model in TORCHVISION_DETECTORS else SPLIT_SIZES["val"]
    quick = FAST if args.fast else {"iters": decided_budget(), "calib_images": CALIB_IMAGES, "val_images": every_image}
    for key, value in {**quick, "adaround_lr": WEIGHT_LR}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    _, val = data(args.model, 0, args.val_images, args.coco_root)  # a bad folder fails before a ResNet-50 is built
    _require_detections(args, val)  # before minutes of calibration against a teacher that detects nothing
    overrides = {
        key: value
        for key, value in (
            ("theta_c", args.theta_c),
            ("theta_i", args.theta_i),
            ("global_loss", args.global_loss),
            ("llaq_form", args.llaq_form),
            ("llaq_rounding", args.llaq_rounding),
            ("weight_lr", args.adaround_lr),
        )
        if value is not None
    }
    qmodel, result = calibrate(
        args.method,
        args.wbits,
        args.abits,
        iters=args.iters,
        calib_images=args.calib_images,
        seed=args.seed,
        regime=args.regime,
        model_name=args.model,
        checkpoint=args.checkpoint,
        head_weight_kind=args.head_quantizer,
        overrides=overrides,
        val_images=args.val_images,
        coco_root=args.coco_root,
        image_size=args.image_size,
        device=_device(args.device),
    )
    if args.save is not None:
        result["saved"] = str(save_integer(qmodel, args.save))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['method']} W{result['wbits']}A{result['abits']} ({result['regime']}): AP {_ap(result['AP'])}"
            f" (FP {_ap(result['fp_AP'])}), AP50 {_ap(result['AP50'])}, AP75 {_ap(result['AP75'])}"
            f" in {result['seconds']:.0f} s"
        )


def _cmd_bench(args: argparse.Namespace) -> None:
    from .atomic import write_atomic
    from .bench import RESULTS_DIR, SEEDS, planned_runs, result_name, run_bench, select
    from .bench_tables import markdown
    from .methods import METHODS
    from .outputs import check_bench_out
    from .report import REPORTS_DIR

    default = REPORTS_DIR / "bench" if args.fast else RESULTS_DIR
    out = args.out if args.out is not None else default
    check_bench_out(out, result_name(args.model), default=default)
    unknown = set(args.methods or []) - set(METHODS)
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(sorted(unknown))}; expected some of {', '.join(METHODS)}")
    planned = planned_runs(args.model, args.fast)
    labels = list(dict.fromkeys(r["row"] for r in planned))
    unknown = [row for row in args.rows or [] if row not in labels]
    if unknown:
        raise UsageError(
            f"no row {', '.join(map(repr, unknown))} in the {args.model} bench; its rows: {', '.join(labels)}"
        )
    unknown = sorted(set(args.seeds or []) - set(SEEDS))
    if unknown:
        raise UsageError(
            f"seed(s) {', '.join(map(str, unknown))} not in the bench; expected some of {', '.join(map(str, SEEDS))}"
        )
    if not select(planned, args.methods, args.rows, args.seeds):
        raise UsageError(f"no run of the {args.model} bench{' --fast' if args.fast else ''} matches these "
                         "--methods, --rows and --seeds")  # fmt: skip
    path = out / result_name(args.model)

    def write_markdown(result: dict) -> str:
        text = markdown(result)
        write_atomic(path.with_suffix(".md"), lambda tmp: tmp.write_text(text))
        return text

    text = write_markdown(
        run_bench(
            fast=args.fast,
            out_dir=out,
            methods=args.methods,
            model=args.model,
            after_run=write_markdown,
            rows=args.rows,
            seeds=args.seeds,
        )
    )
    print(text)
    print(f"wrote {path} and {path.with_suffix('.md')}")


def _cmd_toy(args: argparse.Namespace) -> None:
    from .toy import summary

    result = summary(seed=args.seed, draws=args.draws)
    if args.json:
        print(json.dumps(result))
        return
    for model in result["noise"]:
        last = {kind: rows[-1][1] for kind, rows in result["noise"][model].items()}
        scale = result["scale"][model]
        print(
            f"{model}: share of task lost at s={result['sigmas'][-1]}: "
            + ", ".join(f"{kind} {v:.3f}" for kind, v in last.items())
            + f"; INT4 clip ratio: MSE-optimal {scale['mse_opt']:.2f}, task-optimal {scale['task_opt']:.2f};"
            f" kurtosis {result['kurtosis'][model]:.2f}"
        )


def _cmd_report(args: argparse.Namespace) -> None:
    from .outputs import check_report_out
    from .report import REPORTS_DIR, build_report

    out = args.out or REPORTS_DIR
    check_report_out(out, default=REPORTS_DIR, force=args.force)
    os.environ["TQDM_DISABLE"] = "1"  # one line a notebook on the terminal, and no bar while the index is built
    print(f"wrote {build_report(out, fast=args.fast)}")


def _cmd_student(args: argparse.Namespace) -> None:
    from .notebooks_io import STUDENT_DIR, write_students
    from .outputs import check_student_out

    check_student_out(args.out, default=STUDENT_DIR, force=args.force)
    for path in write_students(args.out, hints=args.hints):
        print(f"wrote {path}")


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --weights, --coco-root, --image-size, --device: shared by eval and calibrate."""
    from .detectors import MODELS

    p.add_argument("--model", default="tiny_retinanet", choices=sorted(MODELS))
    p.add_argument(
        "--weights",
        "--checkpoint",
        dest="checkpoint",
        type=_checkpoint,
        default=None,
        help="state dict file (default: the shipped checkpoint), or 'random' for a smoke run",
    )
    p.add_argument("--coco-root", default=None, help="COCO folder with val2017/ and annotations/ (torchvision models)")
    p.add_argument(
        "--image-size", type=_image_size, default=None, help="short side the detector resizes to (default: its own)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")


def _force_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=f"replace {what} (never a file of another kind)")


def make_parser() -> argparse.ArgumentParser:
    from .detectors import CHECKPOINTS, MATCHERS
    from .llaq import FORMS
    from .methods import METHODS
    from .notebooks_io import STUDENT_DIR
    from .qmodel import REGIMES
    from .recon import LLAQ_ROUNDINGS
    from .train import BOX_LOSSES, HEAD_INITS

    parser = _Parser(prog="python -m regptq_lite", description="Reg-PTQ workbook commands.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a tiny detector from scratch on the scenes (deterministic)")
    p.add_argument("--model", default="tiny_retinanet", choices=sorted(CHECKPOINTS))
    p.add_argument("--iters", type=_positive_int, default=None, help="steps (default: the shipped schedule)")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--matcher", default=MATCHERS[0], choices=MATCHERS, help="anchor matching (tiny_retinanet)")
    p.add_argument("--box-loss", default=BOX_LOSSES[0], choices=BOX_LOSSES, help="box loss (tiny_retinanet)")
    p.add_argument("--head-init", default=HEAD_INITS[0], choices=HEAD_INITS, help="head tower init (tiny_retinanet)")
    p.add_argument("--threads", type=_positive_int, default=2, help="CPU threads (fixed for reproducibility)")
    p.add_argument("--out", type=_path, default=None, help="checkpoint path (default: the shipped one)")
    _force_argument(p, "an existing checkpoint at --out")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("eval", help="COCO metrics of the FP detector on the validation scenes or a COCO folder")
    _model_arguments(p)
    p.add_argument("--max-images", type=_integer, default=None, help="evaluate the first N images (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_eval)

    p = sub.add_parser("calibrate", help="quantize the detector fully with one PTQ method and evaluate it")
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--wbits", type=_bits, required=True, help="weight bits (2-16)")
    p.add_argument("--abits", type=_bits, required=True, help="activation bits (2-16)")
    p.add_argument(
        "--iters",
        type=_non_negative_int,
        default=None,
        help="steps per unit (default: the bench budget; naive ignores it)",
    )
    p.add_argument("--calib-images", type=_integer, default=None, help="calibration images (default 128, as the bench)")
    p.add_argument(
        "--val-images",
        "--max-images",
        dest="val_images",
        type=_integer,
        default=None,
        help="images evaluated (default: the 500 validation scenes; on COCO all but the calibration images)",
    )
    p.add_argument(
        "--fast", action="store_true", help="quick settings: 20 iters, 32 calibration, 100 validation scenes"
    )
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--regime", default="full", choices=list(REGIMES))
    _model_arguments(p)
    p.add_argument("--head-quantizer", choices=["uniform", "llaq"], default=None, help="default: the method's")
    p.add_argument("--theta-c", type=_threshold, default=None, help="FGIC confidence filter (default 2e-4)")
    p.add_argument("--theta-i", type=_threshold, default=None, help="FGIC IoU filter (default 0.1)")
    p.add_argument("--global-loss", action=argparse.BooleanOptionalAction, default=None, help="FGIC's L_G term")
    p.add_argument(
        "--adaround-lr",
        type=_positive_float,
        default=None,
        help="Adam's learning rate for the learned roundings (default: the bench's, 1e-2; AdaRound's is 1e-3)",
    )
    p.add_argument(
        "--llaq-form", choices=FORMS, default=None, help="LLAQ grid: float k, or the integer shift form (default float)"
    )
    p.add_argument(
        "--llaq-rounding", choices=LLAQ_ROUNDINGS, default=None, help="LLAQ exponents: learned (default) or nearest"
    )
    p.add_argument("--save", type=_path, default=None, help="write the integer form (codes, scales) here")
    _force_argument(p, "an existing integer export at --save")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_calibrate)

    p = sub.add_parser("bench", help="benchmark figures; writes bench.json and bench.md")
    p.add_argument("--fast", action="store_true", help="fewer calibration images, tiny model only")
    p.add_argument("--methods", nargs="+", default=None, help="run only these methods (default: all)")
    p.add_argument("--rows", nargs="+", default=None, help="run only these rows, by label (default: all)")
    p.add_argument("--seeds", nargs="+", type=_seed, default=None, help="run only these seeds (default: all)")
    p.add_argument(
        "--model",
        default="tiny_retinanet",
        choices=sorted(CHECKPOINTS),
        help="tiny_fasterrcnn: its methods x bits table, in bench_tiny_fasterrcnn.json",
    )
    p.add_argument(
        "--out", type=_path, default=None, help="output folder (default: data/results, --fast: reports/bench)"
    )
    p.set_defaults(run=_cmd_bench)

    p = sub.add_parser("toy", help="the paper's toy study: regressor vs classifier under noise and quantization")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--draws", type=_draws, default=20, help=f"noise draws per point (1-{MAX_DRAWS})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_cmd_toy)

    p = sub.add_parser("report", help="execute the notebooks and write the HTML report to reports/")
    p.add_argument("--fast", action="store_true", help="FAST notebook settings (a quick run)")
    p.add_argument("--out", type=_path, default=None, help="output folder (default: reports/)")
    _force_argument(p, "an existing report in --out")
    p.set_defaults(run=_cmd_report)

    p = sub.add_parser("student", help="write student copies of the notebooks (solutions removed)")
    p.add_argument("--out", type=_path, default=STUDENT_DIR, help="output folder (default: student/)")
    p.add_argument(
        "--hints",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="whether a failed check shows the formula (--no-hints: only the mistake, for graded work)",
    )
    _force_argument(p, "existing student copies in --out")
    p.set_defaults(run=_cmd_student)
    return parser


def main(argv: list[str] | None = None) -> int:
    import torch

    # Denormal floats slow CPU convolutions ~70x; flush them to zero before any thread pool starts
    # (threads inherit the setting from the thread that creates them).
    torch.set_flush_denormal(True)
    # torch.load warns about pickles that torch.save did not write; the load then fails with a one-line error
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    from .detectors import CheckpointError
    from .notebooks_io import NotebookError

    try:
        args = make_parser().parse_args(argv)
        args.run(args)
    except (UsageError, CheckpointError, ValueError, OSError, NotebookError) as err:  # OSError: unreadable files
        print(f"regptq_lite: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except torch.OutOfMemoryError as err:  # torch's own message runs to a paragraph
        print(
            f"regptq_lite: error: out of memory ({str(err).split('.')[0]}); try fewer --calib-images or a smaller"
            " --image-size",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except RuntimeError as err:
        if "can't allocate memory" not in str(err):  # the CPU's out-of-memory error; anything else is a bug
            raise
        print("regptq_lite: error: out of memory on the CPU; try fewer --calib-images or a smaller --image-size",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("regptq_lite: interrupted", file=sys.stderr)
        return 130
    return 0
