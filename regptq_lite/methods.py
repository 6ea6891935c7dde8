"""PTQ methods as short recipes on the shared reconstruction machinery, and the ``calibrate``
pipeline that runs and scores one (PAPER.md sections 5 and 7).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch
from torch import nn

from .coco_eval import evaluate
from .coco_folder import CocoFolder
from .detectors import TORCHVISION_DETECTORS, load_checkpoint, set_image_size
from .observe import init_quantizers
from .qmodel import quantize_detector, set_quant
from .quantizers import check_bits
from .recon import ReconSettings, reconstruct
from .scenes import SPLIT_SIZES, SceneSet


@dataclass(frozen=True)
class Method:
    """A PTQ method: how the head's weights are quantized, and how units are reconstructed.

    ``recon`` overrides :class:`ReconSettings`; ``reconstruct=False`` means observers and
    round-to-nearest only.
    """

    description: str
    head_weight_kind: str = "uniform"
    granularity: str = "block"
    recon: dict = field(default_factory=dict)
    reconstruct: bool = True


METHODS: dict[str, Method] = {
    "naive": Method("observers (L2.4 clipping search) and round-to-nearest", reconstruct=False),
    "adaround": Method(
        "layer-wise AdaRound, MSE loss, fixed activation steps", granularity="layer", recon={"learn_steps": False}
    ),
    "brecq": Method("block-wise AdaRound + LSQ steps, Fisher-weighted MSE", recon={"fisher": True}),
    "qdrop": Method(
        "block-wise AdaRound + LSQ steps, activations dropped to float with p = 0.5", recon={"drop_prob": 0.5}
    ),
    "regptq": Method(
        "FGIC (Fisher-weighted local loss + filtered global loss on every unit), LLAQ head weights with learned"
        " rounding of their exponents",
        head_weight_kind="llaq",
        recon={"fisher": True, "global_loss": True},
    ),
}


def run_method(
    method: str, qmodel: nn.Module, images: list[torch.Tensor], iters: int, seed: int, overrides: dict
) -> dict:
    """Initialise observers, then reconstruct as ``method`` says; returns the settings used."""
    recipe = METHODS[method]
    init_quantizers(qmodel, images)
    if not recipe.reconstruct:
        set_quant(qmodel, weights=True, activations=True)
        return {"settings": {"observer": "mse", "rounding": "nearest"}}
    settings = ReconSettings(iters=iters, seed=seed, **{**recipe.recon, **overrides})
    stats = reconstruct(qmodel, images, settings, recipe.granularity)
    return {"settings": {**asdict(settings), "granularity": recipe.granularity}, "units": stats}


FAST = {"iters": 20, "calib_images": 32, "val_images": 100}


def data(
    model_name: str,
    calib_images: int,
    val_images: int | None,
    coco_root: str | None = None,
    image_side: int | None = None,
) -> tuple[list[torch.Tensor], SceneSet | CocoFolder]:
    """Calibration images and the evaluation set: scenes for the tiny detectors, a COCO folder
    (``coco_root``) for torchvision's; ``val_images`` None means all of them."""
    if val_images is not None and val_images < 1:
        raise ValueError(f"--val-images / --max-images must be at least 1, got {val_images}")
    if model_name in TORCHVISION_DETECTORS:
        if coco_root is None:
            raise ValueError(f"{model_name} is evaluated on COCO: pass --coco-root DIR (val2017/ and annotations/)")
        folder = CocoFolder(coco_root, calib_images=calib_images, max_images=val_images)
        return folder.calibration_images(image_side), folder
    if coco_root is not None:
        raise ValueError(f"--coco-root is for torchvision's COCO detectors, not {model_name}")
    if calib_images > SPLIT_SIZES["calib"]:
        raise ValueError(f"--calib-images {calib_images} exceeds the {SPLIT_SIZES['calib']} calibration scenes")
    if val_images is not None and val_images > SPLIT_SIZES["val"]:
        raise ValueError(f"--val-images / --max-images must be in 1..{SPLIT_SIZES['val']}, got {val_images}")
    calib = SceneSet("calib", size=calib_images).images() if calib_images else []
    return calib, SceneSet("val", size=val_images)


