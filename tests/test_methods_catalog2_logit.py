"""Method catalog II, logit side: logit standardisation (a switch on every logit recipe), NKD, Tf-KD / LSR, DIST+.

Hand values are written out independently of the library (plain ``math`` on tiny rows); every loss is also
checked in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from featdistill.distiller import Distiller
from featdistill.losses.logit_variants import standardize_logits
from featdistill.losses.logits import kd_loss
from featdistill.methods import build_method
from featdistill.tasks import build_task

EPS = 1e-7  # the reference normalize()'s epsilon


def _rows(
    b: int = 6, c: int = 5, seed: int = 0, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_s = 2 * torch.randn(b, c, generator=g, dtype=dtype)
    z_t = 3 * torch.randn(b, c, generator=g, dtype=dtype)
    return z_s, z_t, torch.arange(b) % c


def _affine(z: torch.Tensor, seed: int) -> torch.Tensor:
    """A per-row shift and positive scale of ``z`` (what a z-score removes)."""
    g = torch.Generator().manual_seed(seed)
    a = 10 * torch.randn(z.shape[0], 1, generator=g, dtype=z.dtype)
    b = 0.5 + 3 * torch.rand(z.shape[0], 1, generator=g, dtype=z.dtype)
    return a + b * z


# ----------------------------------------------------------------------------------------------------------
# logit standardisation
# ----------------------------------------------------------------------------------------------------------


def test_standardize_matches_hand_values_unbiased_std_plus_eps():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    out = standardize_logits(z)
    # row 0: mean 2, unbiased std sqrt((1+0+1)/2) = 1; row 1: mean 4/3, deviations (-4/3,-4/3,8/3),
    # unbiased var = (16/9+16/9+64/9)/2 = 16/3
    s1 = math.sqrt(16 / 3)
    want = [
        [-1 / (1 + EPS), 0.0, 1 / (1 + EPS)],
        [(-4 / 3) / (s1 + EPS), (-4 / 3) / (s1 + EPS), (8 / 3) / (s1 + EPS)],
    ]
    assert out.dtype == torch.float64
    assert torch.allclose(out, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-15)


def test_standardize_is_shift_and_scale_invariant_and_rejects_bad_shapes():
    z, _, _ = _rows()
    assert torch.allclose(standardize_logits(_affine(z, 1)), standardize_logits(z), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 classes"):
        standardize_logits(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        standardize_logits(torch.zeros(2, 3, 4))


def test_standardized_kd_is_invariant_to_logit_shift_and_scale_plain_kd_is_not():
    z_s, z_t, y = _rows()
    on = build_method("kd", temperature=2.0, logit_standardization=True)
    off = build_method("kd", temperature=2.0)
    batch = {"target": y}
    base = on({"logits": z_s}, {"logits": z_t}, batch, 0.0)["kd"]
    moved = on({"logits": _affine(z_s, 1)}, {"logits": _affine(z_t, 2)}, batch, 0.0)["kd"]
    assert base.dtype == torch.float64
    assert moved.item() == pytest.approx(base.item(), rel=1e-6)
    plain = off({"logits": z_s}, {"logits": z_t}, batch, 0.0)["kd"]
    plain_moved = off({"logits": _affine(z_s, 1)}, {"logits": _affine(z_t, 2)}, batch, 0.0)["kd"]
    assert abs(plain_moved.item() - plain.item()) > 1e-2


def test_standardized_kd_equals_the_reference_formula_on_a_hand_example():
    # one row, C = 3, base temperature 2: student (1, 2, 3) → z-score (-1, 0, 1)/(1 + ε);
    # teacher (15, 10, 5): mean 10, unbiased std 5 → (1, 0, -1)·5/(5 + ε)
    T = 2.0
    zs = [-1 / (1 + EPS), 0.0, 1 / (1 + EPS)]
    zt = [5 / (5 + EPS), 0.0, -5 / (5 + EPS)]

    def softmax(v):
        e = [math.exp(x / T) for x in v]
        return [x / sum(e) for x in e]

    p_s, p_t = softmax(zs), softmax(zt)
    want = T * T * sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    kd = build_method("kd", temperature=T, logit_standardization=True)
    s = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    t = torch.tensor([[15.0, 10.0, 5.0]], dtype=torch.float64)
    got = kd({"logits": s}, {"logits": t}, {"target": torch.tensor([0])}, 0.0)["kd"]
    assert got.item() == pytest.approx(want, rel=1e-12)


class _Linear(nn.Module):
    """Maps a ``(B, C)`` 'stage feature' to logits unchanged (a stand-in OFA branch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _switch_cases(z_s, z_t, y):
    """(method name, kwargs, student feats, teacher feats, invariant term, a term that must see raw logits)."""
    b, c = z_s.shape
    g = torch.Generator().manual_seed(5)
    emb_s = torch.randn(b, 4, generator=g, dtype=z_s.dtype)
    emb_t = torch.randn(b, 4, generator=g, dtype=z_s.dtype)
    means = torch.randn(c, 4, generator=g, dtype=z_s.dtype)
    return [
        ("kd", {}, {}, {}, "kd", None),
        ("dkd", {}, {}, {}, "dkd", None),
        ("dist", {}, {}, {}, "dist", None),
        ("nkd", {}, {}, {}, "nkd", None),
        ("nd", {"class_means": means}, {"emb": emb_s}, {"emb": emb_t}, "kd", None),
        ("dkd++", {"class_means": means}, {"emb": emb_s}, {"emb": emb_t}, "dkd", None),
        ("kdoct", {}, {}, {}, "soft", "hard"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_the_switch_on_each_logit_recipe(case):
    z_s, z_t, y = _rows()
    name, kw, s_extra, t_extra, term, raw = _switch_cases(z_s, z_t, y)[case]
    on = build_method(name, logit_standardization=True, **kw)
    off = build_method(name, **kw)
    batch = {"target": y}

    def run(m, s, t):
        return m({"logits": s, **s_extra}, {"logits": t, **t_extra}, batch, 0.0)

    a, b = run(on, z_s, z_t), run(on, _affine(z_s, 1), _affine(z_t, 2))
    assert b[term].item() == pytest.approx(a[term].item(), rel=1e-6, abs=1e-9)
    # on == off fed the z-scored logits (the switch is exactly the reference's pre-process)
    ref = run(off, standardize_logits(z_s), standardize_logits(z_t))
    assert a[term].item() == pytest.approx(ref[term].item(), rel=1e-12, abs=1e-15)
    if raw is not None:  # a hard-label term keeps the raw logits
        assert a[raw].item() == pytest.approx(run(off, z_s, z_t)[raw].item(), rel=1e-12)
    assert not off.logit_standardization and on.logit_standardization


def test_the_switch_on_ofa_collaborative_and_lelp():
    z_s, z_t, y = _rows()
    batch = {"target": y}
    # OFA: the final logits and every branch's logits are z-scored, the teacher's too
    ofa = {k: build_method("ofa", student_paths=["x"], logit_standardization=k) for k in (True, False)}
    for m in ofa.values():
        m.adapters["stage0"] = _Linear()
    feats = {"logits": z_s, "stage0": 0.5 * z_s + 1}
    on = ofa[True](feats, {"logits": z_t}, batch, 0.0)
    off = ofa[False](
        {"logits": standardize_logits(z_s), "stage0": standardize_logits(feats["stage0"])},
        {"logits": standardize_logits(z_t)},
        batch,
        0.0,
    )
    for k in ("kd", "ofa"):
        assert on[k].item() == pytest.approx(off[k].item(), rel=1e-12)
    assert on["kd"].item() == pytest.approx(on["ofa"].item(), rel=1e-6)  # z-scores of affine maps agree
    # collaborative (DML): the mutual KL terms, not the peer's CE
    peer = nn.Linear(3, z_s.shape[1]).double()
    x = torch.randn(z_s.shape[0], 3, dtype=torch.float64)
    dml = {k: build_method("collaborative", peer=peer, logit_standardization=k) for k in (True, False)}
    cb = {"target": y, "input": x}
    on = dml[True]({"logits": z_s}, {}, cb, 0.0)
    moved = dml[True]({"logits": _affine(z_s, 3)}, {}, cb, 0.0)
    assert moved["kl"].item() == pytest.approx(on["kl"].item(), rel=1e-6)
    assert on["peer_ce"].item() == pytest.approx(dml[False]({"logits": z_s}, {}, cb, 0.0)["peer_ce"].item())
    # LELP: the S·C subclass logits and the teacher's class logits
    c, s, d = z_s.shape[1], 2, 4
    g = torch.Generator().manual_seed(1)
    lelp = {k: build_method("lelp", num_subclasses=s, logit_standardization=k) for k in (True, False)}
    dirs, means = torch.randn(c, s, d, generator=g), torch.randn(c, d, generator=g)
    for m in lelp.values():
        m.dirs, m.means = dirs, means
    sub = torch.randn(z_s.shape[0], s * c, generator=g, dtype=torch.float64)
    emb = torch.randn(z_s.shape[0], d, generator=g, dtype=torch.float64)
    a = lelp[True]({"sub": sub}, {"logits": z_t, "emb": emb}, batch, 0.0)["lelp"]
    b = lelp[True]({"sub": _affine(sub, 4)}, {"logits": _affine(z_t, 5), "emb": emb}, batch, 0.0)["lelp"]
    assert b.item() == pytest.approx(a.item(), rel=1e-5)


def test_the_switch_is_refused_where_no_logit_term_exists_and_turns_off_sparse_kd():
    with pytest.raises(ValueError, match="no logit distillation term"):
        build_method("none", logit_standardization=True)
    assert build_method("kd").sparse_logits and not build_method("kd", logit_standardization=True).sparse_logits


def test_standardized_kd_acts_per_pixel_on_segmentation():
    torch.manual_seed(0)
    student, teacher = nn.Conv2d(3, 5, 1).double(), nn.Conv2d(3, 5, 1).double()
    batch = {"input": torch.randn(2, 3, 4, 4, dtype=torch.float64), "target": torch.randint(0, 5, (2, 4, 4))}
    batch["target"][0, 0, 0] = 255  # an ignored pixel: not distilled
    kd = build_method("kd", temperature=2.0, logit_standardization=True, weights={"kd": 1.0})
    d = Distiller(student, kd, teacher, task=build_task("segmentation"))
    _, losses = d(batch)
    flat = lambda z: z.permute(0, 2, 3, 1).reshape(-1, 5)  # noqa: E731
    valid = (batch["target"] != 255).reshape(-1)
    with torch.no_grad():
        s, t = flat(student(batch["input"]))[valid], flat(teacher(batch["input"]))[valid]
    want = kd_loss(standardize_logits(s), standardize_logits(t), 2.0)
    assert losses["kd"].item() == pytest.approx(want.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------------------
# NKD
# ----------------------------------------------------------------------------------------------------------


def _softmax(v, T=1.0):
    e = [math.exp(x / T) for x in v]
    return [x / sum(e) for x in e]


def test_nkd_matches_hand_computation():
    from featdistill.losses.logit_variants import nkd_loss

    T, gamma = 3.0, 3.5
    s_rows = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]]
    t_rows = [[3.0, 1.0, 0.0, -2.0], [-1.0, 2.0, 0.0, 1.0]]
    labels = [0, 3]
    want = 0.0
    for zs, zt, y in zip(s_rows, t_rows, labels):
        target = -_softmax(zt)[y] * math.log(_softmax(zs)[y])
        ns = [v for j, v in enumerate(zs) if j != y]
        nt = [v for j, v in enumerate(zt) if j != y]
        ps, pt = _softmax(ns, T), _softmax(nt, T)
        want += target - gamma * T * T * sum(a * math.log(b) for a, b in zip(pt, ps))
    want /= 2
    s = torch.tensor(s_rows, dtype=torch.float64)
    t = torch.tensor(t_rows, dtype=torch.float64)
    got = nkd_loss(s, t, torch.tensor(labels), temperature=T, gamma=gamma)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want, rel=1e-12)
    # a soft (one-hot-like) label reads as its argmax, as the reference does
    soft = torch.nn.functional.one_hot(torch.tensor(labels), 4).double() * 0.9 + 0.025
    assert nkd_loss(s, t, soft, temperature=T, gamma=gamma).item() == pytest.approx(want, rel=1e-12)


def test_nkd_non_target_term_ignores_the_target_logit_and_is_stationary_at_the_teacher():
    from featdistill.losses.logit_variants import nkd_loss

    z_s, z_t, y = _rows()
    # γ-part depends on non-target logits only: moving the target logit changes only −t_y·log s_y
    moved = z_s.clone()
    moved[torch.arange(len(y)), y] += 1.7
    diff = nkd_loss(moved, z_t, y, 2.0, 3.0) - nkd_loss(z_s, z_t, y, 2.0, 3.0)
    t_y = torch.softmax(z_t, 1)[torch.arange(len(y)), y]
    ls = lambda z: torch.log_softmax(z, 1)[torch.arange(len(y)), y]  # noqa: E731
    assert diff.item() == pytest.approx((-(t_y * (ls(moved) - ls(z_s)))).mean().item(), rel=1e-10)
    # with the student's non-target logits equal to the teacher's (+ a constant), their gradient is zero;
    # the target logit is pushed up (negative gradient)
    s = z_t.clone() + 0.3
    s[torch.arange(len(y)), y] = -1.0
    s.requires_grad_(True)
    nkd_loss(s, z_t, y, 2.0, 3.0).backward()
    g = s.grad.clone()
    target_grad = g[torch.arange(len(y)), y]
    g[torch.arange(len(y)), y] = 0
    assert (target_grad < 0).all()
    # the target term still pulls the other logits down a little (softmax coupling), the NKD term adds nothing
    want = torch.softmax(s.detach(), 1) * t_y[:, None] / len(y)
    want[torch.arange(len(y)), y] = 0
    assert torch.allclose(g, want, atol=1e-12)


def test_nkd_recipe_trains_a_step_with_the_distiller():
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 5), nn.Linear(6, 5)
    batch = {"input": torch.randn(8, 6), "target": torch.arange(8) % 5}
    d = Distiller(student, build_method("nkd"), teacher)
    _, losses = d(batch)
    assert set(losses) == {"ce", "nkd"} and d.ce_weight == 1.0
    sum(losses.values()).backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


