"""The toy study's questions asked of the real detector head (PAPER.md section 2, on the tiny RetinaNet).

- ``head_weight_table``: per conv of the classification and regression towers, the weight shape
  statistics of ``toy`` (excess kurtosis, Laplace vs Gaussian log-likelihood, share cut by the
  MSE-optimal INT4 clip);
- ``head_activation_table``: the same for the inputs of those convs on a batch of scenes;
- ``branch_noise``: AP when only the box branch or only the class branch gets weight noise,
  relative to each layer's own weight spread (noise of size sigma x std(w): a Gaussian's std, a uniform's
  half-width);
- ``branch_quantization``: AP when only one branch of the head is quantized (naive, uniform), and
  ``branch_costs``: from those, the AP each branch costs on its own;
- ``box_drift``: how far a quantized detector's boxes moved from the float detector's;
- ``iou_step_removals``: what FGIC's IoU step removes beyond its confidence step, at several theta_I;
- ``part_quantization``: where a calibrated detector loses its AP: each part (backbone, neck, class
  branch, box branch) quantized alone, and everything but that part quantized;
- ``part_costs``: from those rows, the AP each part costs on its own and the AP leaving it float wins back;
- ``part_sizes``: how many layers and weights each part holds;
- ``llaq_channel_params``, ``rounding_gradients``: one LLAQ grid's per-channel parameters, and which of them
  get a gradient under each way of rounding the exponent;
- ``llaq_drift``: how far calibration moved each LLAQ layer's grid;
- ``regularizer_curve``: AdaRound's regulariser of one rounding against its soft value h.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.ops import box_iou

from .coco_eval import evaluate
from .fgic import THETA_C, filter_view, paired_iou
from .llaq import PARAMS, LogAffineQuantizer, LogAffineTuner, llaq_of, psi
from .observe import init_quantizers, layer_inputs
from .qmodel import quant_layers, quantize_detector, set_quant
from .quantizers import LearnedRounding
from .scenes import SceneSet
from .toy import distribution_stats, noise

BRANCHES = {"class": "classification_head", "box": "regression_head"}


def head_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The head's convs by name (``head.`` prefix dropped), towers first, prediction layers last."""
    return {name: m for name, m in model.head.named_modules() if isinstance(m, nn.Conv2d)}


def branch_of(name: str) -> str:
    """``class`` or ``box``: which tower a head conv belongs to."""
    return next(branch for branch, prefix in BRANCHES.items() if name.startswith(prefix))


def head_weight_table(model: nn.Module) -> list[dict]:
    """One row per head conv: name, branch, and the weight statistics."""
    return [
        {"layer": name, "branch": branch_of(name), **distribution_stats(conv.weight.detach())}
        for name, conv in head_convs(model).items()
    ]


@torch.no_grad()
def head_inputs(model: nn.Module, images: list[torch.Tensor], max_values: int = 200_000) -> dict[str, torch.Tensor]:
    """The input activations of every head conv over ``images`` (a seeded subsample of at most ``max_values``)."""
    return layer_inputs(model, head_convs(model), images, max_values=max_values)


def head_activation_table(model: nn.Module, images: list[torch.Tensor]) -> list[dict]:
    """One row per head conv: name, branch, the share of exact zeros (ReLU) and the input statistics."""
    return [
        {"layer": name, "branch": branch_of(name), "zeros": float((x == 0).float().mean()), **distribution_stats(x)}
        for name, x in head_inputs(model, images).items()
    ]


def perturbed(model: nn.Module, branch: str, sigma: float, kind: str, seed: int) -> nn.Module:
    """A copy of ``model`` whose ``branch`` convs (tower and prediction layer) get noise of size ``sigma`` x the
    conv's weight std (``toy.noise``: a Gaussian's std, a uniform's half-width)."""
    if branch not in BRANCHES:
        raise ValueError(f"unknown branch {branch!r}; expected class or box")
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, conv in head_convs(twin).items():
            if branch_of(name) == branch:
                conv.weight += noise(conv.weight.shape, sigma * conv.weight.std().item(), kind, g)
    return twin


