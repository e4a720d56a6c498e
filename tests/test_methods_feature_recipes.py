"""Defining properties of CKA, LSSKD, LELP, PELA, DMAE and DisWOT."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from featdistill.distiller import Distiller
from featdistill.losses.relations import linear_cka
from featdistill.methods import build_method
from featdistill.methods.cka import cka_matrix, format_cka_matrix, hsic_unbiased, minibatch_cka, plot_cka
from featdistill.methods.diswot import (
    diswot_score,
    kendall_tau,
    rank_students,
    relation_distance,
    semantic_distance,
    spearman_rho,
)
from featdistill.methods.dmae import DMAE, MaskedViT, masked_reconstruction_loss, patchify, random_keep
from featdistill.methods.lelp import LELP, SubclassHead, null_space_projector, subclass_directions, subclass_targets
from featdistill.methods.lsskd import joint_label, rotate_batch, split_joint_label
from featdistill.methods.pela import (
    PELA,
    LowRankConv2d,
    LowRankLinear,
    count_parameters,
    inf_norm_penalty,
    low_rank_copy,
    low_rank_rank,
)
from test_methods_logit_recipes import TinyNet, make_batch  # noqa: E402


# ----------------------------------------------------------------------------------------------- CKA
def test_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    y = torch.randn(40, 7, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    assert float(linear_cka(x, x)) == 1.0 or abs(float(linear_cka(x, x)) - 1) < 1e-12
    torch.testing.assert_close(linear_cka(x @ q, y), linear_cka(x, y))
    torch.testing.assert_close(linear_cka(3.5 * x, y), linear_cka(x, y))
    a = torch.randn(12, 12, generator=g, dtype=torch.float64)  # generic invertible map: not invariant
    assert abs(float(linear_cka(x @ a, y) - linear_cka(x, y))) > 1e-4
    assert 0.0 <= float(linear_cka(x, y)) <= 1.0
    # linear form = kernel form with K = XXᵀ, L = YYᵀ (biased HSIC with centring)
    n = x.shape[0]
    h = torch.eye(n, dtype=x.dtype) - 1.0 / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h)

    torch.testing.assert_close(linear_cka(x, y), hsic(k, l_) / (hsic(k, k) * hsic(l_, l_)).sqrt())
    # unbiased mini-batch estimator: CKA(X, X) = 1
    assert abs(float(minibatch_cka([x[:20], x[20:]], [x[:20], x[20:]])) - 1.0) < 1e-6
    torch.testing.assert_close(hsic_unbiased(k, l_), hsic_unbiased(l_, k))


def test_cka_matrix_diagnostic_and_heatmap(tmp_path):
    t, s = TinyNet(8), TinyNet(4)
    batches = [make_batch(16, seed=i) for i in range(2)]
    m_same = cka_matrix(t, t, batches)
    paths = ["layer1", "layer2", "flatten"]
    assert m_same.shape == (3, 3)
    torch.testing.assert_close(torch.diagonal(m_same), torch.ones(3), atol=1e-5, rtol=0)
    m = cka_matrix(t, s, batches, unbiased=True)
    assert m.shape == (3, 3)
    text = format_cka_matrix(m, paths, paths)
    assert "layer2" in text and len(text.splitlines()) == 4
    png = plot_cka(m, paths, paths, tmp_path / "cka.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cka_loss_recipe():
    d = Distiller(TinyNet(4), build_method("cka"), TinyNet(8))
    _, losses = d(make_batch(16))
    assert set(losses) == {"ce", "cka"} and 0 <= float(losses["cka"].detach()) <= 1
    sum(losses.values()).backward()


# ----------------------------------------------------------------------------------------------- LSSKD
def test_lsskd_joint_labels_rotations_and_export():
    c = 5
    y = torch.arange(c).repeat_interleave(4)
    r = torch.arange(4).repeat(c)
    j = joint_label(y, r)
    assert sorted(j.tolist()) == list(range(4 * c))  # bijection onto 0..4C-1
    yy, rr = split_joint_label(j)
    assert torch.equal(yy, y) and torch.equal(rr, r)
    x = torch.randn(3, 1, 6, 6)
    xs, ys, rot = rotate_batch(x, torch.tensor([0, 1, 2]))
    assert xs.shape[0] == 4 * 3
    assert torch.equal(split_joint_label(joint_label(ys, rot))[0], torch.tensor([0, 1, 2]).repeat(4))
    torch.testing.assert_close(xs[3:6], torch.rot90(x, 1, dims=(2, 3)))

    s = TinyNet(4)
    d = Distiller(s, build_method("lsskd"))
    _, losses = d(make_batch())
    assert set(losses) == {"ce", "aux", "kl", "feat", "main"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in d.method.adapters.parameters())
    exported = d.export_student()
    assert exported is s and not any("adapters" in n for n, _ in exported.named_modules())
    assert d.method.adapters["stage0"].fc.out_features == 4 * 5


# ----------------------------------------------------------------------------------------------- LELP
def test_lelp_projection_targets_and_head():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 10, generator=g)
    p = null_space_projector(w)
    h = torch.randn(50, 10, generator=g)
    assert float((w @ (h @ p.T).T).abs().max()) < 1e-4
    y = torch.arange(50) % 3
    dirs, means = subclass_directions(h @ p.T, y, 3, 4, seed=0)
    for c in range(3):
        torch.testing.assert_close(dirs[c] @ dirs[c].T, torch.eye(4), atol=1e-5, rtol=0)
    zt = torch.randn(50, 3, generator=g)
    q = subclass_targets(zt, h, dirs, means, p, beta=0.5)
    torch.testing.assert_close(q.sum(2), zt.softmax(1))
    head = SubclassHead(10, 3, 4)
    z = head.fc(h).view(50, 3, 4)
    torch.testing.assert_close(head(h).softmax(1), z.flatten(1).softmax(1).view(50, 3, 4).sum(2))

    s, t = TinyNet(4, num_classes=2), TinyNet(8, num_classes=2)
    m = LELP(num_subclasses=3)
    d = Distiller(s, m, t)
    assert isinstance(s.fc, SubclassHead)
    m.fit(t, [make_batch(20, c=2, seed=i) for i in range(2)])
    logits, losses = d(make_batch(8, c=2))
    assert logits.shape == (8, 2) and set(losses) == {"lelp"}
    sum(losses.values()).backward()


# ----------------------------------------------------------------------------------------------- PELA
def test_pela_rank_params_and_svd_init():
    lin = nn.Linear(24, 16)
    r = low_rank_rank(24, 16, 2.0)
    assert r == (24 * 16) // (2 * 40)
    lr = LowRankLinear(lin, r)
    assert count_parameters(lr) == r * (24 + 16) + 16
    assert r * (24 + 16) <= 24 * 16 / 2.0
    full = LowRankLinear(lin, 16)  # r = min(m_in, m_out) reproduces the layer
    x = torch.randn(5, 24)
    torch.testing.assert_close(full(x), lin(x), atol=1e-5, rtol=1e-5)
    conv = nn.Conv2d(6, 12, 3, padding=1)
    fc = LowRankConv2d(conv, 12)
    xi = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(fc(xi), conv(xi), atol=1e-5, rtol=1e-5)
    assert float(inf_norm_penalty([(full.product().detach(), lin.weight)], eps=0.0).detach()) < 1e-10

    t = TinyNet(16)
    s, report = low_rank_copy(t, ratio=2.0)
    assert report["params_after"] < report["params_before"] == count_parameters(t)
    assert report["layers"] and isinstance(s.fc, nn.Linear)  # classifier kept
    d = Distiller(s, PELA(weights={"inf": 1.0}), t)
    _, losses = d(make_batch())
    assert set(losses) == {"ce", "feat", "logit", "inf"}
    sum(losses.values()).backward()


# ----------------------------------------------------------------------------------------------- DMAE
def test_dmae_shared_mask_masked_rec_and_truncated_teacher():
    keep = random_keep(torch.arange(4), torch.zeros(4, dtype=torch.long), 49, 0.75, seed=1)
    assert keep.shape == (4, 12)
    torch.testing.assert_close(keep, random_keep(torch.arange(4), torch.zeros(4, dtype=torch.long), 49, 0.75, 1))
    # L_rec only counts masked patches
    pred, target = torch.randn(2, 9, 4), torch.randn(2, 9, 4)
    masked = torch.ones(2, 9)
    masked[:, :3] = 0
    pred2 = pred.clone()
    pred2[:, :3] += 5.0
    torch.testing.assert_close(
        masked_reconstruction_loss(pred, target, masked), masked_reconstruction_loss(pred2, target, masked)
    )
    assert patchify(torch.randn(2, 1, 28, 28), 4).shape == (2, 49, 16)

    torch.manual_seed(0)
    teacher = MaskedViT(num_classes=5, embed_dim=32, depth=4)
    student = MaskedViT(num_classes=5, embed_dim=16, depth=4)
    m = DMAE()
    d = Distiller(student, m, teacher, ce_weight=1.0)
    batch = make_batch(4, size=28)
    seen = {}
    blocks = teacher.blocks
    for i, blk in enumerate(blocks):
        blk.register_forward_hook(lambda mod, a, o, i=i: seen.update({i: o.shape}))
    s_seen = {}
    student.blocks[0].register_forward_hook(lambda mod, a, o: s_seen.update(n=o.shape[1]))
    _, losses = d(batch)
    assert set(losses) == {"ce", "feat", "rec"}
    sum(losses.values()).backward()
    assert sorted(seen) == [0, 1, 2]  # teacher stopped after its tapped block (index 2 of 4)
    assert s_seen["n"] == seen[2][1]  # the student saw the same number of visible tokens
    assert seen[2][1] == 1 + m.last_keep.shape[1]  # visible tokens + CLS only
    # the teacher's truncated pass gives the same block-2 tokens as a full visible-only pass
    with torch.no_grad():
        tk = teacher.patch_embed(batch["input"]).flatten(2).transpose(1, 2) + teacher.pos_embed
        tk = tk.gather(1, m.last_keep[:, :, None].expand(-1, -1, tk.shape[2]))
        tk = torch.cat([teacher.cls_token.expand(4, -1, -1), tk], 1)
        for blk in teacher.blocks[:3]:
            tk = blk(tk)
        _, _, tf = m._run(batch["input"], m.last_keep)
    torch.testing.assert_close(tf, tk, atol=1e-5, rtol=1e-5)
    cost = m.teacher_cost()
    assert 0 < cost["fraction"] < 0.3 and abs(cost["saved"] + cost["fraction"] - 1) < 1e-9


def test_dmae_step_runs_under_bf16_autocast():
    """The decoder mixes an fp32 mask token with autocast activations (it failed with a scatter dtype error)."""
    torch.manual_seed(0)
    d = Distiller(
        MaskedViT(num_classes=5, embed_dim=16, depth=4), DMAE(), MaskedViT(num_classes=5, embed_dim=32, depth=4)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = d(make_batch(4, size=28))
    assert all(torch.isfinite(v) for v in losses.values())


def test_dmae_runs_the_student_once_per_step_on_the_visible_patches_only():
    """The saving DMAE exists for: one masked student pass (the Distiller's), never a full-image pass beside it."""
    torch.manual_seed(0)
    teacher = MaskedViT(num_classes=5, embed_dim=32, depth=4)
    student = MaskedViT(num_classes=5, embed_dim=16, depth=4)
    m = DMAE()
    d = Distiller(student, m, teacher, ce_weight=0.0)
    batch = make_batch(4, size=28)
    d(batch)  # first step: adapters are built
    calls = []
    student.blocks[0].register_forward_hook(lambda mod, a, o: calls.append(o.shape[1]))
    _, losses = d(batch)
    assert calls == [1 + m.last_keep.shape[1]]  # exactly one student pass, on CLS + visible tokens
    # and its terms equal the recipe computed from an explicit masked pass (the diagnostic path)
    with torch.no_grad():
        f_s, last, f_t = m._run(batch["input"], m.last_keep)
        from featdistill.methods.dmae import feature_l1

        want = feature_l1(m.adapters["proj"](f_s.float()), f_t.float())
    torch.testing.assert_close(losses["feat"].detach(), want, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- DisWOT
def test_diswot_score_properties_and_ranking():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(8, 4, 3, 3, generator=g), torch.randn(8, 6, 2, 2, generator=g)
    assert float(relation_distance(f1, f1)) == 0.0
    assert float(relation_distance(f1, f2)) > 0
    torch.testing.assert_close(relation_distance(f1, f2), relation_distance(f2, f1))
    g1, g2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for mode in ("class", "channel"):
        assert float(semantic_distance(g1, g2, mode)) >= 0
        torch.testing.assert_close(semantic_distance(g1, g2, mode), semantic_distance(g2, g1, mode))
    t = TinyNet(8)
    batch = make_batch(8)
    same = diswot_score(t, copy.deepcopy(t), batch, student_init="as_given")
    assert abs(same["score"]) < 1e-9  # S = T (the teacher's own weights) → the maximum, 0
    # the score reads the *trained* teacher: perturbing its weights moves it (it used to re-initialise them)
    shaken = copy.deepcopy(t)
    with torch.no_grad():
        for p in shaken.parameters():
            p.add_(0.5 * torch.randn_like(p))
    a, b = diswot_score(t, TinyNet(4), batch)["score"], diswot_score(shaken, TinyNet(4), batch)["score"]
    assert abs(a - b) > 1e-6
    rows = rank_students(t, {"w8": TinyNet(8), "w2": TinyNet(2), "w4": TinyNet(4)}, batch)
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["score"] >= rows[-1]["score"]
    assert all(r["score"] <= 0 for r in rows)
    assert kendall_tau([1, 2, 3], [2, 4, 9]) == 1.0
    assert abs(spearman_rho([1, 2, 3], [3, 2, 1]) + 1.0) < 1e-12
    d = Distiller(TinyNet(4), build_method("diswot"), t)
    _, losses = d(batch)
    assert set(losses) == {"ce", "kd", "sp"}


def test_diswot_works_with_a_frozen_teacher():
    t = TinyNet(8)
    for p in t.parameters():
        p.requires_grad_(False)
    rows = rank_students(t, {"w4": TinyNet(4)}, make_batch(8))
    assert rows[0]["relation"] >= 0 and not any(p.requires_grad for p in t.parameters())


def test_cka_refuses_a_model_without_an_embedding_path_instead_of_using_its_logits():
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method

    plain = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))  # noqa: E731
    with pytest.raises(ValueError, match="declares no embedding_path"):
        Distiller(plain(), build_method("cka"), plain())
    # the explicit choice is honoured: the predictions themselves
    d = Distiller(plain(), build_method("cka", student_paths=[""], teacher_paths=[""]), plain())
    _, losses = d({"input": torch.randn(8, 4), "target": torch.randint(0, 3, (8,))})
    assert 0.0 <= losses["cka"].item() <= 1.0


