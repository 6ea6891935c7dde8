import numpy as np
import pytest
from pycocotools.coco import COCO

from regptq_lite.scenes import CLASSES, IMAGE_SIZE, MAX_ASPECT, SceneSet, coco_dict, make_scene, target_of, train_batch


def test_same_seed_same_pixels_and_boxes():
    a, b = make_scene(7, 3), make_scene(7, 3)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.boxes, b.boxes)
    assert np.array_equal(a.labels, b.labels)


def test_different_index_or_seed_differs():
    assert not np.array_equal(make_scene(7, 3).image, make_scene(7, 4).image)
    assert not np.array_equal(make_scene(7, 3).image, make_scene(8, 3).image)


def test_splits_are_fixed_and_distinct():
    calib, val = SceneSet("calib"), SceneSet("val")
    assert len(calib) == 256 and len(val) >= 500
    assert not np.array_equal(calib[0].image, val[0].image)
    assert not np.array_equal(train_batch(0, 1)[0].image, val[0].image)


@pytest.mark.parametrize("index", range(40))
def test_boxes_are_tight_and_inside(index):
    scene = make_scene(2, index)
    assert scene.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and scene.image.dtype == np.uint8
    assert len(scene.boxes) >= 1
    for x0, y0, x1, y1 in scene.boxes:
        assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE


@pytest.mark.parametrize("index", range(20))
def test_each_box_is_the_extent_of_its_visible_pixels(index):
    scene = make_scene(2, index)
    for j, (x0, y0, x1, y1) in enumerate(scene.boxes):
        ys, xs = np.nonzero(scene.owner == j)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        assert len(xs) == scene.areas[j]


def test_sizes_and_aspect_ratios_cover_a_wide_range():
    boxes = np.concatenate([SceneSet("val")[i].boxes for i in range(200)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.sqrt(w * h)
    assert side.min() < 16 and side.max() > 0.6 * IMAGE_SIZE
    ratio = w / h
    assert ratio.max() > 0.7 * MAX_ASPECT and ratio.min() < 1 / (0.7 * MAX_ASPECT)


def test_every_class_appears():
    labels = np.concatenate([SceneSet("val")[i].labels for i in range(100)])
    assert set(labels.tolist()) == set(range(len(CLASSES)))


def test_coco_dict_loads_in_pycocotools():
    scenes = [make_scene(2, i) for i in range(5)]
    coco = COCO()
    coco.dataset = coco_dict(scenes)
    coco.createIndex()
    assert len(coco.getImgIds()) == 5
    assert len(coco.getAnnIds()) == sum(len(s.boxes) for s in scenes)
    assert sorted(coco.getCatIds()) == list(range(1, len(CLASSES) + 1))
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[0]))[0]
    x, y, w, h = ann["bbox"]
    assert [x, y, x + w, y + h] == scenes[0].boxes[0].tolist()


def test_target_labels_are_one_based():
    scene = make_scene(2, 0)
    assert (target_of(scene)["labels"] >= 1).all()


def test_bad_split_and_size_are_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        SceneSet("test")
    with pytest.raises(ValueError, match="at least one image"):
        SceneSet("calib", size=0)
