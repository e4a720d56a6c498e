"""Catalog II feature recipes (VID, FT, OFD, ReviewKD, SRD): each loss against hand computation and its defining
property (float64), each recipe trained a real step on a zoo pair."""

from __future__ import annotations

import math

import pytest
import torch

from featdistill.distiller import Distiller
from featdistill.losses.feature_regression import ft_factor, ft_loss, match_spatial, vid_loss, vid_variance
from featdistill.methods import build_method
from featdistill.models import build_model
from featdistill.train import checkpoint as ckpt

D64 = torch.float64
C = 4


def _batch(n: int = 4, seed: int = 0, size: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input": torch.randn(n, 3, size, size, generator=g),
        "target": torch.arange(n) % C,
        "sample_id": torch.arange(n),
        "view_id": torch.zeros(n, dtype=torch.long),
    }


def _pair(teacher: str = "resnet14", student: str = "resnet8", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(teacher, num_classes=C, image_size=16), build_model(student, num_classes=C, image_size=16)


def _train_step(d: Distiller, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01)
    _, losses = d(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    opt.step()
    return losses


def _adapter_grads(method) -> bool:
    return all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in method.adapters.parameters() if p.requires_grad
    )


# -- shared helpers -------------------------------------------------------------------------------------------
def test_match_spatial_pools_the_larger_map():
    a, b = torch.ones(1, 2, 8, 8, dtype=D64), torch.ones(1, 3, 4, 4, dtype=D64)
    s, t = match_spatial(a, b)
    assert s.shape == (1, 2, 4, 4) and t is b
    t2, s2 = match_spatial(b, a)
    assert t2 is b and s2.shape == (1, 2, 4, 4)


# -- VID ------------------------------------------------------------------------------------------------------
def test_vid_variance_init_and_by_hand():
    alpha = torch.full((3,), math.log(math.exp(5.0 - 1e-5) - 1.0), dtype=D64)
    assert vid_variance(alpha).tolist() == pytest.approx([5.0] * 3, abs=1e-12)
    assert vid_variance(torch.zeros(1, dtype=D64), eps=0.0).item() == pytest.approx(math.log(2.0), rel=1e-15)


def test_vid_loss_by_hand():
    mu = torch.tensor([1.0, 2.0], dtype=D64).view(1, 2, 1, 1)
    t = torch.zeros(1, 2, 1, 1, dtype=D64)
    var = [1.0, 4.0]
    alpha = torch.tensor([math.log(math.exp(v) - 1.0) for v in var], dtype=D64)  # softplus⁻¹, eps 0
    want = 0.5 * ((1.0 / 1.0 + math.log(1.0)) + (4.0 / 4.0 + math.log(4.0))) / 2
    got = vid_loss(mu, t, alpha, eps=0.0)
    assert got.dtype == D64 and got.item() == pytest.approx(want, rel=1e-13)


def test_vid_loss_minimum_and_gradient_direction():
    """Minimum over the mean at μ = f_t; over the variance at σ² = (μ − f_t)²; ∂L/∂μ has the sign of μ − f_t."""
    t = torch.tensor([0.5, -1.0], dtype=D64).view(1, 2, 1, 1)
    alpha = torch.zeros(2, dtype=D64)
    mu = torch.tensor([1.5, -3.0], dtype=D64).view(1, 2, 1, 1).requires_grad_(True)
    vid_loss(mu, t, alpha).backward()
    assert (torch.sign(mu.grad) == torch.sign(mu.detach() - t)).all()
    at_t = vid_loss(t.clone(), t, alpha)
    assert at_t.item() < vid_loss(mu.detach(), t, alpha).item()
    assert at_t.item() == pytest.approx(0.5 * math.log(math.log(2.0) + 1e-5), rel=1e-12)
    e2 = 0.7**2  # a single error of 0.7: the variance minimising ½(e²/σ² + log σ²) is e²
    m1, t1 = torch.full((1, 1, 1, 1), 0.7, dtype=D64), torch.zeros(1, 1, 1, 1, dtype=D64)

    def at(var: float) -> float:
        return vid_loss(m1, t1, torch.tensor([math.log(math.expm1(var))], dtype=D64), eps=0.0).item()

    assert at(e2) < min(at(e2 * 0.9), at(e2 * 1.1))


def test_vid_recipe_trains_a_step():
    teacher, student = _pair()
    m = build_method("vid")
    d = Distiller(student, m, teacher)
    losses = _train_step(d, _batch())
    assert set(losses) == {"ce", "vid"} and len(m.adapters) == 3
    assert _adapter_grads(m)
    assert m.adapters["vid0"].log_scale.grad.abs().sum() > 0  # the variance is trained (RepDistiller)
    reg = m.adapters["vid2"].regressor
    assert [c.in_channels for c in reg if isinstance(c, torch.nn.Conv2d)] == [64, 64, 64]
    m.double()
    s = {f"vid{i}": torch.randn(2, c, h, h, dtype=D64) for i, (c, h) in enumerate([(16, 16), (32, 8), (64, 4)])}
    t = {f"vid{i}": torch.randn(2, c, h, h, dtype=D64) for i, (c, h) in enumerate([(16, 16), (32, 8), (64, 4)])}
    assert m(s, t, {}, 0.0)["vid"].dtype == D64


# -- FT ---------------------------------------------------------------------------------------------------------
def test_ft_factor_by_hand():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]], dtype=D64)  # (1, 2, 1, 2)
    a = [(1 + 9) / 2, (4 + 0) / 2]  # mean over channels of f²
    n = math.sqrt(sum(x * x for x in a))
    got = ft_factor(f)
    assert got.dtype == D64 and got[0].tolist() == pytest.approx([x / n for x in a], rel=1e-15)


