"""The real-detector path: a COCO-format folder, torchvision's category labels, torchvision models."""

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import assert_clean_error, run_in_process
from PIL import Image

from regptq_lite import methods
from regptq_lite.coco_eval import evaluate, to_coco_detections
from regptq_lite.coco_folder import ANNOTATIONS, COCO_LABELS, IMAGES, CocoFolder, category_map
from regptq_lite.detectors import CheckpointError, load_checkpoint, set_image_size
from regptq_lite.fgic import THETA_C, THETA_I, Teacher
from regptq_lite.head_outputs import dense_forward
from regptq_lite.qmodel import quantize_detector
from regptq_lite.scenes import CLASSES, make_scene

# The scene classes stand in for five COCO classes, under ids that are not torchvision's labels.
NAMES = {"box": "tv", "disc": "sports ball", "triangle": "kite", "cross": "airplane", "ring": "donut"}
ODD_IDS = {"box": 3, "disc": 17, "triangle": 250, "cross": 9, "ring": 1}


def write_coco_folder(root, count=6):
    """A COCO folder of ``count`` scenes; odd images stretched to 160 x 120 so sizes differ."""
    (root / IMAGES).mkdir(parents=True)
    (root / ANNOTATIONS).parent.mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        scene = make_scene(99, i)
        image = Image.fromarray(scene.image)
        sx = sy = 1.0
        if i % 2:
            image, sx, sy = image.resize((160, 120)), 160 / 128, 120 / 128
        image_id = 1000 + 7 * i  # not 0..n-1
        name = f"{image_id:012d}.png"
        image.save(root / IMAGES / name)
        images.append({"id": image_id, "file_name": name, "width": image.width, "height": image.height})
        for box, label in zip(scene.boxes, scene.labels):
            x0, y0, x1, y1 = (float(v) for v in box * np.array([sx, sy, sx, sy]))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ODD_IDS[CLASSES[label]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": ODD_IDS[c], "name": NAMES[c]} for c in CLASSES]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / ANNOTATIONS).write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_folder(tmp_path_factory.mktemp("coco"))


def test_category_map_matches_torchvision_labels_by_name():
    mapping = category_map([{"id": 250, "name": "kite"}, {"id": 1, "name": "donut"}, {"id": 90, "name": "toothbrush"}])
    assert mapping == {250: COCO_LABELS.index("kite"), 1: COCO_LABELS.index("donut"), 90: 90}
    assert COCO_LABELS.index("person") == 1 and len(COCO_LABELS) == 91
    with pytest.raises(ValueError, match="'circle'"):
        category_map([{"id": 5, "name": "circle"}])


def test_folder_holds_out_the_calibration_images(coco_root):
    folder = CocoFolder(coco_root, calib_images=2)
    assert len(folder) == 4
    assert folder.image_ids == [1000, 1007, 1014, 1021]
    assert {a["image_id"] for a in folder.coco["annotations"]} <= set(folder.image_ids)
    sizes = [tuple(x.shape) for x in folder.images()]
    assert sizes == [(3, 128, 128), (3, 120, 160), (3, 128, 128), (3, 120, 160)]
    calib = folder.calibration_images(96)
    assert [tuple(x.shape) for x in calib] == [(3, 96, 96)] * 2
    assert all(0 <= x.min() and x.max() <= 1 for x in calib)
    assert len(CocoFolder(coco_root, calib_images=2, max_images=3)) == 3


def test_detections_map_labels_to_the_folders_category_ids(coco_root):
    folder = CocoFolder(coco_root)
    kite, person = COCO_LABELS.index("kite"), COCO_LABELS.index("person")
    output = {
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 5.0, 5.0]]),
        "scores": torch.tensor([0.5, 0.25]),
        "labels": torch.tensor([kite, person]),
    }
    detections = to_coco_detections(1007, output, folder.label_to_category)
    assert detections == [{"image_id": 1007, "category_id": 250, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}]


