"""Distiller: named weighted losses, adapters from probing, partial live teacher, export without adapters."""

from __future__ import annotations

import pytest
import torch

from featdistill.adapters import ShapeMismatchError
from featdistill.distiller import Distiller
from featdistill.losses.logits import cross_entropy, kd_loss
from featdistill.methods import build_method
from featdistill.models import build_model
from featdistill.seeding import seeded


def _batch(n: int = 4, c: int = 3, s: int = 16, classes: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input": torch.randn(n, c, s, s, generator=g),
        "target": torch.randint(0, classes, (n,), generator=g),
        "sample_id": torch.arange(n),
        "view_id": torch.zeros(n, dtype=torch.long),
    }


def _models():
    with seeded(0):
        teacher = build_model("resnet14", num_classes=10, in_channels=3, image_size=16)
        student = build_model("resnet8", num_classes=10, in_channels=3, image_size=16)
    return teacher, student


def test_kd_losses_are_named_and_weighted_exactly():
    teacher, student = _models()
    d = Distiller(student, build_method("kd", temperature=4.0), teacher)
    batch = _batch()
    logits, losses = d(batch)
    assert set(losses) == {"ce", "kd"}
    teacher.eval()
    student.eval()  # compare in eval mode to avoid BN batch-stat differences
    d.eval()
    logits, losses = d(batch)
    with torch.no_grad():
        t = teacher(batch["input"])
    assert torch.allclose(losses["ce"], 0.1 * cross_entropy(logits, batch["target"]), atol=1e-6)
    assert torch.allclose(losses["kd"], 0.9 * kd_loss(logits, t, 4.0), atol=1e-6)


def test_teacher_gets_no_gradient_and_is_not_in_state_dict():
    teacher, student = _models()
    d = Distiller(student, build_method("kd"), teacher)
    _, losses = d(_batch())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert not any(k.startswith("teacher") for k in d.state_dict())
    n_train = sum(p.numel() for p in d.trainable_parameters())
    assert n_train == sum(p.numel() for p in student.parameters())  # KD adds no parameters


def test_fitnet_builds_adapter_and_runs_teacher_partially():
    teacher, student = _models()
    # widen the mismatch: resnet14 and resnet8 share widths, so use a wider teacher
    with seeded(1):
        teacher = build_model("resnet8x4", num_classes=10, in_channels=3, image_size=16)
    calls = []
    teacher.layer3.register_forward_hook(lambda *a: calls.append("layer3"))
    teacher.fc.register_forward_hook(lambda *a: calls.append("fc"))
    d = Distiller(student, build_method("fitnet"), teacher)
    d.prepare(_batch())
    assert "hint" in d.method.adapters
    n_adapter = sum(p.numel() for p in d.method.adapters.parameters())
    assert n_adapter > 0
    _, losses = d(_batch(), epoch=1.0)
    assert set(losses) == {"ce", "hint"}
    assert calls == []  # the teacher stopped after layer2
    assert d.export_student() is student


def test_fitnet_without_adapter_reports_shapes_and_fix():
    _, student = _models()
    with seeded(1):
        teacher = build_model("resnet8x4", num_classes=10, in_channels=3, image_size=16)
    d = Distiller(student, build_method("fitnet", adapter=None), teacher)
    with pytest.raises(ShapeMismatchError) as err:
        d.prepare(_batch())
    msg = str(err.value)
    assert "(4, 32, 8, 8)" in msg and "(4, 128, 8, 8)" in msg and "conv 32→128" in msg


def test_dkd_warmup_weight_follows_epoch():
    teacher, student = _models()
    d = Distiller(student, build_method("dkd"), teacher)
    d.eval()
    b = _batch()
    _, at0 = d(b, epoch=0.0)
    _, at10 = d(b, epoch=10.0)
    _, at40 = d(b, epoch=40.0)
    assert float(at0["dkd"].detach()) == 0.0
    assert torch.allclose(at10["dkd"] * 2, at40["dkd"])


def test_student_only_needs_no_teacher_and_method_needing_one_says_so():
    _, student = _models()
    d = Distiller(student)
    _, losses = d(_batch())
    assert set(losses) == {"ce"}
    with pytest.raises(ValueError, match="needs a teacher"):
        Distiller(student, build_method("kd"), None)


def test_at_uses_all_stages():
    teacher, student = _models()
    d = Distiller(student, build_method("at"), teacher)
    _, losses = d(_batch())
    assert set(losses) == {"ce", "at"} and float(losses["at"].detach()) > 0


def test_compose_sums_recipes_with_their_own_weights():
    teacher, student = _models()
    method = build_method(
        "compose",
        parts=[{"name": "kd", "params": {"temperature": 2.0}, "weights": {"kd": 0.5}}, {"name": "at"}],
    )
    d = Distiller(student, method, teacher, ce_weight=1.0)
    d.eval()
    b = _batch()
    logits, losses = d(b)
    assert set(losses) == {"ce", "kd", "at"}
    with torch.no_grad():
        t = teacher(b["input"])
    assert torch.allclose(losses["kd"], 0.5 * kd_loss(logits, t, 2.0), atol=1e-6)
    alone = Distiller(student, build_method("at"), teacher)
    alone.eval()
    assert torch.allclose(alone(b)[1]["at"], losses["at"], atol=1e-6)  # AT keeps its default weight 1000
    with pytest.raises(ValueError, match="unknown part"):
        build_method("compose", parts=[{"name": "nope"}])
