"""Catalog II, relational and similarity methods: SP, CC, RKD, PKT, NST, ICKD, FSP, KDSVD, AB.

Per loss: its defining property, a value checked against a hand computation (plain loops over small float64
tensors, written from the reference formulas, not from the implementation) and float64 in → float64 out. Per
recipe: it builds from a config and takes a real training step on a zoo pair; AB and FSP also run their
initialisation stage.
"""

from __future__ import annotations

import math

import pytest
import torch

from featdistill.config import parse_config
from featdistill.distiller import Distiller
from featdistill.losses.similarity import (
    ab_criterion,
    ab_loss,
    cc_kernel_matrix,
    cc_loss,
    cckd_loss,
    fsp_loss,
    fsp_matrix,
    ickd_loss,
    kdsvd_loss,
    nst_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    sp_loss,
)
from featdistill.methods import ab as _ab  # noqa: F401  (registers the recipes even before methods/__init__ lists them)
from featdistill.methods import build_method
from featdistill.methods import cc as _cc  # noqa: F401
from featdistill.methods import fsp as _fsp  # noqa: F401
from featdistill.methods import ickd as _ickd  # noqa: F401
from featdistill.methods import kdsvd as _kdsvd  # noqa: F401
from featdistill.methods import nst as _nst  # noqa: F401
from featdistill.methods import pkt as _pkt  # noqa: F401
from featdistill.methods import rkd as _rkd  # noqa: F401
from featdistill.methods import sp as _sp  # noqa: F401
from featdistill.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def dot(a, b) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def norm(a) -> float:
    return math.sqrt(dot(a, a))


def smooth_l1(a: list[float], b: list[float]) -> float:
    out = 0.0
    for x, y in zip(a, b):
        d = abs(x - y)
        out += 0.5 * d * d if d < 1 else d - 0.5
    return out / len(a)


def descends(loss_fn, x: torch.Tensor, lr: float = 1e-3) -> bool:
    """A small step against the gradient lowers the loss (the gradient points uphill)."""
    x = x.clone().requires_grad_(True)
    before = loss_fn(x)
    (g,) = torch.autograd.grad(before, x)
    return float(loss_fn((x - lr * g / g.norm()).detach())) < float(before.detach())


# --------------------------------------------------------------------------------------------------- SP


def test_sp_hand_value_dtype_and_invariances():
    fs, ft = rand(4, 3, 2, 2, seed=1), rand(4, 5, 2, 2, seed=2)

    def gram(f):
        rows = [f[i].flatten().tolist() for i in range(f.shape[0])]
        g = [[dot(a, b) for b in rows] for a in rows]
        return [[v / norm(r) for v in r] for r in g]

    gs, gt = gram(fs), gram(ft)
    hand = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(4) for j in range(4)) / 16
    out = sp_loss(fs, ft)
    assert out.dtype == D and out.ndim == 0
    assert math.isclose(float(out), hand, rel_tol=1e-12)
    # zero at identity, and for a positive scale or an orthogonal map of the features (same row-normalised Gram)
    q, _ = torch.linalg.qr(rand(12, 12, seed=3))
    assert float(sp_loss(ft, ft)) == 0.0
    assert float(sp_loss(3.0 * fs, fs)) < 1e-28
    assert float(sp_loss(fs.flatten(1) @ q, fs)) < 1e-28
    assert descends(lambda x: sp_loss(x, ft), fs)


def test_diswot_relation_term_is_the_sp_loss():
    from featdistill.methods.diswot import relation_distance

    fs, ft = rand(4, 3, 2, 2, seed=1), rand(4, 5, 2, 2, seed=2)
    assert float(relation_distance(ft, fs)) == float(sp_loss(fs, ft))
    # and the DisWOT distiller's sp term keeps the input dtype (no trailing .float())
    m = build_method("diswot")
    m.student_path, m.teacher_path = "a", "b"
    out = m({"feat": fs, "logits": rand(4, 10, seed=4)}, {"feat": ft, "logits": rand(4, 10, seed=5)}, {}, 0.0)
    assert out["sp"].dtype == D