def test_ft_loss_by_hand_zero_at_identity_and_scale_invariant():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 4, generator=g, dtype=D64)
    t = torch.randn(2, 5, 4, 4, generator=g, dtype=D64)
    want = (ft_factor(s) - ft_factor(t)).abs().mean()
    fs = s.pow(2).mean(1).reshape(2, -1)
    ft_ = t.pow(2).mean(1).reshape(2, -1)
    by_hand = (fs / fs.norm(dim=1, keepdim=True) - ft_ / ft_.norm(dim=1, keepdim=True)).abs().mean()
    got = ft_loss(s, t)
    assert got.dtype == D64 and got.item() == pytest.approx(by_hand.item(), rel=1e-13) and torch.equal(got, want)
    assert ft_loss(t, t).item() == 0.0
    assert ft_loss(3.0 * s, -0.5 * t).item() == pytest.approx(got.item(), rel=1e-12)  # F(a·f) = F(f)
    assert ft_loss(s, t, p2=2).item() == pytest.approx((ft_factor(s) - ft_factor(t)).pow(2).mean().item(), rel=1e-13)


def test_ft_fit_pretrains_then_freezes_the_paraphraser():
    teacher, student = _pair()
    m = build_method("ft", init_epochs=3, init_lr=0.01, pretrain_device="cpu")
    d = Distiller(student, m, teacher)
    loader = [_batch(8, seed=i) for i in range(3)]
    d.fit_data(loader, C)
    hist = m.pretrain_history
    assert len(hist) == 3 and hist[-1] < hist[0]  # the reconstruction improves
    assert not any(p.requires_grad for p in m.paraphraser.parameters())
    d.prepare(_batch())
    ids = {id(p) for p in d.trainable_parameters()}
    assert not any(id(p) in ids for p in m.paraphraser.parameters())
    assert any(id(p) in ids for p in m.adapters["translator"].parameters())
    d.train()
    assert not m.paraphraser.training and m.adapters["translator"].training
    before = {k: v.clone() for k, v in m.paraphraser.state_dict().items()}
    losses = _train_step(d, _batch(seed=5))
    assert set(losses) == {"ce", "ft"} and _adapter_grads(m)
    assert all(torch.equal(before[k], v) for k, v in m.paraphraser.state_dict().items())  # frozen in stage 2
    assert not any(k.startswith("method.paraphraser") for k in ckpt.trainable_state_dict(d))
    # fit again from the same seed (what a resumed run does) rebuilds the same paraphraser
    teacher2, student2 = _pair()
    m2 = build_method("ft", init_epochs=3, init_lr=0.01, pretrain_device="cpu")
    Distiller(student2, m2, teacher2).fit_data(loader, C)
    assert all(torch.equal(before[k], v) for k, v in m2.paraphraser.state_dict().items())


