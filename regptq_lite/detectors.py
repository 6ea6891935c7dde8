"""Detectors by name, and the shipped checkpoint.

``build_model(name)`` returns a detector and the transform that turns an H x W x 3 uint8
image into the tensor it expects. The tiny RetinaNet is torchvision's ``RetinaNet`` class
with a small BatchNorm ResNet-style backbone and an FPN, anchors matched to the scenes; the tiny
Faster R-CNN is torchvision's ``FasterRCNN`` on the same backbone, FPN and anchors.
torchvision's own COCO detectors (``TORCHVISION_DETECTORS``) are built without weights (nothing
is downloaded); their weights come from a local state dict, or ``random`` for smoke runs.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .atomic import write_atomic
from .atss import anchor_levels, atss_match
from .scenes import CLASSES, IMAGE_SIZE, to_tensor

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
CHECKPOINTS = {name: DATA_DIR / f"{name}.pt" for name in ("tiny_retinanet", "tiny_fasterrcnn")}

Transform = Callable[[np.ndarray], torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(inplace=True),
        )
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (the addition stays in float)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class TinyBackbone(nn.Module):
    """Stem + four stages (strides 4..32); returns C3, C4, C5 through an FPN with a max-pooled P6."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96, 128), fpn_channels: int = 64) -> None:
        super().__init__()
        self.stem = _conv_bn(3, widths[0], stride=2)
        self.layer1 = nn.Sequential(_conv_bn(widths[0], widths[1], 2), BasicBlock(widths[1]))
        self.layer2 = nn.Sequential(_conv_bn(widths[1], widths[2], 2), BasicBlock(widths[2]))
        self.layer3 = nn.Sequential(_conv_bn(widths[2], widths[3], 2), BasicBlock(widths[3]))
        self.layer4 = nn.Sequential(_conv_bn(widths[3], widths[4], 2), BasicBlock(widths[4]))
        self.fpn = FeaturePyramidNetwork(list(widths[2:]), fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c3 = self.layer2(self.layer1(self.stem(x)))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return self.fpn(OrderedDict([("p3", c3), ("p4", c4), ("p5", c5)]))


def tiny_anchor_generator() -> AnchorGenerator:
    """Anchors for strides 8, 16, 32, 64: sizes 12 to ~150 px, aspect ratios 1:2, 1:1, 2:1."""
    sizes = tuple(tuple(base * 2 ** (i / 3) for i in range(3)) for base in (12, 24, 48, 96))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


HEAD_GROUPS = 8
MATCHERS = ("iou", "atss")


class TinyRetinaNet(RetinaNet):
    """torchvision's RetinaNet whose training matches anchors to objects by IoU thresholds
    (``matcher = "iou"``, torchvision's own) or by ATSS (``"atss"``, see ``atss.py``).
    Inference is the same either way."""

    matcher = MATCHERS[0]

    def compute_loss(self, targets: list[dict[str, torch.Tensor]], head_outputs: dict[str, torch.Tensor], anchors):
        if self.matcher == "iou":
            return super().compute_loss(targets, head_outputs, anchors)
        levels = anchor_levels(anchors[0], self.anchor_generator.sizes)  # every image has the batch's anchors
        matched = [
            atss_match(target["boxes"], image_anchors, levels) for target, image_anchors in zip(targets, anchors)
        ]
        return self.head.compute_loss(targets, head_outputs, anchors, matched)


def tiny_retinanet() -> TinyRetinaNet:
    """The tiny RetinaNet: ~1.2 M parameters, inputs 128 x 128 in [0, 1].

    The head is torchvision's RetinaNetHead with GroupNorm after each tower conv, as in
    torchvision's RetinaNet v2: trained from scratch without it, the head learns about five
    times slower (AP 0.6 vs 3.1 after 300 iterations, see README). GroupNorm stays in float
    under quantization, like the element-wise additions.
    """
    anchors = tiny_anchor_generator()
    backbone = TinyBackbone()
    num_classes = len(CLASSES) + 1
    head = RetinaNetHead(
        backbone.out_channels,
        anchors.num_anchors_per_location()[0],
        num_classes,
        norm_layer=partial(nn.GroupNorm, HEAD_GROUPS),
    )
    return TinyRetinaNet(
        backbone,
        num_classes=num_classes,
        head=head,
        min_size=IMAGE_SIZE,
        max_size=IMAGE_SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        anchor_generator=anchors,
        score_thresh=0.05,
        detections_per_img=100,
    )


ROI_SIZE = 7
BOX_HEAD_WIDTH = 256


def tiny_fasterrcnn() -> FasterRCNN:
    """The tiny Faster R-CNN: ~1.8 M parameters, inputs 128 x 128 in [0, 1].

    The tiny RetinaNet's backbone, FPN and anchors, an RPN on P3-P6 and torchvision's two-layer
    MLP box head on 7 x 7 RoIAlign features. RoIs are pooled from P3 only: FPN's level rule
    (level 4 at 224 px) sends every box of a 128 px image to P3 anyway. One sample per bin and
    64 sampled RoIs per image halve the training step on a CPU (RoIAlign's backward dominates).
    """
    anchors = tiny_anchor_generator()
    backbone = TinyBackbone()
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(["p3"], output_size=ROI_SIZE, sampling_ratio=1),
        box_head=TwoMLPHead(backbone.out_channels * ROI_SIZE**2, BOX_HEAD_WIDTH),
        box_predictor=FastRCNNPredictor(BOX_HEAD_WIDTH, len(CLASSES) + 1),
        min_size=IMAGE_SIZE,
        max_size=IMAGE_SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=64,
        box_score_thresh=0.05,
        box_detections_per_img=100,
    )