def branch_noise(
    model: nn.Module,
    sigmas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3),
    kind: str = "uniform",
    images: int = 100,
    draws: int = 1,
    seed: int = 0,
) -> dict[str, list[list[float]]]:
    """{"class"|"box": [[sigma, AP, AP50, AP75], ...]} on the first ``images`` validation scenes."""
    scenes = SceneSet("val", size=images)
    out: dict[str, list[list[float]]] = {}
    for branch in BRANCHES:
        rows = []
        for s in sigmas:
            runs = [evaluate(perturbed(model, branch, s, kind, seed + d), scenes) for d in range(draws)]
            rows.append([s] + [sum(r[k] for r in runs) / draws for k in ("AP", "AP50", "AP75")])
        out[branch] = rows
    return out


def branch_layers(qmodel: nn.Module, branch: str) -> set[str]:
    """Names of the quantized layers of one head branch (tower and prediction layer)."""
    prefix = f"head.{BRANCHES[branch]}."
    return {name for name, _ in quant_layers(qmodel) if name.startswith(prefix)}


def evaluate_quantized(qmodel: nn.Module, names: set[str] | None, scenes: SceneSet) -> dict[str, float]:
    """COCO metrics with quantization on in the named layers only (None: all of them)."""
    set_quant(qmodel, weights=False, activations=False)
    set_quant(qmodel, weights=True, activations=True, names=names)
    return evaluate(qmodel, scenes)


def branch_quantization(
    model: nn.Module, wbits: int, abits: int, calib_images: int = 64, val_images: int = 200
) -> dict[str, dict[str, float]]:
    """COCO metrics with nothing, only the class branch, only the box branch, or everything quantized.

    Naive (MSE-observer, round-to-nearest) quantizers on ``calib_images`` calibration scenes; the
    branches keep the full-quantization policy (prediction layers stay float), the rest stays float.
    """
    qmodel = quantize_detector(model, wbits, abits, regime="full")
    init_quantizers(qmodel, SceneSet("calib", size=calib_images).images())
    scenes = SceneSet("val", size=val_images)
    cases = {"none": set(), "class": branch_layers(qmodel, "class"), "box": branch_layers(qmodel, "box"), "all": None}
    return {case: evaluate_quantized(qmodel, names, scenes) for case, names in cases.items()}


def branch_costs(
    branch: dict[str, dict[str, dict[str, float]]], metrics: tuple[str, ...] = ("AP", "AP50", "AP75")
) -> dict[tuple[str, str], dict[str, float]]:
    """From ``branch_quantization`` results by setting (e.g. ``{"W2A4": ...}``): per setting and metric, the
    metric lost with only the class or only the box branch quantized (against nothing quantized)."""
    return {
        (setting, metric): {b: cases["none"][metric] - cases[b][metric] for b in ("class", "box")}
        for setting, cases in branch.items()
        for metric in metrics
    }


DRIFT_SCORE, DRIFT_IOU = 0.5, 0.5  # ``box_drift``'s defaults: the detections it counts, the IoU that finds a pair