def test_ft_translator_shape_and_float64():
    teacher, student = _pair("resnet14", "resnet8")
    m = build_method("ft", init_epochs=0)
    d = Distiller(student, m, teacher)
    d.prepare(_batch())
    enc = m.adapters["translator"].encoder
    assert enc[0].in_channels == 64 and enc[-3].out_channels == 32  # k·C_t = 0.5·64
    m.double()
    out = m({"ft": torch.randn(2, 64, 4, 4, dtype=D64)}, {"ft": torch.randn(2, 64, 4, 4, dtype=D64)}, {}, 0.0)
    assert out["ft"].dtype == D64


# -- OFD ---------------------------------------------------------------------------------------------------------
def _phi(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def test_ofd_margin_by_hand():
    from featdistill.losses.feature_regression import ofd_margin

    g = torch.tensor([1.0, 2.0, -2.0, 0.5], dtype=D64)
    b = torch.tensor([0.0, 1.0, 1.0, 3.0], dtype=D64)
    want = [-_phi(0) / 0.5]  # E[x | x < 0] for N(0, 1) = −sqrt(2/π)
    want.append(1.0 - 2.0 * _phi(0.5) / _cdf(-0.5))  # N(1, 2²)
    want.append(want[-1])  # |γ|: the sign of the BN weight does not matter
    assert _cdf(-6.0) < 0.001
    want.append(-3 * 0.5)  # Φ(−β/|γ|) ≤ 0.001 → −3|γ|
    got = ofd_margin(g, b)
    assert got.dtype == D64 and got.tolist() == pytest.approx(want, rel=1e-12)
    assert want[0] == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-14)


def test_ofd_partial_l2_by_hand_and_zero_at_identity():
    from featdistill.losses.feature_regression import ofd_partial_l2

    m = -1.0
    # per element (s, t): teacher off below the margin (s above it / below it), teacher in (m, 0], teacher on
    pairs = [(0.5, -2.0), (-1.5, -2.0), (0.3, -0.5), (-0.8, -0.5), (2.0, 1.0), (0.0, 1.0)]
    want_el = [(0.5 - m) ** 2, 0.0, (0.3 + 0.5) ** 2, 0.0, 1.0, 1.0]
    s = torch.tensor([[p[0] for p in pairs]] * 2, dtype=D64).view(2, 6, 1, 1)
    t = torch.tensor([[p[1] for p in pairs]] * 2, dtype=D64).view(2, 6, 1, 1)
    s[1] *= 2  # a second sample: the batch is averaged
    want2 = [(1.0 - m) ** 2, 0.0, (0.6 + 0.5) ** 2, 0.0, 9.0, 1.0]
    got = ofd_partial_l2(s, t, torch.full((6,), m, dtype=D64))
    assert got.dtype == D64
    assert got.item() == pytest.approx(sum((a + b) / 2 for a, b in zip(want_el, want2)), rel=1e-13)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, 2, generator=g, dtype=D64)
    assert ofd_partial_l2(x, x, torch.full((4,), -0.5, dtype=D64)).item() == 0.0


def test_ofd_partial_l2_gradient_direction():
    from featdistill.losses.feature_regression import ofd_partial_l2

    s = torch.tensor([0.5, 2.0, 0.0], dtype=D64).view(1, 3, 1, 1).requires_grad_(True)
    t = torch.tensor([-3.0, 1.0, 1.0], dtype=D64).view(1, 3, 1, 1)
    ofd_partial_l2(s, t, torch.full((3,), -1.0, dtype=D64)).backward()
    g = s.grad.flatten().tolist()
    assert g[0] > 0 and g[1] > 0 and g[2] < 0  # down to the margin / down to t / up to t


