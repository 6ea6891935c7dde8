import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from regptq_lite.atss import BACKGROUND, anchor_levels, atss_match
from regptq_lite.detectors import build_model, tiny_anchor_generator
from regptq_lite.scenes import IMAGE_SIZE, make_scene, target_of, to_tensor
from regptq_lite.train import check_recipe, set_recipe

STRIDES = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def anchors():
    generator = tiny_anchor_generator()
    features = [torch.zeros(1, 1, IMAGE_SIZE // s, IMAGE_SIZE // s) for s in STRIDES]
    image = ImageList(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE), [(IMAGE_SIZE, IMAGE_SIZE)])
    all_anchors = generator(image, features)[0]
    return all_anchors, anchor_levels(all_anchors, generator.sizes)


def test_anchor_levels_follow_the_pyramid(anchors):
    _, levels = anchors
    per_location = 9
    expected = [(IMAGE_SIZE // s) ** 2 * per_location for s in STRIDES]
    assert torch.bincount(levels).tolist() == expected
    first = 0
    for level, count in enumerate(expected):  # torchvision concatenates the levels in order
        assert (levels[first : first + count] == level).all()
        first += count


def test_every_object_gets_positives_with_centres_inside_it(anchors):
    all_anchors, levels = anchors
    boxes = torch.tensor([[20.0, 30.0, 30.0, 40.0], [10.0, 60.0, 110.0, 120.0], [70.0, 10.0, 78.0, 42.0]])
    matched = atss_match(boxes, all_anchors, levels)
    centres = (all_anchors[:, :2] + all_anchors[:, 2:]) / 2
    for index, box in enumerate(boxes):
        positive = centres[matched == index]
        assert len(positive) >= 1
        assert ((positive > box[:2]) & (positive < box[2:])).all()
    assert set(matched.unique().tolist()) == {BACKGROUND, 0, 1, 2}


def test_a_small_object_gets_more_positives_than_iou_thresholds_give(anchors):
    all_anchors, levels = anchors
    small = torch.tensor([[21.0, 21.0, 31.0, 31.0]])  # 10 px, off the anchor grid
    iou_matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)  # torchvision RetinaNet's
    iou_positives = int((iou_matcher(box_iou(small, all_anchors)) == 0).sum())
    assert iou_positives == 1
    assert (atss_match(small, all_anchors, levels) == 0).sum() > iou_positives


def test_no_objects_means_all_background(anchors):
    all_anchors, levels = anchors
    matched = atss_match(torch.zeros(0, 4), all_anchors, levels)
    assert (matched == BACKGROUND).all() and len(matched) == len(all_anchors)


def test_each_recipe_trains_with_finite_losses_and_a_gradient():
    scene = make_scene(0, 0)
    for matcher, box_loss, head_init in (("atss", "giou", "kaiming"), ("iou", "l1", "normal")):
        model, _ = build_model("tiny_retinanet")
        set_recipe(model, matcher, box_loss, head_init)
        model.train()
        losses = model([to_tensor(scene.image)], [target_of(scene)])
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert model.head.regression_head.bbox_reg.weight.grad.abs().sum() > 0


def test_kaiming_head_init_redraws_only_the_towers():
    plain, _ = build_model("tiny_retinanet")
    model, _ = build_model("tiny_retinanet")
    set_recipe(model, "iou", "l1", "kaiming")
    head, plain_head = model.head.classification_head, plain.head.classification_head
    assert head.conv[0][0].weight.std() > 3 * plain_head.conv[0][0].weight.std()
    assert torch.equal(head.cls_logits.weight, plain_head.cls_logits.weight)
    assert torch.equal(model.backbone.stem.conv.weight, plain.backbone.stem.conv.weight)


def test_the_recipe_switches_are_checked():
    with pytest.raises(ValueError, match="only to tiny_retinanet"):
        check_recipe("tiny_fasterrcnn", "atss", "l1", "normal")
    with pytest.raises(ValueError, match="unknown recipe"):
        check_recipe("tiny_retinanet", "hungarian", "l1", "normal")
    check_recipe("tiny_fasterrcnn", "iou", "l1", "normal")
    check_recipe("tiny_retinanet", "atss", "giou", "kaiming")
    assert set_recipe(build_model("tiny_fasterrcnn")[0], "iou", "l1", "normal") == {"box_loss": "smooth_l1"}