# ----------------------------------------------------------------------------------------------------------
# Tf-KD_reg and LSR
# ----------------------------------------------------------------------------------------------------------


def test_tfkd_teacher_and_loss_match_hand_computation():
    from featdistill.losses.logit_variants import tfkd_loss, tfkd_teacher

    a, T, K = 0.99, 2.0, 3
    u = [a, (1 - a) / (K - 1), (1 - a) / (K - 1)]
    p_d = _softmax(u, T)
    got = tfkd_teacher(torch.tensor([0]), K, a, T, dtype=torch.float64)
    assert torch.allclose(got, torch.tensor([p_d], dtype=torch.float64), rtol=0, atol=1e-15)
    zs = [[1.0, -1.0, 0.5], [0.0, 0.0, 2.0]]
    labels = [0, 2]
    total = 0.0
    for z, y in zip(zs, labels):
        pd = _softmax([u[0] if j == y else u[1] for j in range(K)], T)
        ps = _softmax(z)
        total += sum(q * (math.log(q) - math.log(p)) for q, p in zip(pd, ps))
    want = 7.0 * total / (len(zs) * K)  # nn.KLDivLoss() 'mean': over all N·K entries, times the multiplier
    loss = tfkd_loss(torch.tensor(zs, dtype=torch.float64), torch.tensor(labels), a, T, multiplier=7.0)
    assert loss.dtype == torch.float64 and loss.item() == pytest.approx(want, rel=1e-12)