def test_catalog_i_losses_keep_float64_precision():
    """OFA's loss, mini-batch CKA and ND's given class means used to end in float32 (`.float()`)."""
    from featdistill.methods import build_method
    from featdistill.methods.ofa import ofa_loss

    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.arange(6) % 5
    assert ofa_loss(zs, zt, y, eps=1.5).dtype == torch.float64
    assert ofa_loss(zs.float(), zt.float(), y).dtype == torch.float32
    xs = [torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    assert minibatch_cka(xs, xs).dtype == torch.float64 and abs(minibatch_cka(xs, xs).item() - 1) < 1e-12
    means = torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert build_method("nd", class_means=means).class_means.dtype == torch.float64


def test_pela_student_and_mealv2_ensemble_are_buildable_from_a_yaml_class_path(tmp_path):
    from safetensors.torch import save_file

    from featdistill.components import import_object
    from featdistill.methods.mealv2 import TeacherEnsemble
    from featdistill.methods.pela import count_parameters
    from featdistill.models import build_model

    teacher = build_model("resnet8", num_classes=10, in_channels=1, image_size=28)
    save_file(teacher.state_dict(), tmp_path / "t.safetensors")
    base = {"model": "resnet8", "checkpoint": str(tmp_path / "t.safetensors")}
    low = import_object("featdistill.methods.pela:pela_student")(base=base, ratio=4.0)
    assert count_parameters(low) < count_parameters(teacher)
    ens = import_object("featdistill.methods.mealv2:teacher_ensemble")(members=[base, {"model": "resnet8"}])
    assert isinstance(ens, TeacherEnsemble) and ens(torch.randn(2, 1, 28, 28)).shape[-1] == 10
    with pytest.raises(ValueError, match="at least one member"):
        import_object("featdistill.methods.mealv2:teacher_ensemble")(members=[])
