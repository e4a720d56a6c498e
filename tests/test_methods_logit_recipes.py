"""Defining properties of the logit-side recipes: OFA, ND / KD++ / DKD++, MEAL V2, KD-OCT, collaborative."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featdistill.distiller import Distiller
from featdistill.losses.features import nd_loss
from featdistill.losses.logits import kd_loss
from featdistill.methods import build_method
from featdistill.methods.mealv2 import LogitDiscriminator, TeacherEnsemble
from featdistill.methods.nd import fit_class_means
from featdistill.methods.ofa import OFA, build_ofa_branch, ofa_loss, ofa_target


class TinyNet(nn.Module):
    """A zoo-like CNN: stage_paths / embedding_path / classifier_path."""

    def __init__(self, width: int = 8, num_classes: int = 5, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(2 * width, num_classes)
        self.stage_paths = ["layer1", "layer2"]
        self.embedding_path = "flatten"
        self.classifier_path = "fc"

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.layer2(self.layer1(self.stem(x))))))


def make_batch(b: int = 8, c: int = 5, seed: int = 0, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return {
        "input": torch.randn(b, 1, size, size, generator=g),
        "target": torch.arange(b) % c,
        "sample_id": torch.arange(b),
        "view_id": torch.zeros(b, dtype=torch.long),
    }


# ----------------------------------------------------------------------------------------------- OFA
def test_ofa_eps1_equals_kd_at_t1_up_to_teacher_entropy():
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(6, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (6,), generator=g)
    p_t = F.softmax(zt, 1)
    entropy = -(p_t * p_t.log()).sum(1).mean()
    lo = ofa_loss(zs, zt, y, eps=1.0, temperature=1.0)
    kd = kd_loss(zs, zt, temperature=1.0)
    torch.testing.assert_close(lo, kd + entropy)
    (g1,) = torch.autograd.grad(lo, zs)
    (g2,) = torch.autograd.grad(kd_loss(zs, zt, temperature=1.0), zs)
    torch.testing.assert_close(g1, g2)


def test_ofa_eps_above_one_enhances_target_class():
    zt = torch.randn(10, 6)
    y = torch.randint(0, 6, (10,))
    p = F.softmax(zt, 1)
    t = ofa_target(zt, y, eps=1.5)
    onehot = F.one_hot(y, 6).bool()
    assert (t[onehot] >= p[onehot] - 1e-7).all()
    assert (t[~onehot] <= p[~onehot] + 1e-7).all()
    torch.testing.assert_close(ofa_target(zt, y, eps=1.0), p)


def test_ofa_branches_output_logits_and_distiller_runs():
    s, t = TinyNet(4), TinyNet(8)
    batch = make_batch()
    d = Distiller(s, OFA(eps=1.2), t)
    logits, losses = d(batch)
    assert set(losses) == {"ce", "kd", "ofa"}
    sum(losses.values()).backward()
    assert all(m[-1].out_features == 5 for m in d.method.adapters.values())
    # CNN branch for the first of 4 stages has 3 SepConvs, the last stage a 1x1 conv
    f = torch.randn(2, 16, 16, 16)
    br = build_ofa_branch(f, 1, 4, 64, 10)
    assert sum(type(m).__name__ == "SepConv" for m in br) == 3
    assert br(f).shape == (2, 10)
    tokens = torch.randn(2, 1 + 64, 32)  # CLS + 8x8 grid → 1 merger
    assert build_ofa_branch(tokens, 2, 4, 64, 10, 48)(tokens).shape == (2, 10)


# ----------------------------------------------------------------------------------------------- ND
def test_nd_cases():
    c = torch.randn(3, 5)
    y = torch.tensor([0, 1, 2])
    unit = F.normalize(c, dim=1)
    e_t = unit * 2.0  # teacher norm 2
    big = unit * 3.0  # parallel, larger norm → 0
    torch.testing.assert_close(nd_loss(big, e_t, c, y, reduction="none"), torch.zeros(3), atol=1e-6, rtol=0)
    small = unit * 0.5  # parallel, smaller norm → 1 − 0.5/2
    torch.testing.assert_close(nd_loss(small, e_t, c, y, reduction="none"), torch.full((3,), 0.75))


def test_nd_recipe_terms_projector_and_class_means():
    s, t = TinyNet(4), TinyNet(8)  # embeddings 8 vs 16 → projector
    batches = [make_batch(10, seed=i) for i in range(3)]
    method = build_method("nd")
    d = Distiller(s, method, t)
    means = method.fit_class_means(t, batches, num_classes=5)
    # equals a one-pass mean per class
    t.eval()
    with torch.no_grad():
        embs = torch.cat([t.flatten(t.pool(t.layer2(t.layer1(t.stem(b["input"]))))) for b in batches])
    ys = torch.cat([b["target"] for b in batches])
    ref = torch.stack([embs[ys == k].mean(0) for k in range(5)])
    torch.testing.assert_close(means, ref, atol=1e-5, rtol=1e-5)
    _, losses = d(batches[0], epoch=10.0)
    assert set(losses) == {"ce", "kd", "nd"}
    assert "emb" in method.adapters and isinstance(method.adapters["emb"][0], nn.BatchNorm1d)
    sum(losses.values()).backward()
    # warm-up: kd weight is epoch/20
    assert method.weight("kd", 10.0) == pytest.approx(0.5)
    assert d.export_student() is s


def test_dkdpp_and_missing_means_error():
    s, t = TinyNet(8), TinyNet(8)
    method = build_method("dkd++")
    d = Distiller(s, method, t)
    with pytest.raises(RuntimeError, match="class means"):
        d(make_batch())
    method.class_means = fit_class_means(t, [make_batch(20)], num_classes=5)
    _, losses = d(make_batch(), epoch=30)
    assert set(losses) == {"ce", "dkd", "nd"} and "emb" not in method.adapters


# ----------------------------------------------------------------------------------------------- MEAL V2
def test_mealv2_ensemble_averages_probabilities_and_disc_sees_logits():
    t1, t2 = TinyNet(8), TinyNet(6)
    ens = TeacherEnsemble([t1, t2]).eval()
    x = make_batch()["input"]
    with torch.no_grad():
        q = ens(x).softmax(1)
        z1, z2 = t1(x), t2(x)
    torch.testing.assert_close(q, (z1.softmax(1) + z2.softmax(1)) / 2)
    assert not torch.allclose(q, ((z1 + z2) / 2).softmax(1))
    # N = 1: q = softmax(z_t)
    with torch.no_grad():
        torch.testing.assert_close(TeacherEnsemble([t1]).eval()(x).softmax(1), z1.softmax(1))

    s = TinyNet(4)
    m = build_method("mealv2")
    d = Distiller(s, m, ens)
    seen = {}
    d.prepare(make_batch())

    def hook(mod, args, out):
        seen["x"] = args[0].detach()

    m.adapters["disc"].register_forward_hook(hook)
    logits, losses = d(make_batch())
    assert set(losses) == {"kl", "disc"}
    with torch.no_grad():
        mean_logits = (t1(x) + t2(x)) / 2
    torch.testing.assert_close(seen["x"], torch.cat([logits.detach(), mean_logits]), atol=1e-5, rtol=1e-5)
    # L_KL is the soft-label CE against q
    ref = -(q * F.log_softmax(logits.detach(), 1)).sum(1).mean()
    torch.testing.assert_close(losses["kl"].detach(), ref, atol=1e-5, rtol=1e-5)
    assert LogitDiscriminator(1000).net[0].out_channels == 125


# ----------------------------------------------------------------------------------------------- KD-OCT
def test_kdoct_is_weighted_ce_plus_kd_and_focal_gamma0_is_ce():
    s, t = TinyNet(4), TinyNet(8)
    batch = make_batch()
    d = Distiller(s, build_method("kdoct"), t)
    logits, losses = d(batch)
    assert set(losses) == {"soft", "hard"}
    with torch.no_grad():
        zt = t(batch["input"])
    torch.testing.assert_close(losses["hard"], 0.3 * F.cross_entropy(logits, batch["target"]))
    torch.testing.assert_close(losses["soft"], 0.7 * kd_loss(logits, zt, 4.0), atol=1e-5, rtol=1e-5)
    m = build_method("kdoct", focal_gamma=2.0)
    out = m({"logits": logits}, {"logits": zt}, batch, 0.0)
    assert out["hard"] < F.cross_entropy(logits, batch["target"])
    f0 = build_method("focal", gamma=0.0)({"logits": logits}, {}, batch, 0.0)["focal"]
    torch.testing.assert_close(f0, F.cross_entropy(logits, batch["target"]))


# ----------------------------------------------------------------------------------------------- collaborative
def test_collaborative_trains_both_and_exports_student_only():
    s, peer = TinyNet(4), TinyNet(6)
    d = Distiller(s, build_method("collaborative", peer=peer))
    _, losses = d(make_batch())
    assert set(losses) == {"ce", "peer_ce", "kl", "peer_kl"}
    sum(losses.values()).backward()
    assert s.fc.weight.grad is not None and peer.fc.weight.grad is not None
    ids = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) in ids for p in peer.parameters())
    assert d.export_student() is s
    # KL terms vanish when both predict the same
    m = build_method("collaborative", peer=s)
    z = s(make_batch()["input"])
    out = m({"logits": z}, {}, make_batch(), 0.0)
    assert float(out["kl"].detach()) == pytest.approx(0.0, abs=1e-6)


def test_param_groups_partition_the_trainable_parameters():
    s, t = TinyNet(4), TinyNet(8)
    d = Distiller(s, build_method("mealv2", disc_lr_scale=0.05), t)
    d.prepare(make_batch())
    groups = d.param_groups()
    assert [g["name"] for g in groups] == ["main", "disc"] and groups[1]["lr_scale"] == 0.05
    flat = [p for g in groups for p in g["params"]]
    assert sorted(map(id, flat)) == sorted(map(id, d.trainable_parameters()))
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in d.method.adapters["disc"].parameters()}
    # no discriminator → one group; inside compose the part's scale still applies
    off = Distiller(TinyNet(4), build_method("mealv2", discriminator=False), t)
    off.prepare(make_batch())
    assert [g["name"] for g in off.param_groups()] == ["main"]
    both = Distiller(TinyNet(4), build_method("compose", parts=[{"name": "kd"}, {"name": "mealv2"}]), t)
    both.prepare(make_batch())
    names = [g["name"] for g in both.param_groups()]
    assert names[0] == "main" and len(names) == 2 and names[1].endswith("disc")
    with pytest.raises(ValueError, match="disc_lr_scale"):
        build_method("mealv2", disc_lr_scale=0.0)