# --------------------------------------------------------------------------------------------------- CC


def test_cc_repdistiller_hand_value_and_zero():
    es, et = rand(5, 3, seed=1), rand(5, 3, seed=2)
    delta = [[abs(float(es[i, d] - et[i, d])) for d in range(3)] for i in range(5)]
    hand = sum(sum(delta[i][d] * delta[i + 1][d] for d in range(3)) for i in range(4)) / 4
    out = cc_loss(es, et)
    assert out.dtype == D and math.isclose(float(out), hand, rel_tol=1e-12)
    assert float(cc_loss(et, et)) == 0.0 and float(out) >= 0


def test_cckd_gaussian_and_bilinear_hand_values():
    es, et = rand(4, 3, seed=3) / 2, rand(4, 3, seed=4) / 2
    gamma, p_max = 0.4, 2

    def kernel(e, kind):
        m = [[dot(e[i], e[j]) for j in range(4)] for i in range(4)]
        if kind == "bilinear":
            return m
        return [
            [
                math.exp(-2 * gamma) * sum((2 * gamma) ** p / math.factorial(p) * v**p for p in range(p_max + 1))
                for v in r
            ]
            for r in m
        ]

    for kind in ("gaussian", "bilinear"):
        ks, kt = kernel(es, kind), kernel(et, kind)
        frob = math.sqrt(sum((ks[i][j] - kt[i][j]) ** 2 for i in range(4) for j in range(4)))
        out = cckd_loss(es, et, kernel=kind, gamma=gamma, max_p=p_max)
        assert out.dtype == D and math.isclose(float(out), frob / 16, rel_tol=1e-12)
        assert math.isclose(float(cckd_loss(es, et, kernel=kind, reduction="sum")), frob, rel_tol=1e-12)
    # the Taylor series approaches the exact Gaussian RBF of unit vectors, exp(-gamma * |a - b|^2)
    u = torch.nn.functional.normalize(rand(3, 4, seed=5), dim=1)
    exact = torch.exp(-gamma * torch.cdist(u, u).pow(2))
    assert torch.allclose(cc_kernel_matrix(u, "gaussian", gamma, max_p=12), exact, atol=1e-10)
    assert float(cckd_loss(et, et)) == 0.0


# --------------------------------------------------------------------------------------------------- RKD


def _hand_distance(e: torch.Tensor) -> list[float]:
    n = e.shape[0]
    d = [[0.0 if i == j else norm((e[i] - e[j]).tolist()) for j in range(n)] for i in range(n)]
    pos = [v for r in d for v in r if v > 0]
    mean = sum(pos) / len(pos)
    return [v / mean for r in d for v in r]


def _hand_angles(e: torch.Tensor) -> list[float]:
    n = e.shape[0]
    out = []
    for i in range(n):
        for j in range(n):
            for k in range(n):
                a, b = (e[j] - e[i]).tolist(), (e[k] - e[i]).tolist()
                na, nb = max(norm(a), 1e-12), max(norm(b), 1e-12)
                out.append(dot(a, b) / (na * nb))
    return out


def test_rkd_hand_values_dtype_and_invariances():
    s, t = rand(5, 4, seed=1), rand(5, 6, seed=2)
    d = rkd_distance_loss(s, t)
    a = rkd_angle_loss(s, t)
    assert d.dtype == D and a.dtype == D
    assert math.isclose(float(d), smooth_l1(_hand_distance(s), _hand_distance(t)), rel_tol=1e-10)
    assert math.isclose(float(a), smooth_l1(_hand_angles(s), _hand_angles(t)), rel_tol=1e-10)
    # both relations ignore a global scale, a translation and a rotation of the student
    q, _ = torch.linalg.qr(rand(4, 4, seed=3))
    moved = 2.5 * s @ q + 7.0
    assert math.isclose(float(rkd_distance_loss(moved, t)), float(d), rel_tol=1e-9)
    assert math.isclose(float(rkd_angle_loss(moved, t)), float(a), rel_tol=1e-9)
    assert float(rkd_distance_loss(t, t)) < 1e-20 and float(rkd_angle_loss(t, t)) < 1e-20
    assert descends(lambda x: rkd_distance_loss(x, t), s) and descends(lambda x: rkd_angle_loss(x, t), s)