@pytest.mark.parametrize(
    "teacher,student",
    [("resnet14", "resnet8"), ("resnet14", "shufflev2"), ("vgg13", "vgg8"), ("wrn_16_2", "wrn_16_1")],
)
def test_ofd_recipe_builds_and_trains(teacher, student):
    from featdistill.losses.feature_regression import ofd_margin
    from featdistill.methods.ofd import preact_points
    from featdistill.taps import resolve_module

    t, s = _pair(teacher, student)
    m = build_method("ofd")
    d = Distiller(s, m, t)
    losses = _train_step(d, _batch(size=32))
    assert set(losses) == {"ce", "ofd"} and _adapter_grads(m)
    pts = preact_points(t)[-m.n_stages :]
    bn = resolve_module(t, pts[0]["bn"])
    assert torch.equal(m.margin0, ofd_margin(bn.weight.detach(), bn.bias.detach()).float())
    assert (m.margin0 <= 0).all()
    assert all(isinstance(a[0], torch.nn.Conv2d) and a[0].kernel_size == (1, 1) for a in m.adapters.values())


def test_ofd_shufflev2_preact_is_cat_of_input_half_and_bn3():
    """ReLU of the composed pre-activation, shuffled, is exactly the stage output (mdistiller's ``preact``)."""
    from featdistill.taps import Taps, TapSpec

    t, s = _pair("resnet14", "shufflev2")
    m = build_method("ofd")
    Distiller(s, m, t)
    s.eval()
    with Taps(s, {**m.student_taps(), "out": TapSpec("layer3")}) as taps, torch.no_grad():
        _, f = taps(_batch(size=32)["input"])
    pre = m._student_preact(f, 2)
    blk = s.layer3[-1]
    assert torch.equal(blk.shuffle(torch.relu(pre)), f["out"])


# -- ReviewKD ----------------------------------------------------------------------------------------------------
def test_hcl_loss_by_hand():
    from featdistill.losses.feature_regression import hcl_loss

    s = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=D64).view(1, 1, 2, 2)
    t = torch.zeros(1, 1, 2, 2, dtype=D64)
    full = (1 + 4 + 9 + 36) / 4
    pooled = 3.0**2  # mean 3 vs 0 at 1×1; the 4×4 and 2×2 levels are skipped for a 2×2 map
    big_s = torch.arange(64, dtype=D64).view(1, 1, 8, 8) / 10
    big_t = torch.zeros(1, 1, 8, 8, dtype=D64)
    lv = [big_s.pow(2).mean().item()]
    for l in (4, 2, 1):
        lv.append(torch.nn.functional.adaptive_avg_pool2d(big_s, l).pow(2).mean().item())
    want_big = (lv[0] + lv[1] / 2 + lv[2] / 4 + lv[3] / 8) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    got = hcl_loss([s, big_s], [t, big_t])
    assert got.dtype == D64
    assert got.item() == pytest.approx((full + 0.5 * pooled) / 1.5 + want_big, rel=1e-13)


def test_hcl_loss_zero_at_identity_equals_mse_for_constant_maps_and_gradient():
    from featdistill.losses.feature_regression import hcl_loss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=D64)
    assert hcl_loss([x], [x]).item() == 0.0
    a, b = torch.full((2, 3, 8, 8), 1.5, dtype=D64), torch.full((2, 3, 8, 8), -0.5, dtype=D64)
    assert hcl_loss([a], [b]).item() == pytest.approx(4.0, rel=1e-14)  # every level sees the same error
    s = torch.randn(1, 2, 4, 4, generator=g, dtype=D64, requires_grad=True)
    t = torch.randn(1, 2, 4, 4, generator=g, dtype=D64)
    hcl_loss([s], [t]).backward()
    with torch.no_grad():
        step = hcl_loss([s - 1e-3 * s.grad], [t])
    assert step.item() < hcl_loss([s.detach()], [t]).item()


