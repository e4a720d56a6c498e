"""Tests for featdistill.losses: each loss's defining property (reference/methods.md) and a hand value.

Hand values are written out with the ``math`` module on 2- or 3-class examples whose softmax is exact
(logits = log of simple probabilities), never by calling the torch code under test.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from featdistill.losses import (
    Schedule,
    at_loss,
    attention_map,
    cka_loss,
    class_means,
    constant,
    cross_entropy,
    dist_loss,
    dist_terms,
    dkd_loss,
    dkd_terms,
    fitnet_loss,
    focal_loss,
    inter_class_relation,
    intra_class_relation,
    kd_loss,
    linear_cka,
    linear_warmup,
    nd_loss,
    soft_target_ce,
    topk_to_probs,
)

D64 = torch.float64
LN = math.log


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=D64) * scale


def _logits_of(*probs: list[float]) -> torch.Tensor:
    """Logits whose softmax (T = 1) is exactly the given probability rows."""
    return torch.tensor([[LN(p) for p in row] for row in probs], dtype=D64)


def _inference(x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return x.clone()


# --------------- cross-entropy


def test_cross_entropy_hand_value_with_label_smoothing() -> None:
    logits = _logits_of([0.75, 0.25])
    target = torch.tensor([0])
    assert cross_entropy(logits, target).item() == pytest.approx(-LN(0.75), rel=1e-12)
    # ε = 0.1, C = 2: smoothed label [0.95, 0.05]
    expected = -(0.95 * LN(0.75) + 0.05 * LN(0.25))
    assert cross_entropy(logits, target, label_smoothing=0.1).item() == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_rejects_bad_smoothing() -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(torch.zeros(1, 2), torch.tensor([0]), label_smoothing=1.5)


# --------------- KD


def test_kd_hand_value() -> None:
    # p_t = [3/4, 1/4], p_s = [1/2, 1/2] at T = 1
    kl = 0.75 * LN(0.75 / 0.5) + 0.25 * LN(0.25 / 0.5)
    s = torch.zeros(1, 2, dtype=D64)
    t = _logits_of([0.75, 0.25])
    assert kd_loss(s, t, temperature=1.0).item() == pytest.approx(kl, rel=1e-12)
    # at T = 2 the teacher logits 2·log p give the same softened distribution; T² = 4
    assert kd_loss(s, 2 * t, temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-12)


def test_kd_zero_when_equal_and_shift_invariant() -> None:
    s, t = _randn(6, 5, seed=0, scale=3), _randn(6, 5, seed=1, scale=3)
    assert kd_loss(s, s).item() == pytest.approx(0.0, abs=1e-12)
    base = kd_loss(s, t).item()
    shift_s, shift_t = _randn(6, 1, seed=2, scale=10), _randn(6, 1, seed=3, scale=10)
    assert kd_loss(s + shift_s, t).item() == pytest.approx(base, rel=1e-10)
    assert kd_loss(s, t + shift_t).item() == pytest.approx(base, rel=1e-10)
    assert kd_loss(s + shift_s, s + shift_t).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_gradient_identity(temperature: float) -> None:
    b = 5
    s = _randn(b, 7, seed=4, scale=2).requires_grad_()
    t = _randn(b, 7, seed=5, scale=2)
    kd_loss(s, t, temperature=temperature).backward()
    expected = (temperature / b) * (F.softmax(s.detach() / temperature, 1) - F.softmax(t / temperature, 1))
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)


def test_kd_equals_kl_div_form_and_per_sample() -> None:
    s, t, temp = _randn(8, 10, seed=6, scale=3), _randn(8, 10, seed=7, scale=3), 4.0
    ref = temp**2 * F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="batchmean")
    torch.testing.assert_close(kd_loss(s, t, temperature=temp), ref)
    torch.testing.assert_close(kd_loss(s, t, temperature=temp, reduction="none").mean(), ref)


def test_kd_accepts_topk_log_probs_with_minus_inf_and_inference_teacher() -> None:
    s = _randn(3, 4, seed=8).requires_grad_()
    t = torch.tensor([[LN(0.5), LN(0.5), -math.inf, -math.inf]] * 3, dtype=D64)
    loss = kd_loss(s, _inference(t), temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_kd_shape_error_names_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# --------------- DKD


def test_dkd_hand_values() -> None:
    # sample 0: y = 0, p_t = [2/6, 3/6, 1/6], p_s uniform -> b_t = b_s = [1/3, 2/3] (TCKD 0),
    #           p̂_t = [3/4, 1/4], p̂_s = [1/2, 1/2].
    # sample 1: y = 0, p_t = [1/2, 1/4, 1/4], p_s uniform -> b_t = [1/2, 1/2], b_s = [1/3, 2/3], p̂_t = p̂_s.
    s = torch.zeros(2, 3, dtype=D64)
    t = _logits_of([2 / 6, 3 / 6, 1 / 6], [1 / 2, 1 / 4, 1 / 4])
    y = torch.tensor([0, 0])
    nckd0 = 0.75 * LN(1.5) + 0.25 * LN(0.5)
    tckd1 = 0.5 * LN(0.5 / (1 / 3)) + 0.5 * LN(0.5 / (2 / 3))
    tckd, nckd = dkd_terms(s, t, y, temperature=1.0, reduction="none")
    torch.testing.assert_close(tckd, torch.tensor([0.0, tckd1], dtype=D64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(nckd, torch.tensor([nckd0, 0.0], dtype=D64), rtol=1e-12, atol=1e-14)
    # batch mean, α = 1, β = 8
    expected = (tckd1 + 8 * nckd0) / 2
    assert dkd_loss(s, t, y, temperature=1.0).item() == pytest.approx(expected, rel=1e-12)
    # identity by hand for sample 0: KL(p_t‖p_s) = (1 − 1/3)·NCKD
    kl0 = (2 / 6) * LN(1.0) + (3 / 6) * LN(1.5) + (1 / 6) * LN(0.5)
    assert kl0 == pytest.approx((2 / 3) * nckd0, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_per_sample_identity(temperature: float) -> None:
    b, c = 16, 10
    s, t = _randn(b, c, seed=10, scale=4), _randn(b, c, seed=11, scale=4)
    y = torch.randint(0, c, (b,), generator=_gen(12))
    tckd, nckd = dkd_terms(s, t, y, temperature=temperature, reduction="none")
    kd = kd_loss(s, t, temperature=temperature, reduction="none")
    p_t_y = F.softmax(t / temperature, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(kd, tckd + (1 - p_t_y) * nckd, rtol=1e-10, atol=1e-12)
    # hence α = β = 1 is not KD: it is ≥ KD
    assert (dkd_loss(s, t, y, 1.0, 1.0, temperature, reduction="none") >= kd - 1e-12).all()


def test_dkd_batchmean_matches_per_sample_and_gradient_is_finite() -> None:
    s = _randn(6, 5, seed=13, scale=30).requires_grad_()  # extreme logits: no NaN without the 1000 trick
    t = _inference(_randn(6, 5, seed=14, scale=30))
    y = torch.randint(0, 5, (6,), generator=_gen(15))
    loss = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0)
    per = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0, reduction="none")
    torch.testing.assert_close(loss, per.mean())
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_dkd_zero_when_equal_and_two_classes() -> None:
    s = _randn(4, 2, seed=16)
    y = torch.tensor([0, 1, 1, 0])
    assert dkd_loss(s, s, y).item() == pytest.approx(0.0, abs=1e-12)
    # with C = 2 the non-target distribution is a point mass: NCKD = 0, TCKD = KD
    t = _randn(4, 2, seed=17)
    tckd, nckd = dkd_terms(s, t, y)
    assert nckd.item() == pytest.approx(0.0, abs=1e-12)
    assert tckd.item() == pytest.approx(kd_loss(s, t).item(), rel=1e-10)


def _mdistiller_dkd(
    s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, temp: float
) -> torch.Tensor:
    """mdistiller ``dkd_loss`` transcribed (magic −1000 mask; ``size_average=False`` then / B)."""
    gt = F.one_hot(y, s.shape[1]).bool()
    p_s, p_t = F.softmax(s / temp, 1), F.softmax(t / temp, 1)

    def cat_mask(p: torch.Tensor) -> torch.Tensor:
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * ~gt).sum(1, keepdim=True)], 1)

    b_s, b_t = cat_mask(p_s), cat_mask(p_t)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temp**2 / s.shape[0]
    log_p2_s = F.log_softmax(s / temp - 1000.0 * gt, 1)
    p2_t = F.softmax(t / temp - 1000.0 * gt, 1)
    nckd = F.kl_div(log_p2_s, p2_t, reduction="sum") * temp**2 / s.shape[0]
    return alpha * tckd + beta * nckd


def test_dkd_matches_reference_code_up_to_mask() -> None:
    s, t = _randn(12, 7, seed=18, scale=3), _randn(12, 7, seed=19, scale=3)
    y = torch.randint(0, 7, (12,), generator=_gen(20))
    ref = _mdistiller_dkd(s, t, y, 1.0, 8.0, 4.0)
    torch.testing.assert_close(dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0), ref)
    # integer labels of any width are accepted
    torch.testing.assert_close(dkd_loss(s, t, y.int(), temperature=4.0), ref)


def test_dkd_rejects_bad_target() -> None:
    with pytest.raises(ValueError, match="labels"):
        dkd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))


# --------------- DIST


def test_dist_hand_value() -> None:
    # Y_s rows [1/2,1/4,1/4], [1/4,1/2,1/4]; Y_t rows [1/2,1/4,1/4], [1/4,1/4,1/2]
    # inter: ρ_row0 = 1, ρ_row1: centred (-1,2,-1)/12 · (-1,-1,2)/12 = -3/144 over 6/144 -> -1/2
    #        L_inter = 1 - (1 - 1/2)/2 = 3/4
    # intra: col0 ρ = 1, col1 teacher constant -> 0, col2 student constant -> 0 -> L_intra = 1 - 1/3
    s = _logits_of([1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 2, 1 / 4])
    t = _logits_of([1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 4, 1 / 2])
    inter, intra = dist_terms(s, t)
    assert inter.item() == pytest.approx(0.75, abs=1e-6)
    assert intra.item() == pytest.approx(2 / 3, abs=1e-6)
    assert dist_loss(s, t).item() == pytest.approx(0.75 + 2 / 3, abs=1e-6)
    assert dist_loss(s, t, beta=2.0, gamma=0.5).item() == pytest.approx(1.5 + 1 / 3, abs=1e-6)
    # τ = 2 with logits 2·log p gives the same Y; each term scaled by τ² = 4
    assert dist_loss(2 * s, 2 * t, temperature=2.0).item() == pytest.approx(4 * (0.75 + 2 / 3), abs=1e-5)


def test_dist_zero_when_equal_and_bounded() -> None:
    s = _randn(8, 6, seed=20, scale=2)
    inter, intra = dist_terms(s, s)
    assert inter.item() == pytest.approx(0.0, abs=1e-6) and intra.item() == pytest.approx(0.0, abs=1e-6)
    for seed in range(5):
        a, b = _randn(8, 6, seed=100 + seed, scale=3), _randn(8, 6, seed=200 + seed, scale=3)
        for term in dist_terms(a, b):
            assert 0.0 <= term.item() <= 2.0
    # perfectly anti-correlated rows give the upper end, 2
    y = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=D64)
    assert inter_class_relation(y, 1 - y).item() == pytest.approx(2.0, abs=1e-6)


def test_dist_affine_invariance_and_transposition() -> None:
    y_s = F.softmax(_randn(7, 5, seed=21, scale=2), 1)
    y_t = F.softmax(_randn(7, 5, seed=22, scale=2), 1)
    a_row = _randn(7, 1, seed=23).abs() + 0.1
    b_row = _randn(7, 1, seed=24)
    a_col = _randn(1, 5, seed=25).abs() + 0.1
    b_col = _randn(1, 5, seed=26)
    torch.testing.assert_close(inter_class_relation(a_row * y_s + b_row, y_t), inter_class_relation(y_s, y_t))
    torch.testing.assert_close(intra_class_relation(a_col * y_s + b_col, y_t), intra_class_relation(y_s, y_t))
    torch.testing.assert_close(intra_class_relation(y_s, y_t), inter_class_relation(y_s.T, y_t.T))


# --------------- focal


def test_focal_hand_value_and_alpha() -> None:
    logits = _logits_of([0.75, 0.25])
    y = torch.tensor([0])
    expected = -((0.25) ** 2) * LN(0.75)
    assert focal_loss(logits, y).item() == pytest.approx(expected, rel=1e-12)
    assert focal_loss(logits, y, alpha=[0.25, 0.75]).item() == pytest.approx(0.25 * expected, rel=1e-12)
    assert focal_loss(logits, y, alpha=0.5).item() == pytest.approx(0.5 * expected, rel=1e-12)


def test_focal_gamma_zero_equals_ce() -> None:
    logits = _randn(9, 4, seed=30, scale=3).requires_grad_()
    y = torch.randint(0, 4, (9,), generator=_gen(31))
    torch.testing.assert_close(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))
    # per-class alpha with γ = 0 is weighted CE (sum over batch / B, not PyTorch's weighted mean)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=D64)
    ref = F.cross_entropy(logits, y, reduction="none") * w[y]
    torch.testing.assert_close(focal_loss(logits, y, gamma=0.0, alpha=w), ref.mean())
    focal_loss(logits, y, gamma=2.0).backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_alpha_shape_error() -> None:
    with pytest.raises(ValueError, match="one weight per class"):
        focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), alpha=[1.0, 2.0])


# --------------- soft-target CE


def test_soft_target_ce_hand_value() -> None:
    s = _logits_of([0.75, 0.25])
    q = torch.tensor([[0.5, 0.5]], dtype=D64)
    expected = -(0.5 * LN(0.75) + 0.5 * LN(0.25))
    assert soft_target_ce(s, q).item() == pytest.approx(expected, rel=1e-12)
    assert soft_target_ce(2 * s, q, temperature=2.0).item() == pytest.approx(expected, rel=1e-12)


def test_soft_target_ce_is_kd_plus_entropy() -> None:
    s, t = _randn(5, 6, seed=40), _randn(5, 6, seed=41)
    q = F.softmax(t, 1)
    entropy = -(q * q.log()).sum(1).mean()
    torch.testing.assert_close(soft_target_ce(s, q), kd_loss(s, t, temperature=1.0) + entropy)
    # zeros in q (top-k stores) contribute nothing, even against a -inf student log-probability
    q0 = torch.tensor([[1.0, 0.0]], dtype=D64)
    s0 = torch.tensor([[0.0, -math.inf]], dtype=D64)
    assert soft_target_ce(s0, q0).item() == pytest.approx(0.0, abs=1e-12)


def test_topk_to_probs_spreads_remaining_mass() -> None:
    values = torch.tensor([[0.6, 0.2]])
    indices = torch.tensor([[3, 0]])
    dense = topk_to_probs(values, indices, num_classes=5)
    torch.testing.assert_close(dense, torch.tensor([[0.2, 0.2 / 3, 0.2 / 3, 0.6, 0.2 / 3]]))
    torch.testing.assert_close(dense.sum(1), torch.ones(1))


# --------------- FitNet


def test_fitnet_hand_value_zero_and_error() -> None:
    s = torch.zeros(1, 1, 1, 2, dtype=D64)
    t = torch.tensor([[[[1.0, 3.0]]]], dtype=D64)
    assert fitnet_loss(s, t).item() == pytest.approx((1 + 9) / 2, rel=1e-12)
    f = _randn(2, 3, 4, 4, seed=50)
    assert fitnet_loss(f, f.clone()).item() == 0.0
    with pytest.raises(ValueError, match=r"\(2, 8, 4, 4\).*\(2, 16, 4, 4\).*adapter"):
        fitnet_loss(torch.zeros(2, 8, 4, 4), torch.zeros(2, 16, 4, 4))


def test_fitnet_accepts_inference_teacher() -> None:
    s = _randn(2, 3, 4, 4, seed=51).requires_grad_()
    fitnet_loss(s, _inference(_randn(2, 3, 4, 4, seed=52))).backward()
    assert s.grad is not None


# --------------- AT


def test_attention_map_hand_value() -> None:
    # channels [1, 2] and [3, 0] at two positions: mean_c f² = [5, 2] -> [5, 2]/√29
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]], dtype=D64)
    expected = torch.tensor([[5 / math.sqrt(29), 2 / math.sqrt(29)]], dtype=D64)
    torch.testing.assert_close(attention_map(f), expected)
    # against a teacher with attention [1, 0]: mean of squared differences over the 2 positions
    t = torch.tensor([[[[1.0, 0.0]]]], dtype=D64)
    hand = ((5 / math.sqrt(29) - 1) ** 2 + (2 / math.sqrt(29)) ** 2) / 2
    assert at_loss([f], [t]).item() == pytest.approx(hand, rel=1e-12)


def test_attention_map_properties() -> None:
    f = _randn(3, 4, 5, 5, seed=60)
    q = attention_map(f)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(3, dtype=D64))
    for a in (-3.0, 0.01, 7.5):
        torch.testing.assert_close(attention_map(a * f), q)
    # channel-count independence: duplicating / permuting channels does not change the map
    torch.testing.assert_close(attention_map(torch.cat([f, f], dim=1)), q)
    torch.testing.assert_close(attention_map(f[:, torch.randperm(4, generator=_gen(61))]), q)


def test_at_loss_zero_scale_invariant_channels_and_pooling() -> None:
    fs = [_randn(2, 8, 8, 8, seed=62), _randn(2, 16, 4, 4, seed=63)]
    ft = [_randn(2, 32, 8, 8, seed=64), _randn(2, 64, 4, 4, seed=65)]
    assert at_loss(fs, [f.clone() for f in fs]).item() == pytest.approx(0.0, abs=1e-14)
    base = at_loss(fs, ft)
    torch.testing.assert_close(at_loss([5 * fs[0], 0.1 * fs[1]], ft), base)
    # the sum over pairs
    torch.testing.assert_close(base, at_loss(fs[0], ft[0]) + at_loss(fs[1], ft[1]))
    # different spatial sizes: the larger map is average-pooled to the smaller size (either side)
    big = _randn(2, 3, 8, 8, seed=66)
    small = _randn(2, 5, 4, 4, seed=67)
    torch.testing.assert_close(at_loss([big], [small]), at_loss([F.adaptive_avg_pool2d(big, 4)], [small]))
    torch.testing.assert_close(at_loss([small], [big]), at_loss([small], [F.adaptive_avg_pool2d(big, 4)]))


def test_at_loss_errors_and_inference_teacher() -> None:
    with pytest.raises(ValueError, match="equally many"):
        at_loss([torch.zeros(1, 2, 4, 4)], [])
    s = _randn(2, 3, 4, 4, seed=68).requires_grad_()
    at_loss([s], [_inference(_randn(2, 6, 4, 4, seed=69))]).backward()
    assert torch.isfinite(s.grad).all()


# --------------- ND


def test_nd_hand_values() -> None:
    e_s = torch.tensor([[3.0, 4.0]], dtype=D64)  # ‖e_s‖ = 5, cos with c = [1, 0] is 3/5
    centres = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=D64)
    y = torch.tensor([0])
    big_t = torch.tensor([[0.0, 10.0]], dtype=D64)
    small_t = torch.tensor([[2.0, 0.0]], dtype=D64)
    assert nd_loss(e_s, big_t, centres, y).item() == pytest.approx(1 - 3 / 10, rel=1e-12)
    assert nd_loss(e_s, small_t, centres, y).item() == pytest.approx(1 - 3 / 5, rel=1e-12)


def test_nd_parallel_cases() -> None:
    centres = _randn(4, 6, seed=70)
    y = torch.tensor([2, 0, 3])
    direction = F.normalize(centres[y], dim=1)
    e_s = direction * torch.tensor([[2.0], [5.0], [0.5]], dtype=D64)
    larger_t = _randn(3, 6, seed=71)
    larger_t = larger_t / larger_t.norm(dim=1, keepdim=True) * torch.tensor([[1.0], [4.0], [0.1]], dtype=D64)
    torch.testing.assert_close(nd_loss(e_s, larger_t, centres, y, reduction="none"), torch.zeros(3, dtype=D64))
    t_norms = torch.tensor([4.0, 10.0, 2.0], dtype=D64)
    e_t = F.normalize(_randn(3, 6, seed=72), dim=1) * t_norms[:, None]
    expected = 1 - torch.tensor([2.0, 5.0, 0.5], dtype=D64) / t_norms
    torch.testing.assert_close(nd_loss(e_s, e_t, centres, y, reduction="none"), expected)


def test_nd_vectorised_equals_official_loop_and_gradient_through_max() -> None:
    b, d, c = 10, 8, 5
    e_s = _randn(b, d, seed=73, scale=2).requires_grad_()
    e_t = _randn(b, d, seed=74, scale=2)
    centres = _randn(c, d, seed=75)
    y = torch.randint(0, c, (b,), generator=_gen(76))
    loop = (
        sum(
            1 - torch.dot(s, centres[int(i)] / centres[int(i)].norm()) / max(s.norm(), t.norm())
            for s, t, i in zip(e_s, e_t, y)
        )
        / b
    )
    vec = nd_loss(e_s, e_t, centres, y)
    torch.testing.assert_close(vec, loop)
    (g_vec,) = torch.autograd.grad(vec, e_s)
    (g_loop,) = torch.autograd.grad(loop, e_s)
    torch.testing.assert_close(g_vec, g_loop)
    # when ‖e_s‖ > ‖e_t‖ the loss is 1 − cos, whose gradient is orthogonal to e_s (the max is not detached)
    e_big = (10 * _randn(1, d, seed=77)).requires_grad_()
    (g,) = torch.autograd.grad(nd_loss(e_big, torch.zeros(1, d, dtype=D64), centres, y[:1]), e_big)
    assert (g * e_big).sum().item() == pytest.approx(0.0, abs=1e-10)


def test_class_means_and_errors() -> None:
    emb = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [0.0, 0.0]], dtype=D64)
    y = torch.tensor([0, 0, 2, 2])
    with pytest.raises(ValueError, match=r"class\(es\) have no sample: 1"):
        class_means(emb, y, 3)
    means = class_means(emb, y, 3, allow_empty=True)
    torch.testing.assert_close(means, torch.tensor([[2.0, 3.0], [0.0, 0.0], [5.0, 0.0]], dtype=D64))
    big = _randn(200, 7, seed=78)
    labels = torch.randint(0, 6, (200,), generator=_gen(79))
    ref = torch.stack([big[labels == k].mean(0) for k in range(6)])
    torch.testing.assert_close(class_means(big, labels, 6), ref)
    with pytest.raises(ValueError, match="targets must lie"):
        class_means(big, labels, 3)
    with pytest.raises(ValueError, match="projector"):
        nd_loss(torch.zeros(2, 4), torch.zeros(2, 8), torch.zeros(3, 8), torch.tensor([0, 1]))


# --------------- CKA


def _kernel_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HSIC form with K = XXᵀ, L = YYᵀ and H = I − 11ᵀ/n (independent of the implementation under test)."""
    n = x.shape[0]
    x, y = x.reshape(n, -1), y.reshape(n, -1)
    h = torch.eye(n, dtype=x.dtype) - torch.ones(n, n, dtype=x.dtype) / n

    def hsic(k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.trace(k @ h @ m @ h) / (n - 1) ** 2

    k, m = x @ x.T, y @ y.T
    return hsic(k, m) / torch.sqrt(hsic(k, k) * hsic(m, m))


def test_cka_hand_value() -> None:
    # 1-D features: linear CKA = squared Pearson correlation;
    # centred [-1,0,1]·[0,-1,1] = 1, norms √2 -> ρ = 1/2
    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=D64)
    y = torch.tensor([[1.0], [0.0], [2.0]], dtype=D64)
    assert linear_cka(x, y).item() == pytest.approx(0.25, rel=1e-12)
    assert cka_loss(x, y).item() == pytest.approx(0.75, rel=1e-12)


