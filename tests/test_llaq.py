import pytest
import torch
from test_quantizers import weight  # the seeded Laplace / uniform test weights

from regptq_lite.llaq import M_FRACTION_BITS, LogAffineQuantizer, LogAffineTuner, llaq_of, psi, shift_gap
from regptq_lite.quantizers import UniformQuantizer


def grid_of(bits: int, seed: int = 0) -> tuple[LogAffineQuantizer, torch.Tensor]:
    w = weight(seed)
    q = LogAffineQuantizer(bits)
    q.init(w)
    return q, w


def is_power_of_two(k: torch.Tensor) -> bool:
    return torch.allclose(torch.log2(k), torch.round(torch.log2(k)))


def test_gradient_reaches_every_llaq_parameter():
    w = weight(4)
    q = LogAffineQuantizer(4)
    q.init(w)
    (q(w) - w.flip(0)).pow(2).sum().backward()
    for name in ("m", "k_pos", "a_pos", "k_neg", "a_neg"):
        grad = getattr(q, name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_llaq_levels_are_dense_near_the_centre():
    q = LogAffineQuantizer(4)
    q.init(weight(5, shape=(4, 64, 3, 3)))
    gaps = q.levels(0).diff()
    upper = gaps[len(gaps) // 2 :]
    assert upper[0] < upper[-1]  # spacing grows away from m


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_llaq_beats_mse_uniform_on_laplace_but_not_on_uniform_weights(bits):
    def mse(q, w):
        q.init(w)
        with torch.no_grad():
            return (q(w) - w).pow(2).mean().item()

    laplace, flat = weight(6, "laplace", (32, 64, 3, 3)), weight(6, "uniform", (32, 64, 3, 3))
    assert mse(LogAffineQuantizer(bits), laplace) < mse(UniformQuantizer(bits, 0, "mse"), laplace)
    if bits >= 3:  # at 2 bits each side has two free levels: LLAQ is a free 4-level grid
        assert mse(LogAffineQuantizer(bits), flat) > mse(UniformQuantizer(bits, 0, "mse"), flat)


def test_shift_friendly_form_has_power_of_two_k():
    q = LogAffineQuantizer(4)
    q.init(weight(7))
    shifted = q.shift_friendly()
    for k in (shifted.k_pos, shifted.k_neg):
        assert torch.allclose(torch.log2(k), torch.round(torch.log2(k)))
    ratio = shifted.m / shifted.m_unit()
    assert torch.allclose(ratio, torch.round(ratio), atol=1e-3)
    gap = shift_gap(weight(7), 4)
    assert gap["mse_shift"] >= gap["mse_llaq"] * 0.999


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_tuner_starts_at_the_weight_and_rounds_hard_to_nearest(bits):
    q, w = grid_of(bits, 1)
    tuner = LogAffineTuner(q, w)
    exponent = psi(w, w >= q.m, q.grid())
    inside = (exponent >= 0) & (exponent <= q.emax)
    with torch.no_grad():
        assert torch.allclose(tuner(w)[inside], w[inside], rtol=1e-4, atol=1e-7)  # soft h(V) = the fraction
        tuner.rounding.soft = False
        assert torch.allclose(tuner(w), q(w))  # hard at the start: LLAQ's round to nearest
    assert torch.equal(tuner.codes(w), q.codes(w))


def test_learned_rounding_gives_a_a_gradient_from_every_weight():
    """With straight-through rounding to nearest, (e - a) / k does not depend on a except where e is
    clamped; with learned rounding the floor is fixed, so every level moves with the grid."""
    q, w = grid_of(4, 2)
    exponent = psi(w, w >= q.m, q.grid())
    unclamped = (exponent > 0.5) & (exponent < q.emax - 0.5)
    target = w.flip(0)
    for rounding, expect_gradient in (("learned", True), ("nearest", False)):
        tuner = LogAffineTuner(q, w, rounding)
        ((tuner(w) - target).pow(2) * unclamped).sum().backward()
        for name in ("da_pos", "da_neg"):
            moved = getattr(tuner, name).grad.abs().sum() > 0
            assert moved == expect_gradient, (rounding, name)
        for name in ("dm", "dk_pos", "dk_neg"):
            assert getattr(tuner, name).grad.abs().sum() > 0, (rounding, name)
    assert tuner.rounding is None


def test_grid_moves_relative_to_its_start():
    q, w = grid_of(3, 3)
    tuner = LogAffineTuner(q, w)
    with torch.no_grad():
        tuner.dm.fill_(1.0)
        tuner.dk_pos.fill_(1.0)
        tuner.da_neg.fill_(-2.0)
    m, k_pos, a_pos, k_neg, a_neg = tuner.grid()
    spread = w.flatten(1).std(1).reshape(m.shape)
    assert torch.allclose(m, q.m + spread) and torch.allclose(k_pos, 2 * q.k_pos)
    assert torch.allclose(a_neg, q.a_neg - 2) and torch.equal(a_pos, q.a_pos.detach())


def test_commit_writes_the_learned_grid_into_the_base_and_keeps_the_output():
    q, w = grid_of(4, 4)
    tuner = LogAffineTuner(q, w)
    with torch.no_grad():
        tuner.dm.normal_(0, 0.1)
        tuner.da_pos.normal_(0, 0.5)
        tuner.dk_neg.normal_(0, 0.2)
        tuner.rounding.soft = False
        before = tuner(w).clone()
    grid = [p.detach().clone() for p in tuner.grid()]
    tuner.commit(shift_form=False)
    assert all(torch.equal(a, b.detach()) for a, b in zip(grid, q.grid()))
    with torch.no_grad():
        assert torch.allclose(tuner(w), before)
    assert llaq_of(tuner) is q and llaq_of(q) is q and llaq_of(None) is None


def test_shift_form_keeps_k_a_power_of_two_and_m_on_its_fixed_point_grid():
    q, w = grid_of(4, 5)
    top = [torch.exp2((q.emax - a) / k) for k, a in ((q.k_pos, q.a_pos), (q.k_neg, q.a_neg))]
    q.snap_k_()
    assert is_power_of_two(q.k_pos) and is_power_of_two(q.k_neg)
    assert torch.allclose(top[0], torch.exp2((q.emax - q.a_pos) / q.k_pos))  # top levels kept
    tuner = LogAffineTuner(q, w, learn_k=False)
    assert all(p is not tuner.dk_pos and p is not tuner.dk_neg for p in tuner.grid_parameters())
    with torch.no_grad():
        tuner.dm.normal_(0, 0.3)
    tuner.commit(shift_form=True)
    ratio = q.m / q.m_unit()
    assert torch.allclose(ratio, torch.round(ratio), atol=1e-3) and is_power_of_two(q.k_pos)
    smallest = torch.exp2(-q.a_pos / q.k_pos)
    assert torch.allclose(q.m_unit(), smallest / 2**M_FRACTION_BITS)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_tuner_codes_take_at_most_2_pow_b_values_and_decode(bits):
    q, w = grid_of(bits, 6)
    tuner = LogAffineTuner(q, w)
    with torch.no_grad():
        tuner.rounding.alpha.normal_()
        tuner.rounding.soft = False
        codes = tuner.codes(w)
        assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
        for c in range(w.shape[0]):
            assert len(torch.unique(tuner(w)[c])) <= 2**bits
        e = torch.where(codes >= 0, codes, -codes - 1).float()
        k = torch.where(codes >= 0, q.k_pos, q.k_neg)
        a = torch.where(codes >= 0, q.a_pos, q.a_neg)
        decoded = q.m + torch.where(codes >= 0, 1.0, -1.0) * torch.exp2((e - a) / k)
        assert torch.allclose(decoded, tuner(w))


def test_undecided_share_falls_as_rounding_decides():
    q, w = grid_of(3, 7)
    tuner = LogAffineTuner(q, w)
    assert tuner.rounding.undecided() > 0.5  # h starts at each exponent's fraction
    with torch.no_grad():
        tuner.rounding.alpha.copy_(torch.sign(tuner.rounding.alpha) * 10)
    assert tuner.rounding.undecided() == 0.0


def test_a_tuner_refuses_another_weight_and_bad_rounding():
    q, w = grid_of(3, 8)
    with pytest.raises(ValueError, match="belongs to a weight of shape"):
        LogAffineTuner(q, w)(w[:2])
    with pytest.raises(ValueError, match="unknown LLAQ rounding"):
        LogAffineTuner(q, w, rounding="stochastic")
