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
from .detectors import load_checkpoint
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
        "FGIC (Fisher-weighted local loss + filtered global loss) with LLAQ on head weights",
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


@lru_cache(maxsize=4)
def fp_metrics(model_name: str, checkpoint: str | None, val_images: int = SPLIT_SIZES["val"]) -> dict[str, float]:
    """COCO metrics of the FP detector on the first ``val_images`` validation scenes (once per process)."""
    model, _ = load_checkpoint(model_name, checkpoint)
    return evaluate(model, SceneSet("val", size=val_images))


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
    val_images: int = SPLIT_SIZES["val"],
) -> tuple[nn.Module, dict]:
    """Quantize the FP detector fully with ``method``, evaluate it on the first ``val_images`` validation
    scenes, return it and its result dict (``FAST`` holds the quick settings of tests and notebooks)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    check_bits(wbits)
    check_bits(abits)
    if iters < 0:
        raise ValueError(f"--iters must be >= 0, got {iters}")
    if calib_images < 1:
        raise ValueError(f"the calibration set is empty (--calib-images {calib_images}); need at least 1 image")
    if calib_images > SPLIT_SIZES["calib"]:
        raise ValueError(f"--calib-images {calib_images} exceeds the {SPLIT_SIZES['calib']} calibration scenes")
    if not 1 <= val_images <= SPLIT_SIZES["val"]:
        raise ValueError(f"--val-images must be in 1..{SPLIT_SIZES['val']}, got {val_images}")
    torch.manual_seed(seed)
    start = time.time()
    fp_model, _ = load_checkpoint(model_name, checkpoint)
    head_kind = head_weight_kind or METHODS[method].head_weight_kind
    qmodel = quantize_detector(fp_model, wbits, abits, regime=regime, head_weight_kind=head_kind)
    images = SceneSet("calib", size=calib_images).images()
    details = run_method(method, qmodel, images, iters, seed, overrides or {})
    metrics = evaluate(qmodel, SceneSet("val", size=val_images))
    result = {
        "method": method,
        "model": model_name,
        "wbits": wbits,
        "abits": abits,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "fp_AP": fp_metrics(model_name, None if checkpoint is None else str(checkpoint), val_images)["AP"],
        "seconds": round(time.time() - start, 1),
        "iters": iters if METHODS[method].reconstruct else 0,
        "calib_images": calib_images,
        "val_images": val_images,
        "seed": seed,
        "regime": regime,
        "head_weights": head_kind,
        "description": METHODS[method].description,
        **details,
    }
    return qmodel, result