# --------------------------------------------------------------------------------------------------- PKT


def test_pkt_hand_value_and_properties():
    s, t = rand(4, 3, seed=1), rand(4, 5, seed=2)
    eps = 1e-7

    def probs(x):
        rows = [[v / (norm(r) + eps) for v in r] for r in x.tolist()]
        k = [[(dot(a, b) + 1) / 2 for b in rows] for a in rows]
        return [[v / sum(r) for v in r] for r in k]

    ps, pt = probs(s), probs(t)
    hand = sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(4) for j in range(4)) / 16
    out = pkt_loss(s, t)
    assert out.dtype == D and math.isclose(float(out), hand, rel_tol=1e-10)
    assert float(pkt_loss(t, t)) == 0.0
    # a positive per-sample scale leaves the cosine kernel unchanged (up to the eps in the norm)
    scale = torch.tensor([[0.5], [2.0], [3.0], [1.5]], dtype=D)
    assert math.isclose(float(pkt_loss(s * scale, t)), float(out), rel_tol=1e-6)
    assert descends(lambda x: pkt_loss(x, t), s)


# --------------------------------------------------------------------------------------------------- NST


def test_nst_hand_value_and_properties():
    fs, ft = rand(2, 3, 4, 4, seed=1), rand(2, 2, 2, 2, seed=2)  # student map pooled 4x4 -> 2x2
    pooled = torch.nn.functional.avg_pool2d(fs, 2)

    def unit_channels(f):
        return [
            [[v / norm(f[b, c].flatten().tolist()) for v in f[b, c].flatten().tolist()] for c in range(f.shape[1])]
            for b in range(f.shape[0])
        ]

    us, ut = unit_channels(pooled), unit_channels(ft)

    def mean_k(a, b):
        vals = [dot(x, y) ** 2 for n in range(len(a)) for x in a[n] for y in b[n]]
        return sum(vals) / len(vals)

    hand = mean_k(ut, ut) + mean_k(us, us) - 2 * mean_k(us, ut)
    out = nst_loss(fs, ft)
    assert out.dtype == D and math.isclose(float(out), hand, rel_tol=1e-10)
    assert abs(float(nst_loss(ft, ft))) < 1e-14
    # each channel map is L2-normalised: a positive per-channel scale of the student changes nothing
    scale = torch.tensor([0.5, 2.0], dtype=D)[None, :, None, None]
    assert math.isclose(float(nst_loss(ft * scale, ft)), 0.0, abs_tol=1e-14)
    assert float(out) >= 0 and descends(lambda x: nst_loss(x, ft), fs)


# --------------------------------------------------------------------------------------------------- ICKD


def test_ickd_hand_value_and_properties():
    fs, ft = rand(3, 2, 3, 3, seed=1), rand(3, 2, 2, 2, seed=2)  # equal channels, any spatial size

    def grams(f):
        out = []
        for b in range(f.shape[0]):
            ch = [f[b, c].flatten().tolist() for c in range(f.shape[1])]
            g = [[dot(x, y) for y in ch] for x in ch]
            out.append([[v / norm(r) for v in r] for r in g])
        return out

    gs, gt = grams(fs), grams(ft)
    total = sum((gs[b][i][j] - gt[b][i][j]) ** 2 for b in range(3) for i in range(2) for j in range(2))
    out = ickd_loss(fs, ft)
    assert out.dtype == D and math.isclose(float(out), total / (2 * 9), rel_tol=1e-12)
    assert math.isclose(float(ickd_loss(fs, ft, reduction="official")), total / (2 * 3), rel_tol=1e-12)
    assert float(ickd_loss(ft, ft)) == 0.0
    assert float(ickd_loss(4.0 * ft, ft)) < 1e-28  # a global scale cancels in the row normalisation
    assert descends(lambda x: ickd_loss(x, ft), fs)
    with pytest.raises(ValueError, match="embed the student map"):
        ickd_loss(rand(3, 4, 2, 2), ft)