def box_drift(
    fp_outputs: list[dict], q_outputs: list[dict], score_thresh: float = DRIFT_SCORE, match_iou: float = DRIFT_IOU
) -> dict[str, float]:
    """How far the quantized detector's boxes moved, over detections scoring at least ``score_thresh``.

    Each FP detection is paired with the quantized detection of the same class on the same image that overlaps
    it most; it is ``found`` when that IoU is at least ``match_iou`` (close to an AP50 hit, though COCO pairs
    boxes one to one and here two FP boxes may pair with one quantized box). Returns the two counts of
    detections, the share of FP detections found, and over the found pairs their mean IoU and the mean
    distance of their four edges in pixels (``edge_shift``); nan where nothing was found."""
    ious, shifts, counts = [], [], {"fp_detections": 0, "detections": 0}
    for fp, q in zip(fp_outputs, q_outputs, strict=True):
        keep_fp, keep_q = fp["scores"] >= score_thresh, q["scores"] >= score_thresh
        fp_boxes, q_boxes = fp["boxes"][keep_fp], q["boxes"][keep_q]
        counts["fp_detections"] += len(fp_boxes)
        counts["detections"] += len(q_boxes)
        if not len(fp_boxes) or not len(q_boxes):
            continue
        same_class = fp["labels"][keep_fp][:, None] == q["labels"][keep_q][None, :]
        best, match = (box_iou(fp_boxes, q_boxes) * same_class).max(dim=1)
        hit = best >= match_iou
        ious.append(best[hit])
        shifts.append((fp_boxes[hit] - q_boxes[match[hit]]).abs().mean(dim=1))
    found = torch.cat(ious) if ious else torch.zeros(0)
    edges = torch.cat(shifts) if shifts else torch.zeros(0)
    nan = float("nan")
    return {
        **counts,
        "found": len(found) / counts["fp_detections"] if counts["fp_detections"] else nan,
        "iou": found.mean().item() if len(found) else nan,
        "edge_shift": edges.mean().item() if len(edges) else nan,
    }


def detector_parts(qmodel: nn.Module) -> dict[str, set[str]]:
    """The quantized layers of a RetinaNet-style detector by part: backbone, neck (FPN), class and box branch."""
    names = [name for name, _ in quant_layers(qmodel)]
    return {
        "backbone": {n for n in names if n.startswith("backbone.") and not n.startswith("backbone.fpn.")},
        "neck": {n for n in names if n.startswith("backbone.fpn.")},
        "class branch": branch_layers(qmodel, "class"),
        "box branch": branch_layers(qmodel, "box"),
    }


def part_quantization(qmodel: nn.Module, scenes: SceneSet) -> list[dict]:
    """COCO metrics of a calibrated detector with quantization on in one part only, and in all
    but one part (that part left float); the first row has nothing, the last everything quantized.
    Quantization is switched fully on again afterwards."""
    parts = detector_parts(qmodel)
    everything = set().union(*parts.values())
    cases = [("none", "-", set())]
    cases += [(part, "only", names) for part, names in parts.items()]
    cases += [(part, "all but", everything - names) for part, names in parts.items()]
    cases.append(("all", "-", None))
    rows = [
        {"part": part, "quantized": mode, **evaluate_quantized(qmodel, names, scenes)} for part, mode, names in cases
    ]
    set_quant(qmodel, weights=True, activations=True)
    return rows


def part_costs(rows: list[dict], metric: str = "AP") -> dict[str, dict[str, float]]:
    """From ``part_quantization`` rows, per part: ``"only"``, the ``metric`` lost when only that part is
    quantized (against nothing quantized), and ``"all but"``, the ``metric`` won back when only that part is
    left float (against everything quantized)."""
    by_case = {(r["part"], r["quantized"]): r[metric] for r in rows}
    parts = [r["part"] for r in rows if r["quantized"] == "only"]
    return {
        "only": {p: by_case[("none", "-")] - by_case[(p, "only")] for p in parts},
        "all but": {p: by_case[(p, "all but")] - by_case[("all", "-")] for p in parts},
    }


def part_sizes(qmodel: nn.Module) -> dict[str, dict[str, int]]:
    """Per part of ``detector_parts``: its ``"layers"`` (those ``quant_layers`` wraps, the float prediction convs
    included) and the ``"weights"`` they hold."""
    return {
        part: {"layers": len(names), "weights": sum(qmodel.get_submodule(n).layer.weight.numel() for n in names)}
        for part, names in detector_parts(qmodel).items()
    }


def llaq_channel_params(grid: LogAffineQuantizer) -> dict[str, list[float]]:
    """An LLAQ grid's (m, k_pos, a_pos, k_neg, a_neg), one value per output channel."""
    return {name: getattr(grid, name).detach().flatten().tolist() for name in PARAMS}