def test_tfkd_is_zero_exactly_at_its_designed_teacher_and_lsr_matches_hand_values():
    from featdistill.losses.logit_variants import lsr_loss, tfkd_loss, tfkd_teacher

    y = torch.tensor([1, 0, 3])
    p_d = tfkd_teacher(y, 4, 0.9, 5.0, dtype=torch.float64)
    assert tfkd_loss(p_d.log(), y, 0.9, 5.0).abs().item() < 1e-15
    assert tfkd_loss(torch.zeros(3, 4, dtype=torch.float64), y, 0.9, 5.0).item() > 0
    z = [[1.0, 2.0, 0.0], [0.5, -0.5, 0.0]]
    labels, eps = [1, 0], 0.1
    want = 0.0
    for row, lab in zip(z, labels):
        p = _softmax(row)
        want -= sum((1 - eps if j == lab else eps / 2) * math.log(p[j]) for j in range(3))
    got = lsr_loss(torch.tensor(z, dtype=torch.float64), torch.tensor(labels), eps)
    assert got.item() == pytest.approx(want / 2, rel=1e-12)
    ce = torch.nn.functional.cross_entropy(torch.tensor(z, dtype=torch.float64), torch.tensor(labels))
    assert lsr_loss(torch.tensor(z, dtype=torch.float64), torch.tensor(labels), 0.0).item() == pytest.approx(ce.item())


