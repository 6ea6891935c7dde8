import json

import pytest
import torch

from regptq_lite.coco_eval import evaluate
from regptq_lite.detectors import (
    CHECKPOINTS,
    CheckpointError,
    build_model,
    card_path,
    count_parameters,
    load_checkpoint,
)
from regptq_lite.scenes import IMAGE_SIZE, SceneSet, make_scene, target_of, to_tensor
from regptq_lite.train import train


def test_tiny_retinanet_is_small_and_has_batchnorm():
    model, transform = build_model("tiny_retinanet")
    assert count_parameters(model) <= 1_500_000
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = transform(make_scene(0, 0).image)
    assert x.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and 0.0 <= x.min() and x.max() <= 1.0


def test_build_model_is_deterministic():
    a, _ = build_model("tiny_retinanet")
    b, _ = build_model("tiny_retinanet")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_model_name_is_rejected():
    with pytest.raises(ValueError, match="unknown model 'yolo'"):
        build_model("yolo")


def test_training_step_gives_finite_losses():
    model, _ = build_model("tiny_retinanet")
    model.train()
    scene = make_scene(0, 0)
    losses = model([to_tensor(scene.image)], [target_of(scene)])
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ["tiny_retinanet", "tiny_fasterrcnn"])
def test_training_is_deterministic(tmp_path, name):
    cards = [train(name, iters=2, batch_size=2, out=tmp_path / f"m{i}.pt", val_size=4) for i in range(2)]
    a = torch.load(tmp_path / "m0.pt", weights_only=True)
    b = torch.load(tmp_path / "m1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cards[0]["val"] == cards[1]["val"]
    card = json.loads(card_path(tmp_path / "m0.pt").read_text())
    assert {"command", "seed", "iters", "train_seconds", "parameters", "val"} <= set(card)


@pytest.mark.parametrize("name", ["tiny_retinanet", "tiny_fasterrcnn"])
def test_shipped_checkpoint_reproduces_its_card(name):
    card = json.loads(card_path(CHECKPOINTS[name]).read_text())
    metrics = evaluate(load_checkpoint(name)[0], SceneSet("val"))
    for key in ("AP", "AP50", "AP75"):
        assert metrics[key] == pytest.approx(card["val"][key], abs=0.2)
    assert metrics["images"] == card["val"]["images"] >= 500


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint("tiny_retinanet", tmp_path / "nope.pt")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint("tiny_retinanet", bad)


def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint("tiny_retinanet", other)