# --------------------------------------------------------------------------------------------------- FSP


def test_fsp_hand_value_and_properties():
    s = [rand(2, 2, 4, 4, seed=1), rand(2, 3, 2, 2, seed=2)]
    t = [rand(2, 2, 4, 4, seed=3), rand(2, 3, 2, 2, seed=4)]

    def fsp(bot, top):
        bot = torch.nn.functional.avg_pool2d(bot, 2)  # the larger (bottom) map pooled to the top's 2x2
        hw = bot.shape[2] * bot.shape[3]
        return [
            [
                [dot(top[b, i].flatten().tolist(), bot[b, j].flatten().tolist()) / hw for j in range(bot.shape[1])]
                for i in range(top.shape[1])
            ]
            for b in range(bot.shape[0])
        ]

    gs, gt = fsp(*s), fsp(*t)
    vals = [(gs[b][i][j] - gt[b][i][j]) ** 2 for b in range(2) for i in range(3) for j in range(2)]
    out = fsp_loss(s, t)
    assert out.dtype == D and math.isclose(float(out), sum(vals) / len(vals), rel_tol=1e-12)
    assert fsp_matrix(*s).shape == (2, 3, 2)
    assert float(fsp_loss(t, t)) == 0.0
    assert descends(lambda x: fsp_loss([x, s[1]], t), s[0])
    with pytest.raises(ValueError, match="equal channel counts"):
        fsp_loss([rand(2, 5, 4, 4), s[1]], t)


# --------------------------------------------------------------------------------------------------- KDSVD


def _hand_kdsvd(gs, gt, k=1):
    """Loops after the decomposition (``torch.linalg.svd`` is the primitive both use): per stage the first k
    teacher / k + 3 student right singular vectors, sign alignment, teacher singular-value scaling, the RBF over
    channel pairs of consecutive stages, the squared difference summed, ÷ B."""
    b_size = gs[0].shape[0]
    total, prev = 0.0, None
    for fs, ft in zip(gs, gt):
        stage = []
        for b in range(b_size):

            def right(f, n, b=b):
                x = f[b].reshape(f.shape[1], -1).T  # (HW, C)
                _, sv, vh = torch.linalg.svd(x, full_matrices=False)
                v = [vh[i].tolist() for i in range(min(n, vh.shape[0]))]  # up to n vectors of length C
                s = sv[:n].tolist()
                return [[c / norm(vec) for c in vec] for vec in v], [x / norm(s) for x in s]

            vt, st = right(ft, k)
            vs, _ = right(fs, k + 3)
            aligned = []
            for tvec in vt:  # the student candidate with the largest |cos|, with its sign
                cos = [dot(svec, tvec) for svec in vs]
                best = max(range(len(cos)), key=lambda i: abs(cos[i]))
                sign = 1.0 if cos[best] >= 0 else -1.0
                aligned.append([sign * c for c in vs[best]])
            vt = [[c * st[i] for c in vt[i]] for i in range(k)]
            aligned = [[c * st[i] for c in aligned[i]] for i in range(k)]
            stage.append((aligned, vt))
        if prev is not None:
            for b in range(b_size):
                (vs, vt), (vsb, vtb) = stage[b], prev[b]
                for i in range(k):
                    for c in range(len(vs[i])):
                        for c2 in range(len(vsb[i])):
                            rs = math.exp(-((vs[i][c] - vsb[i][c2]) ** 2) / 8)
                            rt = math.exp(-((vt[i][c] - vtb[i][c2]) ** 2) / 8)
                            total += (rs - rt) ** 2
        prev = stage
    return total / b_size