def test_cka_properties() -> None:
    x = _randn(12, 5, seed=80)
    y = _randn(12, 3, 2, 2, seed=81)  # maps are flattened per sample
    assert linear_cka(x, x).item() == pytest.approx(1.0, rel=1e-12)
    assert cka_loss(y, y).item() == pytest.approx(0.0, abs=1e-12)
    q, _ = torch.linalg.qr(_randn(5, 5, seed=82))
    base = linear_cka(x, y)
    torch.testing.assert_close(linear_cka(x @ q, y), base)
    torch.testing.assert_close(linear_cka(-3.5 * x, 0.2 * y), base)
    assert 0.0 <= base.item() <= 1.0
    # not invariant to an arbitrary invertible linear map
    a = torch.diag(torch.tensor([10.0, 1.0, 1.0, 0.1, 1.0], dtype=D64))
    assert abs(linear_cka(x @ a, y).item() - base.item()) > 1e-3
    # linear form equals the kernel (HSIC) form, on both code paths (n² ≤ p1·p2 and n² > p1·p2)
    torch.testing.assert_close(base, _kernel_cka(x, y))
    wide_x, wide_y = _randn(4, 30, seed=83), _randn(4, 20, seed=84)
    torch.testing.assert_close(linear_cka(wide_x, wide_y), _kernel_cka(wide_x, wide_y))