def rounding_gradients(
    grid: LogAffineQuantizer, weight: torch.Tensor, noise: float = 0.01, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Which of the grid's offsets (``LogAffineTuner``'s ``da_pos``, ``dk_pos``, ``dm``) get a gradient, per
    way of rounding the exponent (``"nearest"``, straight-through; ``"learned"``): the summed |gradient| of the
    squared error against the weight plus Gaussian noise of std ``noise``, over the weights that no clamp
    touches (exponent more than half a code inside the grid's range)."""
    exponent = psi(weight, weight >= grid.m, grid.grid())
    unclamped = (exponent > 0.5) & (exponent < grid.emax - 0.5)
    target = weight + noise * torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed))
    grads = {}
    for rounding in ("nearest", "learned"):
        tuner = LogAffineTuner(grid, weight, rounding)
        ((tuner(weight) - target).pow(2) * unclamped).sum().backward()
        grads[rounding] = {name: getattr(tuner, name).grad.abs().sum().item() for name in ("da_pos", "dk_pos", "dm")}
    return grads


def llaq_drift(qmodel: nn.Module) -> list[dict]:
    """Per LLAQ layer and side of a calibrated model: channel means of k and a at MSE init and after
    calibration, how far a moved per channel (mean |shift| in codes: channels that move in opposite directions
    leave the channel mean where it was), and the mean shift of m in channel spreads (weight standard deviations)."""
    rows = []
    for name, layer in quant_layers(qmodel):
        learned = llaq_of(layer.wq)
        if learned is None:
            continue
        weight = layer.layer.weight.detach()
        fresh = LogAffineQuantizer(learned.bits, channel_axis=0)
        fresh.init(weight)
        spread = weight.flatten(1).std(1).reshape(fresh.m.shape)
        for side in ("pos", "neg"):
            rows.append(
                {
                    "layer": name,
                    "side": side,
                    **{f"{p}_init": getattr(fresh, f"{p}_{side}").mean().item() for p in ("k", "a")},
                    **{f"{p}_learned": getattr(learned, f"{p}_{side}").mean().item() for p in ("k", "a")},
                    "a_moved": (getattr(learned, f"a_{side}") - getattr(fresh, f"a_{side}")).abs().mean().item(),
                    "m_shift": ((learned.m - fresh.m).abs() / spread).mean().item(),
                }
            )
    return rows


def regularizer_curve(betas: tuple[float, ...] = (20, 8, 2), points: int = 201) -> dict[float, tuple[list, list]]:
    """Per beta, ``(h, regulariser)`` on ``points`` values of h from 0 to 1: ``LearnedRounding.regularizer`` of
    one rounding that starts at each h."""
    h = torch.linspace(0, 1, points)
    return {
        beta: (h.tolist(), [LearnedRounding(value.reshape(1)).regularizer(beta).item() for value in h])
        for beta in betas
    }


def iou_step_removals(
    fp_model: nn.Module,
    qmodel: nn.Module,
    images: list[torch.Tensor],
    theta_is: tuple[float, ...],
    theta_c: float = THETA_C,
) -> dict[float, float]:
    """Per theta_I, the share of all anchors over ``images`` that pass FGIC's confidence step (theta_C) and
    fail its IoU step: what the IoU step removes. Each image runs through both models once (``fgic.filter_view``);
    the IoU of each anchor's pair is then held against every theta_I."""
    views = [filter_view(fp_model, qmodel, image, theta_c) for image in images]
    ious = [paired_iou(view["fp_boxes"], view["q_boxes"]) for view in views]
    anchors = sum(len(iou) for iou in ious)
    return {
        theta_i: sum(int((view["confident"] & ~(iou >= theta_i)).sum()) for view, iou in zip(views, ious)) / anchors
        for theta_i in theta_is
    }