def test_kdsvd_hand_value_and_properties():
    gs = [rand(2, 3, 4, 4, seed=1), rand(2, 4, 2, 2, seed=2), rand(2, 5, 2, 2, seed=5)]
    gt = [rand(2, 3, 4, 4, seed=3), rand(2, 4, 2, 2, seed=4), rand(2, 5, 2, 2, seed=6)]
    out = kdsvd_loss(gs, gt)
    assert out.dtype == D and math.isclose(float(out), _hand_kdsvd(gs, gt), rel_tol=1e-9)
    assert float(kdsvd_loss(gt, gt)) < 1e-20  # the student's own first vector is picked and aligned
    # singular vectors and normalised singular values ignore a (power-of-two) scale of either map
    assert math.isclose(float(kdsvd_loss([2 * f for f in gs], [4 * f for f in gt])), float(out), rel_tol=1e-9)
    with pytest.raises(ValueError, match="channel counts must agree"):
        kdsvd_loss([rand(2, 6, 4, 4), *gs[1:]], gt)


# --------------------------------------------------------------------------------------------------- AB


def test_ab_hand_value_and_boundary_property():
    s, t = rand(2, 3, 2, 2, seed=1), rand(2, 3, 2, 2, seed=2)
    m = 1.0
    hand = 0.0
    for x, y in zip(s.flatten().tolist(), t.flatten().tolist()):
        if x > -m and y <= 0:
            hand += (x + m) ** 2
        if x <= m and y > 0:
            hand += (x - m) ** 2
    out = ab_criterion(s, t, m)
    assert out.dtype == D and math.isclose(float(out), hand, rel_tol=1e-12)
    # zero once every student pre-activation is past the margin on the teacher's side of the boundary
    beyond = torch.where(t > 0, 1.5, -1.5).to(D)
    assert float(ab_criterion(beyond, t, m)) == 0.0
    # the gradient pushes a student value in (-m, m] towards the teacher's side
    x = torch.tensor([0.2, 0.2], dtype=D, requires_grad=True)
    ab_criterion(x, torch.tensor([1.0, -1.0], dtype=D), m).backward()
    assert x.grad[0] < 0 < x.grad[1]  # descent raises the first (teacher active) and lowers the second
    # stage weights 2^(i-n+1), / B, * 3/1000
    maps_s, maps_t = [s, 2 * s, 3 * s], [t, t, t]
    crit = [float(ab_criterion(a, b, m)) for a, b in zip(maps_s, maps_t)]
    expect = sum(w * c / 2 / 1000 * 3 for w, c in zip((0.25, 0.5, 1.0), crit))
    assert math.isclose(float(ab_loss(maps_s, maps_t, m)), expect, rel_tol=1e-12)


# --------------------------------------------------------------------------------------------------- recipes

PAIR = ("resnet14", "resnet8")  # equal widths (FSP/KDSVD need them), real zoo models, cheap on CPU
RECIPES = {
    "sp": ({}, {"sp": 3000.0}),
    "cc": ({"feat_dim": 16}, {"cc": 0.02}),
    "rkd": ({}, {"distance": 25.0, "angle": 50.0}),
    "pkt": ({}, {"pkt": 30000.0}),
    "nst": ({}, {"nst": 50.0}),
    "ickd": ({"embed_kernel": 1, "reduction": "official"}, {"ickd": 2.5}),
    "fsp": ({"init_epochs": 0}, {"fsp": 1.0}),
    "kdsvd": ({}, {"kdsvd": 1.0}),
    "ab": ({"init_epochs": 0}, {"ab": 1.0}),
}


def _batch(n: int = 8, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input": torch.randn(n, 3, size, size, generator=g),
        "target": torch.randint(0, 10, (n,), generator=g),
        "sample_id": torch.arange(n),
        "view_id": torch.zeros(n, dtype=torch.long),
    }