def load_detector(
    model_name: str, checkpoint: str | None, image_size: int | None = None, device: str = "cpu"
) -> nn.Module:
    """The FP detector (eval mode) on ``device``, its transform set to ``image_size`` if given."""
    model, _ = load_checkpoint(model_name, checkpoint)
    if image_size is not None:
        set_image_size(model, image_size)
    return model.to(device)


@lru_cache(maxsize=4)
def fp_metrics(
    model_name: str,
    checkpoint: str | None,
    val_images: int | None = SPLIT_SIZES["val"],
    coco_root: str | None = None,
    calib_images: int = 0,
    image_size: int | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """COCO metrics of the FP detector on the evaluation set that ``data`` gives (once per process)."""
    model = load_detector(model_name, checkpoint, image_size, device)
    if coco_root is None:
        return evaluate(model, SceneSet("val", size=val_images))
    return evaluate(model, CocoFolder(coco_root, calib_images=calib_images, max_images=val_images))


def calibrate(
    method: str,
    wbits: int,
    abits: int,
    iters: int = 0,
    calib_images: int = SPLIT_SIZES["calib"],
    seed: int = 0,
    regime: str = "full",
    model_name: str = "tiny_retinanet",
    checkpoint: str | None = None,
    head_weight_kind: str | None = None,
    overrides: dict | None = None,
    val_images: int | None = SPLIT_SIZES["val"],
    coco_root: str | None = None,
    image_size: int | None = None,
    device: str = "cpu",
) -> tuple[nn.Module, dict]:
    """Quantize the FP detector fully with ``method``, evaluate it on the first ``val_images``
    evaluation images (None: all), return it and its result dict (``FAST`` holds the quick settings
    of tests and notebooks). torchvision's detectors need ``coco_root``; ``checkpoint`` may be
    ``random`` for smoke runs."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    check_bits(wbits)
    check_bits(abits)
    if iters < 0:
        raise ValueError(f"--iters must be >= 0, got {iters}")
    if calib_images < 1:
        raise ValueError(f"the calibration set is empty (--calib-images {calib_images}); need at least 1 image")
    torch.manual_seed(seed)
    start = time.time()
    fp_model = load_detector(model_name, checkpoint, image_size, device)
    images, val = data(model_name, calib_images, val_images, coco_root, fp_model.transform.min_size[0])
    images = [x.to(device) for x in images]
    head_kind = head_weight_kind or METHODS[method].head_weight_kind
    qmodel = quantize_detector(fp_model, wbits, abits, regime=regime, head_weight_kind=head_kind).to(device)
    calibration_start = time.time()
    details = run_method(method, qmodel, images, iters, seed, overrides or {})
    calibration_seconds = time.time() - calibration_start
    metrics = evaluate(qmodel, val)
    fp = fp_metrics(
        model_name,
        None if checkpoint is None else str(checkpoint),
        val_images,
        None if coco_root is None else str(coco_root),
        calib_images if coco_root is not None else 0,
        image_size,
        device,
    )
    result = {
        "method": method,
        "model": model_name,
        "wbits": wbits,
        "abits": abits,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "fp_AP": fp["AP"],
        "seconds": round(time.time() - start, 1),
        "calibration_seconds": round(calibration_seconds, 1),
        "iters": iters if METHODS[method].reconstruct else 0,
        "calib_images": calib_images,
        "val_images": metrics["images"],
        "seed": seed,
        "regime": regime,
        "head_weights": head_kind,
        "description": METHODS[method].description,
        **details,
    }
    if coco_root is not None:
        result.update(coco_root=str(coco_root), image_size=fp_model.transform.min_size[0], device=device)
    return qmodel, result