def test_cka_sample_mismatch() -> None:
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(torch.zeros(3, 2), torch.zeros(4, 2))


# --------------- schedule


def test_schedule_warmup_values() -> None:
    s = linear_warmup(2.0, 20)
    assert [s(e) for e in (0, 5, 10, 20, 40)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert s(-1.0) == 0.0
    assert s(0.5) == pytest.approx(2.0 * 0.5 / 20)
    assert constant(0.9)(0) == 0.9 and constant(0.9)(1000.5) == 0.9


def test_schedule_parse_and_errors() -> None:
    assert Schedule.parse(1) == constant(1.0)
    assert Schedule.parse({"value": 8.0, "warmup": 20}) == linear_warmup(8.0, 20)
    assert Schedule.parse({"value": 0.5}) == constant(0.5)
    s = linear_warmup(1.0, 5)
    assert Schedule.parse(s) is s
    assert Schedule.parse(s.to_spec()) == s and Schedule.parse(constant(3).to_spec()) == constant(3)
    with pytest.raises(ValueError, match="unknown key"):
        Schedule.parse({"value": 1.0, "warm_up": 5})
    with pytest.raises(ValueError, match="missing key 'value'"):
        Schedule.parse({"warmup": 5})
    with pytest.raises(ValueError, match="number"):
        Schedule.parse("1.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup"):
        Schedule(1.0, -1.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        linear_warmup(1.0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.value = 3.0  # type: ignore[misc]


# --------------- half precision


def test_bf16_inputs_give_float32_losses() -> None:
    s = torch.randn(4, 5, generator=_gen(90)).bfloat16().requires_grad_()
    t = torch.randn(4, 5, generator=_gen(91)).bfloat16()
    y = torch.tensor([0, 1, 2, 3])
    for value in (kd_loss(s, t), dkd_loss(s, t, y), dist_loss(s, t), focal_loss(s, y), cross_entropy(s, y)):
        assert value.dtype == torch.float32 and torch.isfinite(value)
    kd_loss(s, t).backward()
    assert s.grad is not None and s.grad.dtype == torch.bfloat16
