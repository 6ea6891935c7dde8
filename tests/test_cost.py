import pytest
import torch
from torch import nn

from regptq_lite.cost import cost_table, count_macs


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Module()
        self.head.classification_head = nn.Module()
        self.head.classification_head.cls_logits = nn.Conv2d(8, 2, 1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, images):
        x = torch.stack(images)
        return self.head.classification_head.cls_logits(self.mid(self.body(x)))


def test_macs_count_each_output_times_its_fan_in():
    macs = count_macs(TwoConvs(), [torch.zeros(3, 4, 4)])
    assert macs == {"body": 8 * 16 * 27, "head.classification_head.cls_logits": 2 * 16 * 8, "mid": 8 * 16 * 72}


def test_cost_table_follows_the_policy():
    rows = {(r["setting"], r["regime"]): r for r in cost_table(TwoConvs(), [torch.zeros(3, 4, 4)])}
    fp, w4 = rows[("FP32", "-")], rows[("W4A4", "full")]
    body, logits, mid = 2 * 8 * 16 * 27, 2 * 2 * 16 * 8, 2 * 8 * 16 * 72
    assert fp["GFLOPs"] * 1e9 == pytest.approx(body + logits + mid)
    # first layer 8 bits, prediction layer float, the rest 4 bits
    assert w4["bit_GFLOPs"] * 1e9 == pytest.approx(body * 8 / 32 + logits + mid * 4 / 32)
    assert w4["compute_saving"] > rows[("W4A8", "full")]["compute_saving"]
    assert w4["storage_saving"] > 1
