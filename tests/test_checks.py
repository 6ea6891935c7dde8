"""The assignment checks: each passes the reference solution, names the typical mistakes of its exercise,
says "off by" with a hint for any other wrong answer, and lets a student stub's NotImplementedError through."""

import math

import pytest
import torch
import torch.nn.functional as F

from regptq_lite import checks, recon
from regptq_lite.checks.core import NO_HINT
from regptq_lite.fgic import box_filter

# Reference solutions, as in the master notebooks; their keyword arguments make the typical mistakes -------


def laplace_fit(x, loc=torch.median, scale=None):
    x = x.flatten().double()
    m = loc(x)
    return float(m), float((x - m).abs().mean() if scale is None else scale(x))


def fake_quant(w, bits, clip, rounding=torch.round, top=None, step_bits=None, scaled=True, clamp=True):
    s = clip / 2 ** ((bits - 1) if step_bits is None else step_bits)
    code = rounding(w / s)
    if clamp:
        code = torch.clamp(code, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1 if top is None else top)
    return code * s if scaled else code


def decode(deltas, anchors, exp=torch.exp, scaled=True, corners=True):
    size = anchors[:, 2:] - anchors[:, :2]
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2 + deltas[:, :2] * (size if scaled else 1)
    new_size = size * exp(deltas[:, 2:])
    if not corners:
        return torch.cat([centre, new_size], dim=1)
    return torch.cat([centre - new_size / 2, centre + new_size / 2], dim=1)


def llaq_forward(w, m, k_pos, a_pos, k_neg, a_neg, bits, log=torch.log2, side_at=None, ste="round", clamp_first=False):
    pos = w >= (m if side_at is None else side_at)
    k, a = torch.where(pos, k_pos, k_neg), torch.where(pos, a_pos, a_neg)
    psi = k * log((w - m).abs()) + a
    top = 2 ** (bits - 1) - 1
    if clamp_first:  # clamp, then round straight-through: a fair answer too
        psi = psi.clamp(-0.49, top + 0.49)
    if ste == "round":
        e = torch.clamp(psi + (torch.round(psi) - psi).detach(), 0, top)
    elif ste == "round and clamp":
        e = psi + (torch.clamp(torch.round(psi), 0, top) - psi).detach()
    else:
        e = torch.clamp(torch.round(psi), 0, top)
    return m + torch.where(pos, 1.0, -1.0) * torch.exp2((e - a) / k)


def snap_k(k, a, bits, snap=lambda k: 2.0 ** round(math.log2(k)), keep_top=True):
    top = 2 ** (bits - 1) - 1
    k2 = snap(k)
    return k2, (top - k2 * (top - a) / k) if keep_top else a


def learned_exponent(psi, alpha, soft, start=torch.floor, stretch=True):
    h = torch.sigmoid(alpha) * 1.2 - 0.1 if stretch else torch.sigmoid(alpha)
    return start(psi) + (torch.clamp(h, 0, 1) if soft else (alpha >= 0).float())