def test_perfect_detections_score_100_on_the_folder(coco_root):
    folder = CocoFolder(coco_root)
    by_image = {i: [a for a in folder.coco["annotations"] if a["image_id"] == i] for i in folder.image_ids}
    to_label = {c: label for label, c in folder.label_to_category.items()}

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, images):
            outputs = []
            for _ in images:
                anns = by_image[folder.image_ids[self.calls]]
                self.calls += 1
                boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
                labels = torch.tensor([to_label[a["category_id"]] for a in anns])
                outputs.append({"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels})
            return outputs

    assert evaluate(Oracle(), folder)["AP"] == 100.0


@pytest.mark.parametrize(
    "annotations, images, message",
    [
        (None, False, "COCO annotation file not found"),
        ("{}", False, "COCO image folder not found"),
        ("{", True, "cannot read"),
        ("[]", True, "not a COCO instances file"),
        ('{"images": [], "annotations": []}', True, "not a COCO instances file"),
    ],
)
def test_bad_folders_are_clear_errors(tmp_path, annotations, images, message):
    with pytest.raises(FileNotFoundError, match="COCO folder not found"):
        CocoFolder(tmp_path / "nowhere")
    if annotations is not None:
        (tmp_path / ANNOTATIONS).parent.mkdir(parents=True)
        (tmp_path / ANNOTATIONS).write_text(annotations)
    if images:
        (tmp_path / IMAGES).mkdir()
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        CocoFolder(tmp_path)


def _broken_copy(tmp_path, coco_root, change) -> Path:
    """A copy of the folder whose annotation file ``change`` edits in place."""
    root = tmp_path / "broken"
    shutil.copytree(coco_root, root)
    data = json.loads((root / ANNOTATIONS).read_text())
    change(data)
    (root / ANNOTATIONS).write_text(json.dumps(data))
    return root


def _set(entries: str, field: str, value) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data[entries][0][field] = value

    return change


def _drop(entries: str, field: str) -> Callable[[dict], None]:
    return lambda data: data[entries][0].pop(field)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda data: data["images"].clear(), "lists no images"),
        (_drop("images", "file_name"), "images[0] needs the fields id, file_name"),
        (_drop("categories", "name"), "categories[0] needs the fields id, name"),
        (
            _drop("annotations", "area"),
            "annotations[0] needs the fields id, image_id, category_id, bbox, area, iscrowd",
        ),
        (_drop("annotations", "iscrowd"), "annotations[0] needs the fields"),
        (lambda data: data["annotations"].__setitem__(0, "box"), "annotations[0] needs the fields"),
        (_set("annotations", "bbox", [1, 2, 3]), "annotation 1 has bbox [1, 2, 3]; expected [x, y, width, height]"),
        (_set("annotations", "bbox", [1, 2, -3, 4]), "annotation 1 has bbox [1, 2, -3, 4]"),
        (_set("annotations", "bbox", ["1", 2, 3, 4]), "annotation 1 has bbox ['1', 2, 3, 4]"),
        (_set("annotations", "category_id", 7), "annotation 1 has category_id 7, which is not among the file's"),
        (_set("annotations", "category_id", [1]), "annotations[0] has category_id [1]; COCO ids are integers"),
        (_set("images", "id", "a.jpg"), "images[0] has id 'a.jpg'; COCO ids are integers"),
    ],
)
def test_a_malformed_instances_file_is_refused_when_the_folder_opens(tmp_path, coco_root, change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CocoFolder(_broken_copy(tmp_path, coco_root, change))


def test_missing_images_are_refused_when_the_folder_opens_not_when_read(tmp_path, coco_root):
    root = _broken_copy(tmp_path, coco_root, lambda data: None)
    last = sorted((root / IMAGES).iterdir())[-1]
    last.unlink()
    with pytest.raises(FileNotFoundError, match=f"1 image\\(s\\) listed in .* are missing .*, e.g. {last.name}"):
        CocoFolder(root)
    with pytest.raises(FileNotFoundError, match="1 image"):
        CocoFolder(root, calib_images=1)  # a calibration image
    assert len(CocoFolder(root, max_images=2)) == 2  # the images a run reads are all there


def test_a_malformed_folder_is_one_line_before_the_detector_is_built(capsys, tmp_path, coco_root, monkeypatch):
    def built(*args, **kwargs):
        raise AssertionError("the detector was built before the folder was checked")

    monkeypatch.setattr(methods, "load_detector", built)
    root = _broken_copy(tmp_path, coco_root, _drop("annotations", "area"))
    result = run_in_process(capsys, "eval", "--model", "retinanet_resnet50_fpn", "--weights", "random",
                            "--coco-root", root)  # fmt: skip
    assert_clean_error(result, "annotations[0] needs the fields")


def test_calibration_images_must_leave_evaluation_images(coco_root):
    with pytest.raises(ValueError, match="leaves no evaluation image"):
        CocoFolder(coco_root, calib_images=6)


def test_torchvision_weights_must_fit(tmp_path):
    model, _ = load_checkpoint("retinanet_resnet50_fpn", "random")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "ok.pt")  # torchvision's COCO weights have no BN counters
    load_checkpoint("retinanet_resnet50_fpn", tmp_path / "ok.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint("fcos_resnet50_fpn", tmp_path / "ok.pt")
    with pytest.raises(CheckpointError, match="pass --weights"):
        load_checkpoint("retinanet_resnet50_fpn")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "retinanet_resnet50_fpn", "--weights", "random"], "pass --coco-root"),
        (["eval", "--model", "retinanet_resnet50_fpn", "--weights", "random", "--coco-root", "/nowhere"],
         "COCO folder not found"),
        (["eval", "--model", "retinanet_resnet50_fpn", "--weights", "/nowhere.pt", "--coco-root", "{root}"],
         "checkpoint not found"),
        (["eval", "--coco-root", "/nowhere"], "--coco-root is for torchvision"),
    ],
)  # fmt: skip
def test_cli_real_path_errors_are_one_line(capsys, coco_root, argv, message):
    assert_clean_error(run_in_process(capsys, *(a.format(root=coco_root) for a in argv)), message)