def test_tfkd_and_lsr_recipes_train_without_a_teacher():
    for name, term, ce in (("tfkd", "reg", 0.9), ("lsr", "lsr", 0.0)):
        torch.manual_seed(0)
        student = nn.Linear(6, 5)
        m = build_method(name)
        assert not m.needs_teacher
        d = Distiller(student, m)
        _, losses = d({"input": torch.randn(8, 6), "target": torch.arange(8) % 5})
        assert term in losses and d.ce_weight == ce and ("ce" in losses) == (ce > 0)
        sum(losses.values()).backward()
        assert student.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------
# DIST+
# ----------------------------------------------------------------------------------------------------------


def _pearson(a, b, eps=0.0):
    """Pearson correlation written out; ``eps`` added to the norm product as the DIST / DIST+ codes do."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / (math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) + eps)


def test_dist_plus_relations_match_hand_computation():
    from featdistill.losses.logit_variants import channel_relation_loss, spatial_relation_loss

    # (B=2, C=3, H=1, W=2): channel relation per (b, w) across channels
    s = torch.tensor([[[[1.0, 0.0]], [[2.0, 1.0]], [[3.0, 5.0]]], [[[0.5, 2.0]], [[0.0, 1.0]], [[-1.0, 0.0]]]])
    t = torch.tensor([[[[2.0, 1.0]], [[4.0, 0.0]], [[7.0, 3.0]]], [[[1.0, 0.0]], [[1.5, 2.0]], [[-2.0, 1.0]]]])
    s, t = s.double(), t.double()
    rhos = [_pearson(s[b, :, 0, w].tolist(), t[b, :, 0, w].tolist(), 1e-8) for b in range(2) for w in range(2)]
    got = channel_relation_loss(s, t)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(1 - sum(rhos) / 4, rel=1e-12)
    # spatial: channel sums (B, H·W), then per position the correlation across the batch (needs B >= 2)
    s3 = torch.cat([s, 2 * s[:1] - 1], 0)
    t3 = torch.cat([t, t[1:] + 0.5], 0)
    a_s, a_t = s3.sum(1).flatten(1), t3.sum(1).flatten(1)
    want = 1 - sum(_pearson(a_s[:, j].tolist(), a_t[:, j].tolist(), 1e-8) for j in range(2)) / 2
    assert spatial_relation_loss(s3, t3).item() == pytest.approx(want, rel=1e-12)


def test_dist_plus_relations_zero_at_identity_and_invariant_to_positive_affine_maps():
    from featdistill.losses.logit_variants import channel_relation_loss, spatial_relation_loss

    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    assert channel_relation_loss(f, f).abs().item() < 1e-7  # 0 up to the eps in the denominator
    assert spatial_relation_loss(f, f).abs().item() < 1e-7
    t = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    assert channel_relation_loss(3 * f + 2, t).item() == pytest.approx(channel_relation_loss(f, t).item(), rel=1e-7)
    assert spatial_relation_loss(3 * f + 2, t).item() == pytest.approx(spatial_relation_loss(f, t).item(), rel=1e-7)
    # anti-correlated maps give the maximum 2 (torchdistill's channel term would reward them: it adds ρ)
    assert channel_relation_loss(-f, f).item() == pytest.approx(2.0, rel=1e-7)
    with pytest.raises(ValueError, match="adapter"):
        channel_relation_loss(f, t[:, :3])


def test_dist_plus_recipe_terms_adapter_and_a_step():
    class Net(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.stage = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))
            self.stage_paths = ["stage"]

        def forward(self, x):
            return self.head(self.stage(x))

    torch.manual_seed(0)
    student, teacher = Net(4), Net(6)
    m = build_method("dist+")
    d = Distiller(student, m, teacher)
    batch = {"input": torch.randn(6, 3, 5, 5), "target": torch.arange(6) % 5}
    _, losses = d(batch)
    assert set(losses) == {"ce", "dist", "channel", "spatial"} and "feat" in m.adapters
    assert {k: m.weight(k, 0) for k in ("dist", "channel", "spatial")} == {"dist": 2.0, "channel": 2.0, "spatial": 2.0}
    with torch.no_grad():
        z_s, z_t = student(batch["input"]), teacher(batch["input"])
    p_s, p_t = torch.softmax(z_s.double(), 1), torch.softmax(z_t.double(), 1)  # τ = 1
    want = 2.0 * (2.0 * (1 - _mean_pearson(p_s, p_t)) + 2.0 * (1 - _mean_pearson(p_s.T, p_t.T)))
    assert losses["dist"].item() == pytest.approx(want, rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in m.adapters["feat"].parameters())


def _mean_pearson(a, b):
    """Mean row-wise Pearson correlation (DIST's inter relation of rows; of columns when transposed)."""
    return sum(_pearson(x.tolist(), y.tolist(), 1e-8) for x, y in zip(a, b)) / a.shape[0]


# ----------------------------------------------------------------------------------------------------------
# PAD-L2
# ----------------------------------------------------------------------------------------------------------


def test_pad_l2_matches_hand_computation_and_reduces_to_mse():
    from featdistill.losses.logit_variants import pad_l2_loss

    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64)
    t = torch.tensor([[1.5, 0.0], [1.0, -1.0]], dtype=torch.float64)
    v = torch.tensor([[0.0, math.log(4.0)], [-1.0, 0.5]], dtype=torch.float64)
    rows = [
        [(0.25 / (1e-6 + 1.0) + 0.0), (4.0 / (1e-6 + 4.0) + math.log(4.0))],
        [(1.0 / (1e-6 + math.exp(-1.0)) - 1.0), (0.0 + 0.5)],
    ]
    want = sum(sum(r) / 2 for r in rows) / 2
    got = pad_l2_loss(s, t, v)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want, rel=1e-12)
    # log σ² = 0, eps = 0: plain mean squared error
    assert pad_l2_loss(s, t, torch.zeros_like(v), eps=0.0).item() == pytest.approx(((s - t) ** 2).mean().item())


