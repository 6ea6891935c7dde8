import pytest
import torch
from test_quantizers import weight  # the seeded Laplace / uniform test weights

from regptq_lite.llaq import LogAffineQuantizer
from regptq_lite.llaq_zero import ZeroCodeLLAQ, zero_code_gap


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_zero_code_keeps_two_to_the_b_values_one_of_them_m(bits):
    w = weight(8)
    q = ZeroCodeLLAQ(bits)
    q.init(w)
    with torch.no_grad():
        out = q(w)
    for c in range(w.shape[0]):
        values = torch.unique(out[c])
        assert len(values) <= 2**bits
        assert (values == q.m.flatten()[c]).any()  # weights close to m land on m itself
    at_m = w == q.m
    assert at_m.any() and torch.equal(out[at_m], q.m.expand_as(w)[at_m])


def test_zero_code_leaves_the_lower_side_as_plain_llaq():
    w = weight(9)
    zero, plain = ZeroCodeLLAQ(3), LogAffineQuantizer(3)
    zero.init(w)
    plain.init(w)
    with torch.no_grad():
        below = w < plain.m
        assert torch.equal(zero(w)[below], plain(w)[below])
        assert not torch.equal(zero(w)[~below], plain(w)[~below])


def test_zero_code_gap_reports_both_mses():
    w = weight(10)
    gap = zero_code_gap(w, 3)
    for name, quantizer in (("mse_llaq", LogAffineQuantizer(3)), ("mse_zero_code", ZeroCodeLLAQ(3))):
        quantizer.init(w)
        with torch.no_grad():
            assert gap[name] == pytest.approx((quantizer(w) - w).pow(2).mean().item()), name
    assert gap["mse_llaq"] > 0 and gap["mse_zero_code"] > 0 and gap["mse_llaq"] != gap["mse_zero_code"]
    assert gap["ratio"] == pytest.approx(gap["mse_zero_code"] / gap["mse_llaq"])
