"""Synthetic detection scenes in COCO format.

Each scene is a small RGB image with a few filled shapes of five classes, drawn over a
shaded, noisy, cluttered background. Shapes span sizes from ~10 px to most of the image
and aspect ratios from 1:4 to 4:1, and later shapes may partly hide earlier ones, so that
box regression is a real task. Boxes are tight around each object's *visible* pixels.

Every image is a pure function of ``(split seed, index)``: the same call gives the same
pixels and boxes on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

IMAGE_SIZE = 128
CLASSES = ("box", "disc", "triangle", "cross", "ring")
SPLIT_SEEDS = {"train": 0, "calib": 1, "val": 2}
SPLIT_SIZES = {"calib": 256, "val": 500}

MIN_SIDE, MAX_SIDE = 10.0, 0.9 * IMAGE_SIZE
MAX_ASPECT = 4.0
MAX_OBJECTS = 6
MIN_VISIBLE = 0.5


@dataclass(frozen=True)
class Scene:
    """One image (H x W x 3, uint8) with its boxes (x0, y0, x1, y1), class indices, visible
    areas in pixels, and ``owner``: the index of the object each pixel shows (-1: background)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    areas: np.ndarray
    owner: np.ndarray


def _shape_mask(kind: int, cx: float, cy: float, w: float, h: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean mask of one shape centred at (cx, cy) with extent w x h on the pixel-centre grid."""
    u = (xx - cx) / (w / 2)
    v = (yy - cy) / (h / 2)
    inside = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    name = CLASSES[kind]
    if name == "box":
        return inside
    if name == "disc":
        return u**2 + v**2 <= 1
    if name == "triangle":  # apex at the top, base at the bottom
        return inside & (np.abs(u) <= (v + 1) / 2)
    if name == "cross":
        return inside & ((np.abs(u) <= 0.34) | (np.abs(v) <= 0.34))
    r2 = u**2 + v**2  # ring
    return (r2 <= 1) & (r2 >= 0.45**2)


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A shaded background: a random base colour with a linear gradient."""
    base = rng.uniform(0.15, 0.85, size=3)
    slope = rng.uniform(-0.25, 0.25, size=(2, 3))
    grad = (xx[..., None] / IMAGE_SIZE - 0.5) * slope[0] + (yy[..., None] / IMAGE_SIZE - 0.5) * slope[1]
    return base + grad


def _add_clutter(rng: np.random.Generator, img: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> None:
    """Thin lines and small specks that are not objects."""
    for _ in range(rng.integers(0, 5)):
        x0, y0, x1, y1 = rng.uniform(0, IMAGE_SIZE, size=4)
        length = np.hypot(x1 - x0, y1 - y0) + 1e-6
        dist = np.abs((y1 - y0) * xx - (x1 - x0) * yy + x1 * y0 - y1 * x0) / length
        t = ((xx - x0) * (x1 - x0) + (yy - y0) * (y1 - y0)) / length**2
        img[(dist < 0.6) & (t >= 0) & (t <= 1)] = rng.uniform(0, 1, size=3)
    for _ in range(rng.integers(0, 8)):
        cx, cy = rng.uniform(0, IMAGE_SIZE, size=2)
        r = rng.uniform(1.0, 2.5)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r**2] = rng.uniform(0, 1, size=3)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour at least 0.45 (L1 over RGB) away from the colour it is drawn over."""
    for _ in range(50):
        colour = rng.uniform(0, 1, size=3)
        if np.abs(colour - under).sum() >= 0.45:
            return colour
    return 1.0 - under


def make_scene(seed: int, index: int) -> Scene:
    """Draw scene ``index`` of the stream with seed ``seed``; deterministic in both."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64) + 0.5
    img = _background(rng, yy, xx)
    _add_clutter(rng, img, yy, xx)

    owner = np.full((IMAGE_SIZE, IMAGE_SIZE), -1, dtype=np.int64)
    full_area: list[int] = []
    labels: list[int] = []
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        for _attempt in range(20):
            kind = int(rng.integers(len(CLASSES)))
            side = np.exp(rng.uniform(np.log(MIN_SIDE * 1.6), np.log(MAX_SIDE)))
            aspect = np.exp(rng.uniform(-np.log(MAX_ASPECT), np.log(MAX_ASPECT)))
            w = float(np.clip(side * np.sqrt(aspect), MIN_SIDE, MAX_SIDE))
            h = float(np.clip(side / np.sqrt(aspect), MIN_SIDE, MAX_SIDE))
            cx = rng.uniform(w / 2, IMAGE_SIZE - w / 2)
            cy = rng.uniform(h / 2, IMAGE_SIZE - h / 2)
            mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
            win = (slice(int(cy - h / 2), int(np.ceil(cy + h / 2))), slice(int(cx - w / 2), int(np.ceil(cx + w / 2))))
            mask[win] = _shape_mask(kind, cx, cy, w, h, yy[win], xx[win])
            trial = np.where(mask, len(labels), owner)
            visible = np.bincount(trial[trial >= 0].ravel(), minlength=len(labels) + 1)
            if all(visible[j] >= MIN_VISIBLE * full_area[j] for j in range(len(labels))) and mask.sum() > 0:
                break
        else:
            continue
        under = img[int(cy), int(cx)]
        img[mask] = _contrasting_colour(rng, under)
        owner = trial
        full_area.append(int(mask.sum()))
        labels.append(kind)

    img = img + rng.normal(0, rng.uniform(0.01, 0.06), size=img.shape)
    image = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)

    boxes, areas = [], []
    for j in range(len(labels)):
        ys, xs = np.nonzero(owner == j)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        areas.append(len(xs))
    return Scene(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        areas=np.asarray(areas, dtype=np.float32),
        owner=owner.astype(np.int8),
    )


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