def test_pad_l2_variance_optimum_is_the_squared_residual_and_large_variance_downweights():
    from featdistill.losses.logit_variants import pad_l2_loss

    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = torch.randn(5, 3, generator=g, dtype=torch.float64)
    v = torch.log((t - s) ** 2).requires_grad_(True)
    pad_l2_loss(s, t, v, eps=0.0).backward()
    assert v.grad.abs().max().item() < 1e-12  # ∂/∂v [r² e^{-v} + v] = 0 at v = log r²
    # the student's gradient is the MSE gradient scaled by 1/σ²: a sample with large σ² barely moves
    s = s.clone().requires_grad_(True)
    w = torch.zeros(5, 3, dtype=torch.float64)
    w[0] = 5.0
    pad_l2_loss(s, t, w, eps=0.0).backward()
    mse_grad = 2 * (s - t).detach() / s.numel()
    assert torch.allclose(s.grad, mse_grad * torch.exp(-w), atol=1e-14)


def test_pad_recipe_variance_branch_adapter_and_a_step():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, width), nn.ReLU())
            self.fc = nn.Linear(width, 5)
            self.embedding_path = "body"

        def forward(self, x):
            return self.fc(self.body(x))

    student, teacher = Net(4), Net(7)
    m = build_method("pad")
    d = Distiller(student, m, teacher)
    batch = {"input": torch.randn(8, 6), "target": torch.arange(8) % 5}
    _, losses = d(batch)
    assert set(losses) == {"ce", "pad"} and set(m.adapters) == {"emb", "var"}
    assert isinstance(m.adapters["var"][1], nn.BatchNorm1d) and m.adapters["var"][0].in_features == 7
    sum(losses.values()).backward()
    assert m.adapters["var"][0].weight.grad is not None and student.body[0].weight.grad is not None
    assert d.export_student() is student


