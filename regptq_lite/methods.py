"""PTQ methods as short recipes, and the ``calibrate`` pipeline that runs and scores one.

A recipe takes a quantized detector (quantizers in place, switched off) and the calibration
images, and leaves it calibrated with quantization switched on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

from .coco_eval import evaluate
from .detectors import load_checkpoint
from .observe import init_quantizers
from .qmodel import quantize_detector, set_quant
from .quantizers import check_bits
from .scenes import SPLIT_SIZES, SceneSet


def naive(qmodel: nn.Module, images: list[torch.Tensor], iters: int, seed: int) -> dict:
    """Observers (MSE clipping search) and round-to-nearest; nothing is learned."""
    init_quantizers(qmodel, images)
    set_quant(qmodel, weights=True, activations=True)
    return {"observer": "mse (L2.4 clipping search)", "rounding": "nearest"}


Recipe = Callable[[nn.Module, list[torch.Tensor], int, int], dict]
METHODS: dict[str, Recipe] = {"naive": naive}


@lru_cache(maxsize=4)
def fp_metrics(model_name: str, checkpoint: str | None) -> dict[str, float]:
    """COCO metrics of the FP detector on the validation scenes (computed once per process)."""
    model, _ = load_checkpoint(model_name, checkpoint)
    return evaluate(model, SceneSet("val"))


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
) -> tuple[nn.Module, dict]:
    """Quantize the FP detector fully with ``method``, evaluate it, return it and its result dict."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    check_bits(wbits)
    check_bits(abits)
    if calib_images < 1:
        raise ValueError(f"the calibration set is empty (--calib-images {calib_images}); need at least 1 image")
    if calib_images > SPLIT_SIZES["calib"]:
        raise ValueError(f"--calib-images {calib_images} exceeds the {SPLIT_SIZES['calib']} calibration scenes")
    torch.manual_seed(seed)
    start = time.time()
    fp_model, _ = load_checkpoint(model_name, checkpoint)
    qmodel = quantize_detector(fp_model, wbits, abits, regime=regime)
    images = SceneSet("calib", size=calib_images).images()
    settings = METHODS[method](qmodel, images, iters, seed)
    metrics = evaluate(qmodel, SceneSet("val"))
    result = {
        "method": method,
        "model": model_name,
        "wbits": wbits,
        "abits": abits,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "fp_AP": fp_metrics(model_name, None if checkpoint is None else str(checkpoint))["AP"],
        "seconds": round(time.time() - start, 1),
        "iters": iters,
        "calib_images": calib_images,
        "seed": seed,
        "regime": regime,
        **settings,
    }
    return qmodel, result
