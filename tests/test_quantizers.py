import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from regptq_lite.llaq import LogAffineQuantizer
from regptq_lite.quantizers import AdaRoundQuantizer, Log2Quantizer, UniformQuantizer, check_bits, round_ste

BITS = st.integers(min_value=2, max_value=6)
SEEDS = st.integers(min_value=0, max_value=2**16)


def weight(seed: int, dist: str = "laplace", shape=(8, 4, 3, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dist == "laplace":
        u = torch.rand(shape, generator=g) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs()) * 0.05
    return (torch.rand(shape, generator=g) * 2 - 1) * 0.1


def make(kind: str, bits: int) -> torch.nn.Module:
    return {
        "uniform": lambda: UniformQuantizer(bits, channel_axis=0, observer="mse"),
        "percentile": lambda: UniformQuantizer(bits, channel_axis=0, observer="percentile"),
        "log2": lambda: Log2Quantizer(bits),
        "llaq": lambda: LogAffineQuantizer(bits),
    }[kind]()


KINDS = ["uniform", "percentile", "log2", "llaq"]


def initialised(kind: str, bits: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A quantizer of ``kind`` initialised on a Laplace weight drawn with ``seed``, and the weight."""
    w = weight(seed)
    q = make(kind, bits)
    q.init(w)
    return q, w


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None)
@given(bits=BITS, seed=SEEDS)
def test_at_most_2_pow_b_values_per_channel(kind, bits, seed):
    q, w = initialised(kind, bits, seed)
    out = q(w)
    for c in range(w.shape[0]):
        assert len(torch.unique(out[c])) <= 2**bits


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None)
@given(bits=BITS, seed=SEEDS)
def test_quantizing_twice_changes_nothing(kind, bits, seed):
    q, w = initialised(kind, bits, seed)
    with torch.no_grad():
        once = q(w)
        assert torch.allclose(q(once), once, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None)
@given(bits=BITS, seed=SEEDS)
def test_codes_in_range(kind, bits, seed):
    q, w = initialised(kind, bits, seed)
    codes = q.codes(w)
    assert codes.dtype == torch.int32
    if kind in ("uniform", "percentile"):
        assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    else:  # sign + magnitude: a b-bit two's-complement integer
        assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1


@pytest.mark.parametrize("bad", [0, 1, 33, 4.0, 3.5, "4", None, True])
def test_bad_bit_widths_are_rejected(bad):
    with pytest.raises(ValueError, match="bit-width must be an integer"):
        check_bits(bad)
    with pytest.raises(ValueError, match="bit-width"):
        UniformQuantizer(bad)
    with pytest.raises(ValueError, match="bit-width"):
        LogAffineQuantizer(bad)


def test_uniform_codes_reconstruct_the_fake_quantized_tensor():
    w = weight(1)
    q = UniformQuantizer(4, channel_axis=0, observer="mse")
    q.init(w)
    assert torch.allclose((q.codes(w) - q.zero_point) * q.scale, q(w), atol=1e-7)


def test_gradient_reaches_the_lsq_step():
    x = torch.randn(4, 8, 5, 5).relu()
    q = UniformQuantizer(4, learn_step=True)
    q.init(x)
    x.requires_grad_(True)
    q(x).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0  # straight-through


def test_gradient_reaches_adaround_variables_and_regularizer():
    w = weight(2)
    ada = AdaRoundQuantizer(UniformQuantizer(3, channel_axis=0, observer="mse"), w)
    (ada(w).sum() + ada.regularizer(beta=20.0)).backward()
    assert ada.alpha.grad is not None and ada.alpha.grad.abs().sum() > 0


def test_adaround_starts_at_the_float_weight_and_hardens_within_one_step():
    w = weight(3)
    base = UniformQuantizer(4, channel_axis=0, observer="minmax")
    ada = AdaRoundQuantizer(base, w)
    inside = ((w / base.scale).floor() + base.zero_point >= 0) & (
        (w / base.scale).ceil() + base.zero_point <= base.qmax
    )
    with torch.no_grad():
        assert torch.allclose(ada(w)[inside], w[inside], atol=1e-6)  # soft h(V) equals the fraction at init
        ada.soft = False
        assert ((ada(w) - w).abs() <= base.scale + 1e-6).all()
        assert torch.allclose((ada.codes(w) - base.zero_point) * base.scale, ada(w), atol=1e-7)


def test_round_ste_rounds_and_passes_the_gradient_straight_through():
    g = torch.Generator().manual_seed(0)
    decades = 10.0 ** torch.randint(-6, 7, (10_000,), generator=g)  # 1e-6 .. 1e6
    x = torch.cat([torch.randn(10_000, generator=g) * decades, torch.tensor([0.5, -0.5, 1.5, 2.5])])
    x.requires_grad_(True)
    y = round_ste(x * 3)
    assert torch.equal(y.detach(), torch.round(x.detach() * 3))
    y.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))
    with torch.no_grad():
        assert torch.equal(round_ste(x * 3), y.detach())  # the no-gradient shortcut gives the same values