def _config(name: str, params: dict, weights: dict) -> dict:
    return {
        "experiment": f"t-{name}",
        "data": {"name": "digits", "batch_size": 8},
        "teacher": {"model": PAIR[0]},
        "student": {"model": PAIR[1]},
        "method": {"name": name, "params": params, "weights": weights},
        "train": {"epochs": 1, "lr": 0.05, "progress": False},
    }


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_from_config_and_trains_a_step(name):
    params, weights = RECIPES[name]
    cfg = parse_config(_config(name, params, weights))
    torch.manual_seed(0)
    teacher = build_model(PAIR[0], num_classes=10, image_size=16)
    student = build_model(PAIR[1], num_classes=10, image_size=16)
    method = build_method(cfg.method.name, **cfg.method.params, weights=cfg.method.weights)
    d = Distiller(student, method, teacher, ce_weight=cfg.method.ce_weight)
    batch = _batch()
    d.prepare(batch)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    _, losses = d(batch)
    assert set(losses) == {"ce", *weights} and all(torch.isfinite(v) for v in losses.values())
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    if d.method.adapters:  # adapters (CC's embeddings, ICKD's conv, AB's connectors) train with the student
        assert all(p.grad is not None for p in d.method.adapters.parameters())


def test_recipe_defaults_follow_the_reference():
    assert build_method("rkd").weights["distance"].value == 25.0 and build_method("rkd").weights["angle"].value == 50.0
    assert build_method("sp").weights["sp"].value == 3000.0 and build_method("pkt").weights["pkt"].value == 30000.0
    assert build_method("nst").weights["nst"].value == 50.0 and build_method("cc").weights["cc"].value == 0.02
    # AB and FSP: RepDistiller's second stage is CE only
    assert build_method("ab").weights["ab"].value == 0.0 and build_method("fsp").weights["fsp"].value == 0.0
    teacher, student = build_model("vgg13"), build_model("vgg8")
    nst = build_method("nst")
    Distiller(student, nst, teacher)
    assert nst.student_paths == ["block1", "block2", "block3", "block4"]  # RepDistiller's feat[1:-1]
    ab = build_method("ab")
    Distiller(build_model("resnet8x4"), ab, build_model("resnet32x4"))
    assert ab.teacher_paths == ["layer1.4.preact", "layer2.4.preact", "layer3.4.preact"]
    assert ab.student_paths == ["layer1.0.preact", "layer2.0.preact", "layer3.0.preact"]


@pytest.mark.parametrize("name", ["ab", "fsp"])
def test_init_stage_trains_feature_layers_then_ce_only(name):
    torch.manual_seed(0)
    teacher = build_model("resnet14", num_classes=10, image_size=16)
    student = build_model("resnet8x4" if name == "ab" else "resnet8", num_classes=10, image_size=16)
    method = build_method(name, init_epochs=3, init_lr=0.05, init_device="cpu")
    d = Distiller(student, method, teacher)
    loader = [_batch(seed=i) for i in range(3)]
    fc = student.get_submodule(student.classifier_path)
    fc_before = [p.clone() for p in fc.parameters()]
    body_before = student.layer1[0].conv1.weight.clone()
    d.fit_data(loader, 10)
    assert len(method.init_history) == 3 and method.init_history[-1] < method.init_history[0]
    assert all(torch.equal(a, b) for a, b in zip(fc_before, fc.parameters()))  # the classifier is not trained
    assert not torch.equal(body_before, student.layer1[0].conv1.weight)
    if name == "ab":  # the trained connectors survive the Distiller's prepare
        connector = method.adapters["ab0"]
        d.prepare(loader[0])
        assert method.adapters["ab0"] is connector
    _, losses = d(loader[0])
    assert set(losses) == {"ce"}  # stage 2: CE only, as RepDistiller