# ----------------------------------------------------------------------------------------------------------
# SSKD
# ----------------------------------------------------------------------------------------------------------


def test_sskd_similarity_matrix_matches_the_codes_expanded_cosine():
    from featdistill.losses.logit_variants import cosine_similarity_matrix

    g = torch.Generator().manual_seed(0)
    aug = torch.randn(6, 4, generator=g, dtype=torch.float64)
    nor = torch.randn(2, 4, generator=g, dtype=torch.float64)
    # student.py: nor.unsqueeze(2).expand(-1,-1,3B).transpose(0,2); aug.unsqueeze(2).expand(-1,-1,B); dim=1
    ref = torch.nn.functional.cosine_similarity(
        aug.unsqueeze(2).expand(-1, -1, 2), nor.unsqueeze(2).expand(-1, -1, 6).transpose(0, 2), dim=1
    )
    assert torch.allclose(cosine_similarity_matrix(aug, nor), ref, rtol=0, atol=1e-14)


def test_sskd_error_rejection_keeps_correct_rows_and_the_best_ranked_wrong_ones():
    from featdistill.losses.logit_variants import error_rejection_rows

    # target ranks per row: 0, 2, 0, 1, 3  (2 correct, 3 wrong)
    scores = torch.tensor(
        [[5.0, 1, 0, -1], [0, 3, 2, 1], [0, 9, 1, 2], [2, 1, 3, 0], [3, 2, 1, 0]], dtype=torch.float64
    )
    target = torch.tensor([0, 3, 1, 0, 3])
    assert error_rejection_rows(scores, target, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert error_rejection_rows(scores, target, 0.75).tolist() == [0, 1, 2, 3]  # int(3·0.75) = 2 wrong: ranks 1, 2
    assert error_rejection_rows(scores, target, 0.0).tolist() == [0, 2]


def test_sskd_similarity_loss_matches_hand_computation():
    from featdistill.losses.logit_variants import sskd_similarity_loss

    s = torch.tensor([[0.5, -0.2], [0.1, 0.9], [0.3, 0.3]], dtype=torch.float64)
    t = torch.tensor([[0.9, 0.0], [-0.5, 0.5], [0.2, 0.1]], dtype=torch.float64)
    T = 0.5
    want = 0.0
    for r in (0, 2):
        ps, pt = _softmax(s[r].tolist(), T), _softmax(t[r].tolist(), T)
        want += sum(q * (math.log(q) - math.log(p)) for q, p in zip(pt, ps))
    want = want / 2 * T * T
    got = sskd_similarity_loss(s, t, torch.tensor([0, 2]), T)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want, rel=1e-12)