def target_of(scene: Scene) -> dict[str, torch.Tensor]:
    """The torchvision detection target of a scene (labels are 1-based; 0 is background)."""
    return {"boxes": torch.from_numpy(scene.boxes), "labels": torch.from_numpy(scene.labels) + 1}


class SceneSet:
    """A fixed, indexable split of scenes (``calib`` or ``val``) with its COCO dict."""

    eval_batch = 50  # images per forward pass in evaluation
    label_to_category = None  # labels are the category ids

    def __init__(self, split: str, size: int | None = None, seed: int | None = None) -> None:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
        self.split = split
        self.seed = SPLIT_SEEDS[split] if seed is None else seed
        self.size = SPLIT_SIZES.get(split, 0) if size is None else size
        if self.size < 1:
            raise ValueError(f"a scene set needs at least one image, got size={self.size}")
        self._cache: dict[int, Scene] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Scene:
        if not 0 <= index < self.size:
            raise IndexError(index)
        if index not in self._cache:
            self._cache[index] = make_scene(self.seed, index)
        return self._cache[index]

    @property
    def image_ids(self) -> list[int]:
        return list(range(self.size))

    def images(self, indices: range | list[int] | None = None) -> list[torch.Tensor]:
        """The images as float tensors."""
        return [to_tensor(self[i].image) for i in (indices if indices is not None else range(self.size))]

    @cached_property
    def coco(self) -> dict:
        """Ground truth as a COCO instances dict (image ids are the indices, category ids 1-based)."""
        return coco_dict([self[i] for i in range(self.size)])


def coco_dict(scenes: list[Scene]) -> dict:
    """A COCO instances dict for a list of scenes; image id = position in the list."""
    images, annotations = [], []
    for image_id, scene in enumerate(scenes):
        images.append({"id": image_id, "width": IMAGE_SIZE, "height": IMAGE_SIZE, "file_name": f"{image_id:06d}.png"})
        for box, label, area in zip(scene.boxes, scene.labels, scene.areas):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def train_batch(step: int, batch_size: int, seed: int = SPLIT_SEEDS["train"]) -> list[Scene]:
    """Batch ``step`` of the endless training stream: scenes step*B .. step*B + B - 1."""
    return [make_scene(seed, step * batch_size + i) for i in range(batch_size)]
