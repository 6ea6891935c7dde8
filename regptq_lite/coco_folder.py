"""A COCO-format folder (``val2017/`` + ``annotations/instances_val2017.json``) for torchvision's
COCO detectors: the evaluation images, the calibration images, and the category mapping.

torchvision's COCO models predict labels 1..90 in the order of their ``categories`` list (91 names
with ``__background__`` and ``N/A`` gaps); in the official annotation file a category's id equals
that label. Categories are matched by name, so a folder with other ids (a subset, a re-numbered
export) maps correctly, and a name torchvision does not know is an error.

The paper calibrates on COCO train2017; here the calibration images are the folder's *last*
``calib_images`` images (by image id) and are left out of the evaluation, so that one folder is enough.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

from .scenes import to_tensor

ANNOTATIONS = Path("annotations") / "instances_val2017.json"
IMAGES = Path("val2017")
COCO_LABELS: list[str] = list(RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
IMAGE_FIELDS = ("id", "file_name")
CATEGORY_FIELDS = ("id", "name")
ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")  # what pycocotools reads


def _entries(data: dict, key: str, fields: tuple[str, ...], where: Path) -> None:
    """Every entry of ``data[key]`` is an object with ``fields``, its ids (``id``, ``*_id``) integers; else one
    error naming the first entry that is not."""
    for i, entry in enumerate(data[key]):
        if not isinstance(entry, dict) or not all(field in entry for field in fields):
            raise ValueError(f"{where}: {key}[{i}] needs the fields {', '.join(fields)}")
        for field in (f for f in fields if f == "id" or f.endswith("_id")):
            if not isinstance(entry[field], int) or isinstance(entry[field], bool):
                raise ValueError(f"{where}: {key}[{i}] has {field} {entry[field]!r}; COCO ids are integers")


def _is_box(bbox: object) -> bool:
    """A COCO box: [x, y, width, height], four finite numbers, width and height not negative."""
    if not (isinstance(bbox, list) and len(bbox) == 4):
        return False
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return False
    return bbox[2] >= 0 and bbox[3] >= 0


def check_instances(data: dict, where: Path) -> None:
    """The parts of a COCO instances file that evaluation reads, checked before any work starts (pycocotools
    would fail on them only at the end of a run): every image, category and annotation has its fields, with
    integer ids, every box is [x, y, width, height], every annotation's category is listed. One error names
    the first entry that is not so."""
    for key, fields in (("images", IMAGE_FIELDS), ("categories", CATEGORY_FIELDS), ("annotations", ANNOTATION_FIELDS)):
        _entries(data, key, fields, where)
    categories = {category["id"] for category in data["categories"]}
    for annotation in data["annotations"]:
        if not _is_box(annotation["bbox"]):
            raise ValueError(
                f"{where}: annotation {annotation['id']} has bbox {annotation['bbox']!r}; expected"
                " [x, y, width, height] with width and height >= 0"
            )
        if annotation["category_id"] not in categories:
            raise ValueError(
                f"{where}: annotation {annotation['id']} has category_id {annotation['category_id']!r}, which is not"
                " among the file's categories"
            )


def category_map(categories: list[dict]) -> dict[int, int]:
    """COCO category id -> torchvision label, matched by name."""
    mapping = {}
    for category in categories:
        name = category.get("name")
        if name not in COCO_LABELS or name == "N/A":
            raise ValueError(f"category {name!r} (id {category.get('id')}) is not one of torchvision's COCO classes")
        mapping[int(category["id"])] = COCO_LABELS.index(name)
    return mapping


class CocoFolder:
    """The images of a COCO-format folder, split into evaluation and calibration images.

    ``images(indices)`` gives evaluation images at their own size (the detector's transform resizes
    them, as in torchvision's reference evaluation); ``calibration_images(side)`` gives the held-out
    images resized so their short side is ``side`` and centre-cropped to ``side`` x ``side``, because
    calibration batches must share one size (one set of anchors).
    """

    eval_batch = 2  # images per forward pass in evaluation

    def __init__(self, root: str | Path, calib_images: int = 0, max_images: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"COCO folder not found: {self.root}")
        annotations = self.root / ANNOTATIONS
        if not annotations.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {annotations}")
        if not (self.root / IMAGES).is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.root / IMAGES}")
        try:
            data = json.loads(annotations.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read {annotations}: {type(err).__name__}") from None
        keys = ("images", "annotations", "categories")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys):
            raise ValueError(f"{annotations} is not a COCO instances file (needs images, annotations, categories)")
        check_instances(data, annotations)
        if not data["images"]:
            raise ValueError(f"{annotations} lists no images")
        records = sorted(data["images"], key=lambda r: r["id"])
        self.label_to_category = {label: cid for cid, label in category_map(data["categories"]).items()}
        if calib_images >= len(records):
            raise ValueError(
                f"--calib-images {calib_images} leaves no evaluation image in {self.root} ({len(records)} images)"
            )
        evaluation = records[: len(records) - calib_images]
        self._eval = evaluation[:max_images] if max_images is not None else evaluation
        self._calib = records[len(records) - calib_images :] if calib_images else []
        self._data = data
        missing = [
            r["file_name"] for r in self._eval + self._calib if not (self.root / IMAGES / r["file_name"]).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) listed in {annotations} are missing from {self.root / IMAGES},"
                f" e.g. {missing[0]}"
            )

    def __len__(self) -> int:
        return len(self._eval)

    @property
    def image_ids(self) -> list[int]:
        return [r["id"] for r in self._eval]

    def _read(self, record: dict) -> np.ndarray:
        path = self.root / IMAGES / record["file_name"]
        if not path.is_file():  # removed since the folder was opened
            raise FileNotFoundError(f"image listed in the annotations is missing: {path}")
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))

    def images(self, indices: range | list[int] | None = None) -> list[torch.Tensor]:
        """Evaluation images as float tensors in [0, 1], at their own size."""
        indices = range(len(self)) if indices is None else indices
        return [to_tensor(self._read(self._eval[i])) for i in indices]

    def calibration_images(self, side: int) -> list[torch.Tensor]:
        """The held-out calibration images, short side resized to ``side``, centre-cropped square."""
        out = []
        for record in self._calib:
            image = to_tensor(self._read(record))
            h, w = image.shape[-2:]
            scale = side / min(h, w)
            size = (max(side, round(h * scale)), max(side, round(w * scale)))
            image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
            top, left = (size[0] - side) // 2, (size[1] - side) // 2
            out.append(image[:, top : top + side, left : left + side].clamp(0, 1))
        return out

    @cached_property
    def coco(self) -> dict:
        """The ground truth of the evaluation images as a COCO instances dict."""
        ids = set(self.image_ids)
        return {
            "images": list(self._eval),
            "annotations": [a for a in self._data["annotations"] if a["image_id"] in ids],
            "categories": self._data["categories"],
        }
