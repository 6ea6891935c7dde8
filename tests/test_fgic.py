import pytest
import torch

from regptq_lite.fgic import box_filter, global_loss, paired_iou

FP = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.4, 0.4], [0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 1.0, 1.0]])
Q = torch.tensor([[0.0, 0.0, 0.5, 0.45], [0.6, 0.6, 0.8, 0.8], [0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 1.0, 1.0]])
PROBS = torch.tensor([[0.9, 0.0], [0.8, 0.1], [1e-5, 1e-6], [3e-4, 0.0]])


def test_paired_iou_on_hand_made_pairs():
    assert paired_iou(FP, Q).tolist() == pytest.approx([0.9, 0.0, 1.0, 1.0])


def test_filter_keeps_confident_overlapping_pairs_only():
    # pair 1 does not overlap, pair 2 is below theta_C; pair 3 passes at 2e-4 but not at 1e-3
    assert box_filter(PROBS, FP, Q, theta_c=2e-4, theta_i=0.1).tolist() == [True, False, False, True]
    assert box_filter(PROBS, FP, Q, theta_c=1e-3, theta_i=0.1).tolist() == [True, False, False, False]
    assert box_filter(PROBS, FP, Q, theta_c=0.0, theta_i=0.0).tolist() == [True, True, True, True]
    assert box_filter(PROBS, FP, Q, theta_c=0.0, theta_i=0.95).tolist() == [False, False, True, True]


def test_global_loss_is_zero_when_the_models_agree():
    logits = torch.randn(2, 7, 5)
    boxes = torch.rand(2, 7, 2).repeat(1, 1, 2) + torch.tensor([0.0, 0.0, 0.1, 0.1])
    loss, stats = global_loss(logits, logits.clone(), boxes, boxes.clone())
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert stats["kept"] > 0


def test_filtered_pairs_do_not_contribute_to_the_box_term():
    logits = torch.logit(PROBS.clamp(1e-6, 1 - 1e-6))
    q = Q.clone().requires_grad_(True)
    loss, _ = global_loss(logits, logits, FP, q, theta_c=2e-4, theta_i=0.1)
    loss.backward()
    assert q.grad[1].abs().sum() == 0 and q.grad[2].abs().sum() == 0  # filtered out
    assert q.grad[0].abs().sum() > 0  # kept and different


def test_class_term_pulls_towards_the_teacher():
    fp = torch.zeros(1, 3, 2)
    q = torch.full((1, 3, 2), 2.0, requires_grad=True)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]] * 3])
    loss, _ = global_loss(fp, q, boxes, boxes)
    loss.backward()
    assert loss.item() > 0 and (q.grad > 0).all()