class _SeqModel(torch.nn.Module):
    """A tiny sequence classifier with HF-style keyword inputs: token features at ``body``, masked mean, head."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, dim)
        self.body = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        h = torch.relu(self.body(self.embed(input_ids)))
        m = attention_mask[..., None].to(h.dtype)
        return {"logits": self.head((h * m).sum(1) / m.sum(1))}


@pytest.mark.parametrize("name", ["rkd", "pkt"])
def test_embedding_relations_apply_to_sequences_and_ignore_padding(name):
    from featdistill.tasks import build_task

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 11, (6, 7), generator=g)
    mask = torch.ones(6, 7, dtype=torch.long)
    mask[:, 5:] = 0
    batch = {"input": {"input_ids": ids * mask, "attention_mask": mask}, "target": torch.arange(6) % 3}
    batch["sample_id"] = torch.arange(6)
    method = build_method(name, student_path="body", teacher_path="body")
    d = Distiller(_SeqModel(4), method, _SeqModel(8), task=build_task("sequence-classification"))
    _, a = d(batch)
    # other ids at the padded positions change only padded token features: the relations must not move
    batch2 = {**batch, "input": {**batch["input"], "input_ids": batch["input"]["input_ids"].clone()}}
    batch2["input"]["input_ids"][:, 5:] = torch.randint(1, 11, (6, 2), generator=g)  # per sample: RKD sees differences
    _, b = d(batch2)
    terms = set(a) - {"ce"}
    assert terms and all(math.isclose(float(a[k].detach()), float(b[k].detach()), rel_tol=1e-6) for k in terms)
    sum(a.values()).backward()
    assert d.student.body.weight.grad is not None and d.student.body.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["sp", "nst", "ickd", "kdsvd", "fsp", "ab"])
def test_map_recipes_apply_to_segmentation(name):
    """``applies_to = image``: the map recipes take a dense task too (zoo ``segnet``, per-pixel CE)."""
    from featdistill.tasks import build_task

    torch.manual_seed(0)
    teacher = build_model("segnet", num_classes=4, image_size=16)
    student = build_model("segnet", num_classes=4, image_size=16)
    kw: dict = {}
    if name in ("fsp", "ab"):  # no default taps for segnet: the encoder stages
        kw = {"student_paths": student.stage_paths[:3], "teacher_paths": teacher.stage_paths[:3], "init_epochs": 0}
        kw["weights"] = {name: 1.0}
    d = Distiller(student, build_method(name, **kw), teacher, task=build_task("segmentation", num_classes=4))
    g = torch.Generator().manual_seed(1)
    batch = {"input": torch.randn(4, 3, 16, 16, generator=g), "target": torch.randint(0, 4, (4, 16, 16), generator=g)}
    _, losses = d(batch)
    assert set(losses) == {"ce", name} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.stage1.parameters())


def test_half_precision_inputs_compute_in_float32_and_teacher_inference_tensors_are_accepted():
    maps_s = [rand(3, 4, 4, 4, seed=i).bfloat16() for i in range(3)]
    with torch.inference_mode():  # what a LiveTeacher returns
        maps_t = [rand(3, 4, 4, 4, seed=10 + i).bfloat16() for i in range(3)]
    emb_s, emb_t = maps_s[0].flatten(1), maps_t[0].flatten(1)
    outs = [
        sp_loss(maps_s[0], maps_t[0]),
        cc_loss(emb_s, emb_t),
        cckd_loss(emb_s, emb_t),
        rkd_distance_loss(emb_s, emb_t),
        rkd_angle_loss(emb_s, emb_t),
        pkt_loss(emb_s, emb_t),
        nst_loss(maps_s[0], maps_t[0]),
        ickd_loss(maps_s[0], maps_t[0]),
        fsp_loss(maps_s, maps_t),
        kdsvd_loss(maps_s, maps_t),
        ab_loss(maps_s, maps_t),
    ]
    assert all(o.dtype == torch.float32 and torch.isfinite(o) for o in outs)


def test_init_stage_reads_a_teacher_source_like_the_live_model():
    """``fit`` takes the teacher source (e.g. a store) as well: the same taps by name give the same stage."""
    from featdistill.teacher import LiveTeacher

    loader = [_batch(seed=i) for i in range(2)]
    histories = []
    for as_source in (False, True):
        torch.manual_seed(0)
        teacher = build_model("resnet14", num_classes=10, image_size=16)
        student = build_model("resnet8", num_classes=10, image_size=16)
        method = build_method("fsp", init_epochs=2, init_device="cpu")
        Distiller(student, method, teacher)
        method.fit(LiveTeacher(teacher, method.teacher_taps()) if as_source else teacher, loader)
        histories.append(method.init_history)
    assert histories[0] == pytest.approx(histories[1], rel=1e-6)
