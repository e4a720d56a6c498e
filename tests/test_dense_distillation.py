"""Dense-prediction distillation: CWD (channel-wise distillation)."""

from __future__ import annotations

import math

import pytest
import torch

from featdistill.losses.dense import cwd_loss


def _hand_cwd(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    """MMRazor's ChannelWiseDivergence written out with Python floats: per (n, c) a spatial softmax and a KL."""
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(c):
            a = [v / tau for v in s[i, j].flatten().tolist()]
            b = [v / tau for v in t[i, j].flatten().tolist()]
            za, zb = math.log(sum(math.exp(v) for v in a)), math.log(sum(math.exp(v) for v in b))
            total += sum(math.exp(y - zb) * ((y - zb) - (x - za)) for x, y in zip(a, b))
    return total * tau**2 / (n * c)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_equals_the_reference_by_hand_in_float64(tau):
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64),
    )
    got = cwd_loss(s, t, tau)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(_hand_cwd(s, t, tau), rel=1e-12)


def test_cwd_zero_at_identity_shift_invariant_per_channel_and_a_step_lowers_it():
    g = torch.Generator().manual_seed(1)
    s, t = (
        torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),
    )
    assert abs(cwd_loss(t.clone(), t).item()) < 1e-14
    shift = torch.randn(2, 3, 1, 1, generator=g, dtype=torch.float64)
    assert cwd_loss(s + shift, t - shift).item() == pytest.approx(cwd_loss(s, t).item(), rel=1e-12)
    # not invariant to a per-pixel change: the spatial distribution is what is matched
    assert abs(cwd_loss(s * 2, t).item() - cwd_loss(s, t).item()) > 1e-6
    z = s.clone().requires_grad_()
    loss = cwd_loss(z, t, 2.0)
    loss.backward()
    with torch.no_grad():
        assert cwd_loss(z - 0.1 * z.grad, t, 2.0).item() < loss.item()
    with pytest.raises(ValueError, match="one shape"):
        cwd_loss(s, t[:, :2])


def test_cwd_distils_a_segmenter_on_its_score_maps_and_on_adapted_features():
    from featdistill.data.segmentation import make_shapes_segmentation
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method
    from featdistill.models import build_model
    from featdistill.tasks import build_task

    images, masks = make_shapes_segmentation(n=4, size=16)
    batch = {"input": images.float() / 255.0 if not images.is_floating_point() else images, "target": masks.long()}
    torch.manual_seed(0)
    kw = dict(num_classes=4, in_channels=images.shape[1], image_size=16)
    teacher, student = build_model("segnet", width=16, **kw).eval(), build_model("segnet", width=8, **kw)
    task = build_task("segmentation")
    d = Distiller(student, build_method("cwd"), teacher, task=task)
    _, losses = d(batch)
    assert set(losses) == {"ce", "cwd"}
    with torch.no_grad():
        want = 3.0 * cwd_loss(student(batch["input"]), teacher(batch["input"]), 1.0)
    assert losses["cwd"].item() == pytest.approx(want.item(), rel=1e-5)
    sum(losses.values()).backward()
    # intermediate maps of different widths: an adapter bridges the channels
    paths = dict(student_path=student.embedding_path, teacher_path=teacher.embedding_path)
    d2 = Distiller(build_model("segnet", width=8, **kw), build_method("cwd", **paths), teacher, task=task)
    _, losses2 = d2(batch)
    assert torch.isfinite(losses2["cwd"]) and len(list(d2.method.parameters())) > 0
    with pytest.raises(ValueError, match="does not apply"):
        build_method("cwd").check_task(build_task("regression"))


def test_cwd_is_refused_on_image_classification_with_the_methods_that_can():
    from featdistill.methods import METHODS, build_method
    from featdistill.tasks import build_task

    assert METHODS["cwd"].supports(build_task("segmentation")) and METHODS["cwd"].supports(build_task("image-to-image"))
    with pytest.raises(ValueError, match="cwd"):
        build_method("cwd").check_task(build_task("classification"))


def _hand_pairwise(s: torch.Tensor, t: torch.Tensor) -> float:
    """SKD's pair-wise term on already-pooled maps, with Python floats: cosine similarity of every position pair."""
    b, _, h, w = s.shape
    m = h * w

    def sims(x: torch.Tensor, i: int) -> list[list[float]]:
        cols = [x[i, :, p // w, p % w].tolist() for p in range(m)]
        norms = [math.sqrt(sum(v * v for v in c)) + 1e-8 for c in cols]
        return [
            [sum(a * bb for a, bb in zip(cols[p], cols[q])) / (norms[p] * norms[q]) for q in range(m)] for p in range(m)
        ]

    total = 0.0
    for i in range(b):
        ss, tt = sims(s, i), sims(t, i)
        total += sum((tt[p][q] - ss[p][q]) ** 2 for p in range(m) for q in range(m))
    return total / (m * m) / b


def test_pairwise_equals_the_reference_by_hand_and_has_its_invariances():
    from featdistill.losses.dense import pairwise_loss

    g = torch.Generator().manual_seed(2)
    s, t = (
        torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64),
    )
    # scale 0.5 on 4×4: a 2×2 max-pool kernel → 2×2 positions
    pooled = torch.nn.functional.max_pool2d
    want = _hand_pairwise(pooled(s, 2, 2, ceil_mode=True), pooled(t, 2, 2, ceil_mode=True))
    got = pairwise_loss(s, t, 0.5)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want, rel=1e-10)
    assert abs(pairwise_loss(t, t).item()) < 1e-14  # zero at identity
    assert pairwise_loss(3.0 * s, t).item() == pytest.approx(got.item(), rel=1e-6)  # scale invariant up to the eps
    z = s.clone().requires_grad_()
    loss = pairwise_loss(z, t, 1.0 / 4)
    loss.backward()
    with torch.no_grad():
        assert pairwise_loss(z - 0.5 * z.grad, t, 1.0 / 4).item() < loss.item()
    with pytest.raises(ValueError, match="spatial size"):
        pairwise_loss(s, t[:, :, :2])


def test_pairwise_recipe_on_a_segmenter_matches_the_loss_of_its_feature_maps():
    from featdistill.data.segmentation import make_shapes_segmentation
    from featdistill.distiller import Distiller
    from featdistill.losses.dense import pairwise_loss
    from featdistill.methods import METHODS, build_method
    from featdistill.models import build_model
    from featdistill.taps import Taps
    from featdistill.tasks import build_task

    images, masks = make_shapes_segmentation(n=4, size=16)
    x = images.float() / 255.0 if not images.is_floating_point() else images
    batch = {"input": x, "target": masks.long()}
    torch.manual_seed(0)
    kw = dict(num_classes=4, in_channels=x.shape[1], image_size=16)
    teacher, student = build_model("segnet", width=16, **kw).eval(), build_model("segnet", width=8, **kw)
    d = Distiller(student, build_method("pairwise"), teacher, task=build_task("segmentation"))
    _, losses = d(batch)
    with (
        torch.no_grad(),
        Taps(student, {"f": student.embedding_path}) as ts,
        Taps(teacher, {"f": teacher.embedding_path}) as tt,
    ):
        want = pairwise_loss(ts(x)[1]["f"], tt(x)[1]["f"])
    assert losses["pairwise"].item() == pytest.approx(want.item(), rel=1e-5)
    assert not METHODS["pairwise"].supports(build_task("classification"))
