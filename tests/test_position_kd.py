"""The one-pass-backward KD functions (``losses.position_kd``) equal autograd through the plain formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from featdistill.losses.logits import kd_loss
from featdistill.losses.position_kd import kd_loss_rows, kd_loss_topk


def _reference(z: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T²·mean_rows Σ_c p (log p − log s)``, written out by hand (not through kd_loss)."""
    log_s = z / temperature - torch.logsumexp(z / temperature, dim=1, keepdim=True)
    log_p = t / temperature - torch.logsumexp(t / temperature, dim=1, keepdim=True)
    p = log_p.exp()
    return temperature**2 * (p * (log_p - log_s)).sum(1).mean()


@pytest.mark.parametrize("classes", [2, 5, 16, 17, 300])  # both sides of the class-major switch (16)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_rows_value_and_gradient_equal_the_formula_in_float64(classes, temperature):
    g = torch.Generator().manual_seed(classes)
    z = torch.randn(257, classes, generator=g, dtype=torch.float64, requires_grad=True)
    t = 3 * torch.randn(257, classes, generator=g, dtype=torch.float64)
    got = kd_loss_rows(z, t, temperature)
    (g_got,) = torch.autograd.grad(got, z)
    want = _reference(z, t, temperature)
    (g_want,) = torch.autograd.grad(want, z)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-14)
    assert torch.allclose(g_got, g_want, rtol=0, atol=1e-14)
    # the closed form the backward writes: (T/N)(softmax(z/T) − softmax(t/T))
    closed = temperature / 257 * (F.softmax(z / temperature, 1) - F.softmax(t / temperature, 1))
    assert torch.allclose(g_got, closed, rtol=0, atol=1e-14)
    # and kd_loss (autograd through kl_div) gives the same number
    assert got.item() == pytest.approx(kd_loss(z, t, temperature).item(), rel=1e-12)


def test_rows_are_zero_at_the_teacher_and_handle_zero_teacher_probabilities():
    z = torch.randn(64, 4, dtype=torch.float64, requires_grad=True)
    loss = kd_loss_rows(z, z.detach().clone(), 2.0)
    (grad,) = torch.autograd.grad(loss, z)
    assert abs(loss.item()) < 1e-14 and grad.abs().max().item() < 1e-15
    # log-probabilities with −inf (probability exactly 0) are a valid teacher: finite loss and gradient
    t = torch.log_softmax(torch.randn(64, 4, dtype=torch.float64), 1)
    t[:, 0] = float("-inf")
    z2 = torch.randn(64, 4, dtype=torch.float64, requires_grad=True)
    loss = kd_loss_rows(z2, t, 1.0)
    (grad,) = torch.autograd.grad(loss, z2)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
    assert loss.item() == pytest.approx(kd_loss(z2, t, 1.0).item(), rel=1e-12)


def test_rows_half_input_computes_in_float32_and_returns_its_dtype_gradient():
    z = torch.randn(32, 3).to(torch.bfloat16).requires_grad_()
    t = torch.randn(32, 3)
    loss = kd_loss_rows(z, t, 4.0)
    loss.backward()
    assert loss.dtype == torch.float32 and z.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(kd_loss(z.float(), t, 4.0).item(), rel=1e-5)