@pytest.mark.parametrize("command", [["eval"], ["calibrate", "--method", "brecq", "--wbits", "4", "--abits", "4"]])
def test_a_bad_folder_fails_before_the_detector_is_built(capsys, monkeypatch, command):
    """A ResNet-50 takes seconds to build (minutes to calibrate): the folder is checked first."""
    from regptq_lite import methods

    def built(*args, **kwargs):
        raise AssertionError("the detector was built before the folder was checked")

    monkeypatch.setattr(methods, "load_checkpoint", built)
    result = run_in_process(capsys, *command, "--model", "retinanet_resnet50_fpn", "--weights", "random",
                            "--coco-root", "/nowhere")  # fmt: skip
    assert_clean_error(result, "COCO folder not found")


def test_a_damaged_image_is_a_one_line_error(capsys, tmp_path):
    root = write_coco_folder(tmp_path / "coco", count=2)
    for image in (root / IMAGES).iterdir():
        image.write_bytes(b"not an image")
    result = run_in_process(
        capsys, "eval", "--model", "retinanet_resnet50_fpn", "--weights", "random", "--coco-root", root,
        "--image-size", 64, "--device", "cpu", "--max-images", 1,
    )  # fmt: skip
    assert_clean_error(result, "cannot identify image file")


@pytest.mark.parametrize("model", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"])
def test_real_path_eval(capsys, coco_root, model):
    ran = run_in_process(
        capsys, "eval", "--model", model, "--weights", "random", "--coco-root", coco_root,
        "--image-size", 64, "--device", "cpu", "--max-images", 2, "--json",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["images"] == 2 and 0 <= result["AP"] <= 100


def test_real_path_calibration_smoke_run(capsys, coco_root):
    """torchvision's RetinaNet with random weights, fully quantized with Reg-PTQ on a COCO folder (the
    costly part is the weight observers' search on 25 M weights; the other models share this path)."""
    ran = run_in_process(
        capsys, "calibrate", "--model", "retinanet_resnet50_fpn", "--weights", "random", "--coco-root", coco_root,
        "--image-size", 64, "--device", "cpu", "--method", "regptq", "--wbits", 4, "--abits", 4,
        "--iters", 2, "--calib-images", 2, "--max-images", 2, "--json",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["model"] == "retinanet_resnet50_fpn" and result["val_images"] == 2 and result["image_size"] == 64
    assert 0 <= result["AP"] <= 100 and 0 <= result["fp_AP"] <= 100
    units = [u["unit"] for u in result["units"]]
    assert units[0] == "backbone.body.conv1" and units[-1] == "head.regression_head.conv.3"
    assert all(np.isfinite(u["last_local"]) for u in result["units"])


def test_fcos_global_loss_includes_centerness(coco_root):
    model, _ = load_checkpoint("fcos_resnet50_fpn", "random")
    set_image_size(model, 64)
    images = CocoFolder(coco_root, calib_images=2).calibration_images(64)
    dense = dense_forward(model, images)
    assert dense.num_classes == 91 and dense.cls_logits.shape[-1] == 92
    qmodel = quantize_detector(model, 4, 4)
    teacher = Teacher(model, images, THETA_C, THETA_I)
    assert teacher.loss(qmodel, images, slice(0, 2)).item() == pytest.approx(0.0, abs=1e-6)  # quantizers are off
    with torch.no_grad():
        qmodel.head.regression_head.bbox_ctrness.layer.bias += 1.0  # only centerness changes
    assert teacher.loss(qmodel, images, slice(0, 2)).item() > 1e-3