@pytest.mark.parametrize("teacher,student", [("resnet14", "resnet8"), ("resnet14", "shufflev2"), ("vgg13", "vgg8")])
def test_reviewkd_recipe_shapes_warmup_and_step(teacher, student):
    t, s = _pair(teacher, student)
    m = build_method("reviewkd")
    d = Distiller(s, m, t)
    batch = _batch(size=32)
    d.prepare(batch)
    n = len(m.student_paths)
    assert len(m.adapters) == n and m.adapters[f"abf{n - 1}"].att_conv is None
    assert all(m.adapters[f"abf{i}"].att_conv is not None for i in range(n - 1))
    with torch.no_grad():
        t_feats = d.teacher(batch)
    c_t = [t_feats[f"rv{i}"].shape[1] for i in range(n)]
    assert [m.adapters[f"abf{i}"].conv2[0].out_channels for i in range(n)] == c_t
    assert m.out_shapes[-1] == 1 and m.shapes[-1] == 1
    _, l0 = d(batch, epoch=0.0)
    _, l10 = d(batch, epoch=10.0)
    assert l0["reviewkd"].item() == 0.0 and l10["reviewkd"].item() > 0  # 5·min(1, epoch/20)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.01)
    _, losses = d(batch, epoch=25.0)
    opt.zero_grad()
    sum(losses.values()).backward()
    assert _adapter_grads(m)
    m.double()
    feats_s = {k: v.double() for k, v in d._student_taps(batch["input"])[1].items()}
    feats_t = {k: v.double() for k, v in t_feats.items()}
    assert m(feats_s, feats_t, batch, 1.0)["reviewkd"].dtype == D64


# -- SRD ---------------------------------------------------------------------------------------------------------
def test_srd_feature_loss_by_hand_identity_and_gradient():
    from featdistill.losses.feature_regression import srd_feature_loss

    s = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=D64)
    t = torch.zeros(2, 2, dtype=D64)
    got = srd_feature_loss(s, t)
    assert got.dtype == D64 and got.item() == pytest.approx(math.log(1 + 16 + 0.0625), rel=1e-14)
    assert srd_feature_loss(s, t, exponent=1.0).item() == pytest.approx(math.log(3.5), rel=1e-14)
    assert srd_feature_loss(t, t).item() == -math.inf  # its infimum, at identity
    x = s.clone().requires_grad_(True)
    srd_feature_loss(x, t).backward()
    assert torch.equal(torch.sign(x.grad), torch.sign(s - t))  # towards the teacher (0 where already equal)


def test_srd_kl_by_hand_no_t_squared():
    from featdistill.losses.feature_regression import srd_kl

    zs = torch.tensor([[0.0, 1.0]], dtype=D64)
    zt = torch.tensor([[1.0, 0.0]], dtype=D64)
    for temp in (1.0, 2.0):
        ps = [math.exp(v / temp) for v in (0.0, 1.0)]
        pt = [math.exp(v / temp) for v in (1.0, 0.0)]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        want = sum(b * math.log(b / a) for a, b in zip(ps, pt))
        assert srd_kl(zs, zt, temp).item() == pytest.approx(want, rel=1e-13)
    assert srd_kl(zs, zs).item() == pytest.approx(0.0, abs=1e-15)


def test_srd_recipe_teacher_norm_and_step():
    t, s = _pair()
    m = build_method("srd")
    d = Distiller(s, m, t)
    losses = _train_step(d, _batch(8))
    assert set(losses) == {"ce", "feat", "kl"} and _adapter_grads(m)
    lin, bn = m.adapters["proj"]
    assert (lin.in_features, lin.out_features) == (64, 64) and not bn.affine and bn.eps == 1e-4
    g = torch.Generator().manual_seed(0)
    f = torch.randn(16, 5, generator=g, dtype=D64) * 3 + 2
    z = m.teacher_norm(f)
    assert z.dtype == D64 and z.mean(0).abs().max() < 1e-12
    want = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + 1e-4)
    assert torch.allclose(z, want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the logged term is 2·log Σ|p(f_s) − bn(f_t)|⁴
        feats = d._student_taps(_batch(8)["input"])[1]
        z_s = m.adapters["proj"](feats["emb"])
        z_t = m.teacher_norm(d.teacher(_batch(8))["emb"])
        _, now = d(_batch(8))
    assert now["feat"].item() == pytest.approx(2 * torch.log((z_s - z_t).abs().pow(4).sum()).item(), rel=1e-5)