TORCHVISION_DETECTORS = (
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
)
RANDOM_WEIGHTS = "random"


def torchvision_detector(name: str) -> Callable[[], nn.Module]:
    """A builder of torchvision's COCO detector ``name`` (91 labels) without any weights."""
    return partial(torchvision.models.detection.__dict__[name], weights=None, weights_backbone=None)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "tiny_retinanet": tiny_retinanet,
    "tiny_fasterrcnn": tiny_fasterrcnn,
    **{name: torchvision_detector(name) for name in TORCHVISION_DETECTORS},
}


def is_two_stage(model: nn.Module) -> bool:
    """A region-proposal detector (Faster R-CNN): RPN plus RoI heads."""
    return hasattr(model, "rpn") and hasattr(model, "roi_heads")


def set_image_size(model: nn.Module, side: int) -> None:
    """Make ``model``'s transform resize images to short side ``side`` (long side at most
    1333/800 of it, torchvision's ratio)."""
    if side < 32:
        raise ValueError(f"--image-size must be at least 32, got {side}")
    model.transform.min_size = (side,)
    model.transform.max_size = round(side * 1333 / 800)


def build_model(name: str) -> tuple[nn.Module, Transform]:
    """A fresh detector by name and its input transform (uint8 image -> float tensor)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    torch.manual_seed(0)
    return MODELS[name](), to_tensor


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def card_path(checkpoint: Path) -> Path:
    """The JSON card that sits beside a checkpoint."""
    return checkpoint.with_suffix(".json")


def load_checkpoint(name: str = "tiny_retinanet", path: str | Path | None = None) -> tuple[nn.Module, Transform]:
    """Build ``name`` and load its weights from ``path`` (default: the shipped checkpoint; ``random``:
    the seeded initialisation); eval mode.

    BatchNorm's ``num_batches_tracked`` counters may be missing (torchvision's COCO weights use
    frozen BatchNorm, which has none); every other key must match.
    """
    model, transform = build_model(name)
    if str(path) == RANDOM_WEIGHTS:
        return model.eval(), transform
    path = Path(path) if path is not None else CHECKPOINTS.get(name)
    if path is None:
        raise CheckpointError(f"no shipped checkpoint for {name!r}; pass --weights PATH (a state dict) or random")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # a shape mismatch
        raise CheckpointError(f"checkpoint {path} does not fit model {name!r}") from None
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise CheckpointError(
            f"checkpoint {path} does not fit model {name!r}: {len(missing)} missing and"
            f" {len(unexpected)} unexpected keys (first: {first})"
        )
    return model.eval(), transform


def save_checkpoint(model: nn.Module, path: Path, card: dict) -> None:
    """Write the weights and their JSON card atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(model.state_dict(), tmp))
    write_atomic(card_path(path), lambda tmp: tmp.write_text(json.dumps(card, indent=2) + "\n"))