class _SSNet(nn.Module):
    def __init__(self, width: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.pool = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, 5)
        self.embedding_path = "pool"
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)))


def test_sskd_fit_trains_only_the_teacher_head_and_the_step_matches_the_pieces():
    from featdistill.losses.logit_variants import cosine_similarity_matrix
    from featdistill.methods.sskd import rotated_copies

    student, teacher = _SSNet(4, 0), _SSNet(6, 1)
    g = torch.Generator().manual_seed(2)
    batch = {"input": torch.randn(6, 3, 6, 6, generator=g), "target": torch.arange(6) % 5}
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = build_method("sskd", t_epochs=3, ratio_ss=1.0)
    d = Distiller(student, m, teacher)
    d.fit_data([batch], 5)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # backbone frozen
    head = m.teacher_head
    assert head is not None and not any(p.requires_grad or p.grad is not None for p in head.parameters())
    _, losses = d(batch)
    assert set(losses) == {"ce", "kd", "tf", "ss"} and "proj" in m.adapters
    # the pieces, recomputed independently (ratio_tf 1 and ratio_ss 1 keep every row)
    x = batch["input"]
    rot = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in (1, 2, 3)])
    assert torch.equal(rotated_copies(x), rot)
    from featdistill.methods.sskd import contrastive_targets

    b = x.shape[0]  # row j of the rotated copies is its own image contrastive_targets[j], rotated by (j // B + 1)·90°
    assert all(
        torch.equal(rot[j], torch.rot90(x[i], j // b + 1, dims=(1, 2))) for j, i in enumerate(contrastive_targets(b))
    )
    with torch.no_grad():
        zs, zt, zrs, zrt = student(x), teacher(x), student(rot), teacher(rot)
        assert losses["kd"].item() == pytest.approx(0.9 * kd_loss(zs, zt, 4.0).item(), rel=1e-5)
        assert losses["tf"].item() == pytest.approx(2.7 * kd_loss(zrs, zrt, 4.0).item(), rel=1e-5)
        es, ers, et, ert = (
            student.pool(student.conv(x)),
            student.pool(student.conv(rot)),
            teacher.pool(teacher.conv(x)),
            teacher.pool(teacher.conv(rot)),
        )
        s_sim = cosine_similarity_matrix(m.adapters["proj"](ers), m.adapters["proj"](es))
        t_sim = cosine_similarity_matrix(head(ert), head(et))
        want = torch.nn.functional.kl_div(
            torch.log_softmax(s_sim / 0.5, 1), torch.softmax(t_sim / 0.5, 1), reduction="batchmean"
        )
        assert losses["ss"].item() == pytest.approx(10.0 * 0.25 * want.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in m.adapters["proj"].parameters())
    assert all(p.grad is None for p in teacher.parameters()) and d.export_student() is student
    with pytest.raises(ValueError, match="live teacher"):
        m.fit(lambda b: {}, [batch])


def test_sskd_teacher_head_learns_the_rotation_contrast():
    import torch.nn.functional as F

    from featdistill.losses.logit_variants import cosine_similarity_matrix
    from featdistill.methods.sskd import rotated_copies

    teacher = _SSNet(8, 3)
    g = torch.Generator().manual_seed(4)
    batches = [{"input": torch.randn(8, 3, 6, 6, generator=g), "target": torch.zeros(8, dtype=torch.long)}]

    def ss_loss(head):
        x = batches[0]["input"]
        with torch.no_grad():
            e, er = teacher.pool(teacher.conv(x)), teacher.pool(teacher.conv(rotated_copies(x)))
            own = torch.arange(8).repeat(3)  # rotated row (r − 1)·8 + i belongs to image i
            return F.cross_entropy(cosine_similarity_matrix(head(er), head(e)), own).item()

    short, long = build_method("sskd", t_epochs=1), build_method("sskd", t_epochs=40, t_milestones=(30,))
    for m in (short, long):
        m.bind(_SSNet(4, 0), teacher)
        m.fit(teacher, batches)
    assert ss_loss(long.teacher_head) < ss_loss(short.teacher_head)