def test_rows_refuse_mismatched_shapes_and_bad_temperature():
    with pytest.raises(ValueError, match="one shape"):
        kd_loss_rows(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss_rows(torch.zeros(4, 3), torch.zeros(4, 3), 0.0)


def _topk_record(t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(t, 1)
    vals, idx = logp.topk(k, dim=1)
    rest = torch.logsumexp(logp.scatter(1, idx, float("-inf")), dim=1)
    return vals, idx, rest


def _dense_from_record(vals, idx, rest, classes):
    """The teacher distribution the record stands for: top-k kept, the rest spread uniformly (by hand)."""
    n, k = vals.shape
    tail = (rest - math.log(classes - k)) if classes > k else torch.full_like(rest, float("-inf"))
    return tail[:, None].expand(n, classes).clone().scatter(1, idx, vals)


@pytest.mark.parametrize(("classes", "k", "temperature"), [(50, 8, 1.0), (50, 8, 2.0), (9, 9, 4.0), (300, 32, 1.0)])
def test_topk_value_and_gradient_equal_the_dense_formula(classes, k, temperature):
    g = torch.Generator().manual_seed(k)
    z = torch.randn(40, classes, generator=g, dtype=torch.float64, requires_grad=True)
    vals, idx, rest = _topk_record(2 * torch.randn(40, classes, generator=g, dtype=torch.float64), k)
    got = kd_loss_topk(z, vals, idx, rest, temperature)
    (g_got,) = torch.autograd.grad(got, z)
    dense = _dense_from_record(vals, idx, rest, classes)
    want = _reference(z, dense, temperature)
    (g_want,) = torch.autograd.grad(want, z)
    assert got.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(g_got, g_want, rtol=0, atol=1e-13)


def test_topk_does_not_modify_the_student_logits_and_handles_an_empty_tail():
    z = torch.randn(10, 20, requires_grad=True)
    before = z.detach().clone()
    vals, idx, rest = _topk_record(torch.randn(10, 20), 5)
    rest = torch.full_like(rest, float("-inf"))  # all mass in the top-k
    loss = kd_loss_topk(z, vals - torch.logsumexp(vals, 1, keepdim=True), idx, rest, 1.0)
    loss.backward()
    assert torch.equal(z.detach(), before) and torch.isfinite(z.grad).all() and math.isfinite(loss.item())


def test_fused_ce_and_kd_equal_the_separate_terms_and_their_gradients():
    from featdistill.losses.position_kd import ce_and_kd_topk

    g = torch.Generator().manual_seed(5)
    z = torch.randn(30, 40, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 40, (30,), generator=g)
    vals, idx, rest = _topk_record(2 * torch.randn(30, 40, generator=g, dtype=torch.float64), 6)
    ce, kd = ce_and_kd_topk(z, y, vals, idx, rest)
    (g_fused,) = torch.autograd.grad(0.3 * ce + 0.7 * kd, z)
    ce_ref = F.cross_entropy(z, y)
    kd_ref = kd_loss_topk(z, vals, idx, rest, 1.0)
    (g_ref,) = torch.autograd.grad(0.3 * ce_ref + 0.7 * kd_ref, z)
    assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-12) and kd.item() == pytest.approx(kd_ref.item(), rel=1e-10)
    assert torch.allclose(g_fused, g_ref, rtol=0, atol=1e-14)
    # one output unused (its gradient None): the other's gradient alone
    (g_ce_only,) = torch.autograd.grad(ce_and_kd_topk(z, y, vals, idx, rest)[0], z)
    (g_ce_ref,) = torch.autograd.grad(F.cross_entropy(z, y), z)
    assert torch.allclose(g_ce_only, g_ce_ref, rtol=0, atol=1e-14)


def test_the_distiller_fuses_ce_with_kd_from_a_topk_store_at_t1_with_the_same_step(tmp_path):
    """Causal LM from a top-k store at T = 1: the fused term gives the separate terms' values and gradients."""
    transformers = pytest.importorskip("transformers")
    from featdistill.cache import CachedTeacher, TeacherStore, build_store, store_loader
    from featdistill.data import Augmenter, ViewConfig
    from featdistill.data.arrays import ArrayDataset
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method
    from featdistill.tasks import build_task

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 20, (16, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 5:] = 0  # padded rows: the fused CE must skip them exactly like the task loss
    ids = ids * mask
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    ds = ArrayDataset({"input_ids": ids, "attention_mask": mask}, labels, "tokens", target_kind="tokens")
    task = build_task("causal-lm")
    torch.manual_seed(0)
    teacher = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=20, n_embd=16, n_layer=1, n_head=2))
    build_store(teacher, ds, Augmenter(ViewConfig(), 0), 1, tmp_path / "s", task=task, topk=4, taps={}, dtype="float32")
    store = TeacherStore.open(tmp_path / "s")
    batch = next(iter(store_loader(store, ds, batch_size=8, policy="cycle", shuffle=False)))

    def run(fuse: bool):
        torch.manual_seed(1)
        cfg = transformers.GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0)
        method = build_method("kd", temperature=1.0)
        if not fuse:
            method.fuses_task_loss = lambda feats: False  # the separate CE + sparse KD path
        d = Distiller(transformers.GPT2LMHeadModel(cfg), method, CachedTeacher(store), task=task, ce_weight=0.5)
        _, losses = d(batch)
        sum(losses.values()).backward()
        return losses, [p.grad.clone() for p in d.student.parameters()]

    fused, g_fused = run(True)
    plain, g_plain = run(False)
    assert list(fused) == list(plain) == ["ce", "kd"]
    for k in fused:
        assert fused[k].item() == pytest.approx(plain[k].item(), rel=1e-5, abs=1e-7)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_fused, g_plain))