def filter_mask(fp_probs, q_probs, fp_boxes, q_boxes, theta_c, theta_i, confidence=None, strict=False, steps="both"):
    lt = torch.maximum(fp_boxes[:, :2], q_boxes[:, :2])
    rb = torch.minimum(fp_boxes[:, 2:], q_boxes[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_fp = (fp_boxes[:, 2:] - fp_boxes[:, :2]).prod(-1)
    area_q = (q_boxes[:, 2:] - q_boxes[:, :2]).prod(-1)
    iou = inter / (area_fp + area_q - inter)
    conf = fp_probs.amax(-1) if confidence is None else confidence(fp_probs, q_probs)
    confident, overlapping = (conf > theta_c, iou > theta_i) if strict else (conf >= theta_c, iou >= theta_i)
    return {"both": confident & overlapping, "confidence": confident, "iou": overlapping}[steps]


def global_loss(fp_logits, q_logits, fp_boxes, q_boxes, theta_c, theta_i, by="fp", subtract=True, per_kept=False):
    p = torch.sigmoid(fp_logits)
    bce = F.binary_cross_entropy_with_logits
    cls = (bce(q_logits, p, reduction="none") - subtract * bce(fp_logits, p, reduction="none")).sum(-1)
    keep = box_filter(torch.sigmoid({"fp": fp_logits, "q": q_logits}[by]), fp_boxes, q_boxes, theta_c, theta_i)
    box = (fp_boxes - q_boxes).abs().sum(-1) * keep
    return (cls + box).sum() / (keep.sum() if per_kept else len(cls))


def fisher_local_loss(out, target, g, weight=lambda g: g**2, channels=torch.sum):
    return channels((out - target) ** 2 * weight(g), 1).mean()


def rounding_regularizer(h, beta, reduce=torch.sum, one_minus=True, base=lambda h: (2 * h - 1).abs()):
    term = base(h) ** beta
    return reduce(1 - term if one_minus else term)


def reconstruct(
    unit, groups, inputs, targets, fisher, iters, zero_grad=True, reg_from=0.2, step=True, beta_end=2.0, weighted=True
):
    opt = torch.optim.Adam(groups)
    warm = int(reg_from * iters) if reg_from is not None else iters
    losses = []
    for it in range(iters):
        idx = torch.randperm(len(inputs))[:32]
        loss = recon.local_loss(unit(inputs[idx]), targets[idx], fisher[idx] if weighted else None)
        losses.append(loss.item())
        if it >= warm:
            beta = 20 - (20 - beta_end) * (it - warm) / (iters - warm)
            loss = loss + 0.01 * recon.rounding_loss(unit, beta)
        if zero_grad:
            opt.zero_grad()
        loss.backward()
        if step:
            opt.step()
    return losses


SOLUTIONS = {
    "laplace_fit": laplace_fit,
    "uniform_fake_quant": fake_quant,
    "box_decode": decode,
    "llaq_forward": llaq_forward,
    "snap_k": snap_k,
    "learned_exponent": learned_exponent,
    "filter_mask": filter_mask,
    "global_loss": global_loss,
    "fisher_local_loss": fisher_local_loss,
    "rounding_regularizer": rounding_regularizer,
    "reconstruct_unit": reconstruct,
}


def test_every_check_passes_its_reference_solution(capsys):
    assert set(SOLUTIONS) == set(checks.ALL)
    for name, check in checks.ALL.items():
        assert check(SOLUTIONS[name]) is True, name
        assert capsys.readouterr().out.startswith(f"passed ({name}"), name


def test_equivalent_answers_pass(capsys):
    # numpy's median (the mean of the two middle values for an even count)
    assert checks.laplace_fit(lambda x: laplace_fit(x, loc=lambda x: x.quantile(0.5)))
    # hard rounding by the plain sigmoid's h > 0.5 is the same decision as alpha >= 0
    assert checks.learned_exponent(
        lambda psi, alpha, soft: learned_exponent(psi, alpha, True) if soft else psi.floor() + (alpha.sigmoid() > 0.5)
    )
    # clamping psi before the straight-through rounding instead of after
    assert checks.llaq_forward(lambda *args: llaq_forward(*args, clamp_first=True))
    assert checks.uniform_fake_quant(lambda w, bits, clip: fake_quant(w.double(), bits, clip))
    capsys.readouterr()


WRONG = [
    ("laplace_fit", lambda x: laplace_fit(x, loc=torch.mean), "loc is the mean"),
    ("laplace_fit", lambda x: laplace_fit(x, loc=torch.mean), "b is the mean |x - mean|"),
    ("laplace_fit", lambda x: laplace_fit(x, scale=torch.std), "b is the standard deviation"),
    ("uniform_fake_quant", lambda *args: fake_quant(*args, scaled=False), "the scale is missing"),
    ("uniform_fake_quant", lambda *args: fake_quant(*args, rounding=torch.floor), "floor instead of to nearest"),
    ("uniform_fake_quant", lambda *args: fake_quant(*args, clamp=False), "no clamp"),
    ("uniform_fake_quant", lambda w, b, c: fake_quant(w, b, c, step_bits=b), "the step is clip / 2^b"),
    ("uniform_fake_quant", lambda w, b, c: fake_quant(w, b, c, top=2 ** (b - 1)), "the top code is 2^(b-1) - 1"),
    ("box_decode", lambda *args: decode(*args, exp=lambda d: d), "the size has no exp"),
    ("box_decode", lambda *args: decode(*args, scaled=False), "the centre shift is not scaled"),
    ("box_decode", lambda *args: decode(*args, corners=False), "(cx, cy, w, h)"),
    ("box_decode", lambda *args: decode(*args, exp=lambda d: 1 + d + d**2), None),
    ("llaq_forward", lambda *args: llaq_forward(*args, ste=None), "no straight-through gradient"),
    ("llaq_forward", lambda *args: llaq_forward(*args, ste="round and clamp"), "the gradient flows where e is clamped"),
    ("llaq_forward", lambda *args: llaq_forward(*args).detach(), "no straight-through gradient"),
    ("llaq_forward", lambda *args: llaq_forward(*args, side_at=0.0), "the sign of w"),
    ("llaq_forward", lambda *args: llaq_forward(*args, log=torch.log), "natural log"),
    ("llaq_forward", lambda *args: llaq_forward(*args, log=torch.log10), None),
    ("snap_k", lambda *args: snap_k(*args, keep_top=False), "a is unchanged"),
    ("snap_k", lambda *args: snap_k(*args, snap=round), "k is rounded linearly"),
    ("learned_exponent", lambda *args: learned_exponent(*args, start=torch.round), "rounded psi to nearest"),
    ("learned_exponent", lambda *args: learned_exponent(*args, stretch=False), "plain sigmoid"),
    (
        "filter_mask",
        lambda *args: filter_mask(*args, confidence=lambda fp, q: q.amax(-1)),
        "the quantized model's confidence instead of the FP model's",
    ),
    ("filter_mask", lambda *args: filter_mask(*args, strict=True), "strict > instead of >="),
    ("filter_mask", lambda *args: filter_mask(*args, steps="confidence"), "only the confidence step"),
    ("filter_mask", lambda *args: filter_mask(*args, steps="iou"), "only the IoU step"),
    ("filter_mask", lambda *args: filter_mask(*args, confidence=lambda fp, q: fp.mean(-1)), "mean over classes"),
    ("global_loss", lambda *args: global_loss(*args[:4], 0.0, 0.0), "no filter on the box term"),
    ("global_loss", lambda *args: global_loss(*args, per_kept=True), "divided by the number of kept pairs"),
    ("global_loss", lambda *args: global_loss(*args, subtract=False), "not zero when the models agree"),
    ("global_loss", lambda *args: global_loss(*args, by="q"), "the quantized model's confidence"),
    ("global_loss", lambda *args: global_loss(*args).item(), "no gradient"),
    ("fisher_local_loss", lambda *args: fisher_local_loss(*args, weight=lambda g: g), "g is not squared"),
    ("fisher_local_loss", lambda *args: fisher_local_loss(*args, channels=torch.mean), "mean over channels"),
    ("fisher_local_loss", lambda *args: fisher_local_loss(*args, weight=lambda g: 1), "no Fisher weight"),
    ("fisher_local_loss", lambda *args: fisher_local_loss(*args).item(), "no gradient"),
    ("rounding_regularizer", lambda *args: rounding_regularizer(*args).detach(), "no gradient"),
    ("rounding_regularizer", lambda *args: rounding_regularizer(*args, one_minus=False), 'the "1 -" is missing'),
    (
        "rounding_regularizer",
        lambda *args: rounding_regularizer(*args, reduce=torch.mean),
        "the mean instead of the sum",
    ),
    ("rounding_regularizer", lambda *args: rounding_regularizer(*args, base=lambda h: 2 * h - 1), "without abs"),
    ("rounding_regularizer", lambda *args: rounding_regularizer(*args, base=lambda h: (h - 0.5).abs()), None),
    ("reconstruct_unit", lambda *args: reconstruct(*args, zero_grad=False), "no zero_grad"),
    ("reconstruct_unit", lambda *args: reconstruct(*args, reg_from=None), "the rounding stays undecided"),
    ("reconstruct_unit", lambda *args: reconstruct(*args, reg_from=0.0), "the regulariser starts at iteration 1"),
    ("reconstruct_unit", lambda *args: reconstruct(*args, step=False), "the parameters did not move"),
    ("reconstruct_unit", lambda *args: reconstruct(*args, beta_end=20.0), "beta runs from 20 to 20"),
    ("reconstruct_unit", lambda *args: reconstruct(*args)[:10], "return the list of the 200 local losses"),
    ("reconstruct_unit", lambda *args: reconstruct(*args, weighted=False), "the loss never uses fisher"),
]


@pytest.mark.parametrize(("name", "wrong", "mistake"), WRONG, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(WRONG)])
def test_a_typical_mistake_is_named(name, wrong, mistake, capsys):
    with pytest.raises(checks.CheckFailed) as failed:
        checks.ALL[name](wrong)
    message = str(failed.value)
    assert capsys.readouterr().out.strip() == f"not yet ({name}): {message}"
    if mistake is None:  # an unknown mistake: how far off, and a hint
        assert "off by up to" in message
    else:
        assert mistake in message


def test_each_check_names_at_least_two_mistakes():
    named = {}
    for name, _, mistake in WRONG:
        named.setdefault(name, set()).add(mistake)
    assert all(len(m - {None}) >= 2 for m in named.values()) and set(named) == set(checks.ALL)


def test_a_stub_is_an_unanswered_exercise():
    def stub(*args):
        raise NotImplementedError()

    for check in checks.ALL.values():
        with pytest.raises(NotImplementedError):
            check(stub)


def test_a_buggy_answer_is_named_with_its_error(capsys):
    def crashes(*args):
        return args[99]

    with pytest.raises(checks.CheckFailed, match="your function raised IndexError") as failed:
        checks.snap_k(crashes)
    assert isinstance(failed.value, AssertionError)  # nbgrader's autograder gives the cell zero
    assert isinstance(failed.value.__cause__, IndexError)  # the student sees where their code broke
    assert "raised IndexError" in capsys.readouterr().out


def test_a_wrong_shape_or_type_is_said():
    with pytest.raises(checks.CheckFailed, match=r"expected shape \(256,\), got \(1,\)"):
        checks.uniform_fake_quant(lambda *args: torch.zeros(1))
    with pytest.raises(checks.CheckFailed, match="expected a bool tensor"):
        checks.filter_mask(lambda *args: filter_mask(*args).float())
    with pytest.raises(checks.CheckFailed, match="expected a number or a tensor, got str"):
        checks.fisher_local_loss(lambda *args: "0.5")


def test_an_unknown_mistake_gets_off_by_and_a_hint():
    with pytest.raises(checks.CheckFailed, match=r"off by up to .*s = clip / 2\^\(b-1\)"):
        checks.uniform_fake_quant(lambda w, bits, clip: fake_quant(w, bits, clip) * 1.01)


def test_with_hints_off_a_wrong_answer_is_not_shown_the_formula(capsys):
    checks.set_hints(False)
    try:
        with pytest.raises(checks.CheckFailed) as failed:
            checks.uniform_fake_quant(lambda w, bits, clip: fake_quant(w, bits, clip) * 1.01)
        with pytest.raises(checks.CheckFailed, match="floor instead of to nearest"):  # a known mistake: still named
            checks.uniform_fake_quant(lambda w, bits, clip: fake_quant(w, bits, clip, rounding=torch.floor))
    finally:
        checks.set_hints(True)
    assert "off by up to" in str(failed.value) and "clip / 2^(b-1)" not in str(failed.value)
    assert str(failed.value).endswith(NO_HINT)


def test_the_check_leaves_the_notebook_random_state_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    checks.reconstruct_unit(reconstruct)
    assert torch.equal(torch.rand(3), expected)
