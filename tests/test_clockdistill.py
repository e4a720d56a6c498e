"""CLoCKDistill: GT location weights, shared target-aware queries, zero at identity, gradients to the student only.

Run through the Distiller with a minimal image task (the detection task is another helper's; these tests use the
padded-target batch keys of ``featdistill.models.detection_api``)."""

from __future__ import annotations

import copy

import pytest
import torch

from featdistill.distiller import Distiller
from featdistill.methods import build_method
from featdistill.methods.clockdistill import location_weights, target_queries
from featdistill.models import build_model
from featdistill.tasks.base import Task
from test_detr import toy_batch


class ToyImageTask(Task):
    """Just enough task for the Distiller: image inputs, no task loss (``ce_weight=0``)."""

    name = "toy-detection"
    family = "output"
    modality = "image"


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    x, boxes, labels = toy_batch(n)
    return {"input": x, "boxes": boxes, "labels": labels, "sample_id": torch.arange(n), "view_id": torch.zeros(n)}


def _pair(same: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = build_model("detr_small", num_classes=3, image_size=32, num_queries=8)
    if same:
        return copy.deepcopy(teacher).eval(), teacher  # eval: BatchNorm on running statistics, like the teacher
    student = build_model("detr_tiny", num_classes=3, image_size=32, num_queries=8)
    torch.nn.init.normal_(teacher.bbox_embed[-1].weight, std=0.1)  # a teacher whose boxes move off the anchors
    return student, teacher


def _distiller(student: torch.nn.Module, teacher: torch.nn.Module, **kw) -> Distiller:
    return Distiller(student, build_method("clockdistill", **kw), teacher, ce_weight=0.0, task=ToyImageTask())


def test_location_weights_hand_case() -> None:
    # 8×8 image, 4×4 grid (stride 2): a box over pixels [0, 4)×[0, 2) covers cells x 0..1, y 0 → 2 cells
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 2.0], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, -1]])
    fg, bg = location_weights(boxes, labels, (8, 8), (4, 4))
    assert fg[0, 0, :2].tolist() == [0.5, 0.5] and fg.sum() == 1.0
    assert torch.allclose(bg.sum(), torch.tensor(1.0)) and bg[0, 0, 0] == 0 and bg[0, 3, 3] == pytest.approx(1 / 14)
    # overlapping boxes: the smaller one's weight wins where they overlap
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 2.0, 2.0]]])
    fg, _ = location_weights(boxes, torch.tensor([[0, 1]]), (8, 8), (4, 4))
    assert fg[0, 0, 0] == 1.0 and fg[0, 3, 3] == 1 / 16


def test_target_queries_shared_by_both_decoders() -> None:
    student, teacher = _pair()
    d = _distiller(student, teacher)
    batch = _batch()
    seen: dict[str, list] = {"s": [], "t": []}

    def grab(key: str):
        def hook(module, args, kwargs):
            seen[key].append((kwargs.get("extra_queries"), args[0]))

        return hook

    def grab_decoder(key: str):
        def hook(module, args):
            seen[key].append(args[0])  # the decoder's anchors: the model's own, then the target-aware queries

        return hook

    handles = [
        student.register_forward_pre_hook(grab("s"), with_kwargs=True),
        teacher.register_forward_pre_hook(grab("t"), with_kwargs=True),
        student.decoder.register_forward_pre_hook(grab_decoder("s")),
        teacher.decoder.register_forward_pre_hook(grab_decoder("t")),
    ]
    d.prepare(batch)
    seen = {"s": [], "t": []}
    _, losses = d(batch)
    for h in handles:
        h.remove()
    (s_kw, _), s_anchors = seen["s"]
    (t_kw, _), t_anchors = seen["t"]
    assert s_kw is t_kw  # one tensor, fed to both models
    expected, valid = target_queries(batch["boxes"], batch["labels"], (32, 32))
    assert torch.equal(s_kw, expected)
    assert torch.equal(s_anchors[:, 8:], t_anchors[:, 8:]) and torch.equal(t_anchors[:, 8:], expected)
    assert set(losses) == {"memory", "query_cls", "query_l1", "query_giou"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses


def test_zero_when_student_is_teacher_and_gradient_to_student_only() -> None:
    student, teacher = _pair(same=True)
    d = _distiller(student, teacher)
    batch = _batch()
    d.prepare(batch)
    _, losses = d(batch)
    for name, v in losses.items():
        assert abs(float(v.detach())) < 1e-5, (name, float(v.detach()))
    student2, teacher2 = _pair()
    d2 = _distiller(student2, teacher2)
    d2.prepare(batch)
    _, losses = d2(batch)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher2.parameters())
    assert student2.encoder.layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0
    assert student2.decoder.ref_point_head[0].weight.grad.abs().sum() > 0  # reached through the target queries
    assert d2.method.adapters["memory"] is not None  # 64 → 128 channels bridged


def test_distillation_pulls_student_to_teacher_at_target_queries() -> None:
    student, teacher = _pair()
    d = _distiller(student, teacher)
    batch = _batch()
    d.prepare(batch)
    opt = torch.optim.AdamW(list(d.trainable_parameters()), lr=2e-3)
    history = []
    for _ in range(15):
        _, losses = d(batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    assert history[-1]["memory"] < 0.5 * history[0]["memory"]
    assert history[-1]["query_cls"] < history[0]["query_cls"]
    assert history[-1]["query_l1"] + history[-1]["query_giou"] < history[0]["query_l1"] + history[0]["query_giou"]


def test_refuses_batch_without_boxes_and_store_teacher() -> None:
    student, teacher = _pair()
    d = _distiller(student, teacher)
    batch = _batch()
    d.prepare(batch)
    with pytest.raises(ValueError, match="ground-truth boxes"):
        d({"input": batch["input"]})
    from featdistill.tasks import build_task

    with pytest.raises(ValueError, match="does not apply"):
        Distiller(student, build_method("clockdistill"), teacher, task=build_task("classification"))
    with pytest.raises(ValueError, match="not a DETR"):
        _distiller(build_model("convnet", num_classes=3, image_size=32), teacher)


def test_teacher_store_cannot_take_the_extra_queries() -> None:
    student, teacher = _pair()
    batch = _batch()
    live = _distiller(student, teacher)
    live.prepare(batch)
    feats = live.teacher(batch)

    class Replay:  # a teacher source replaying recorded outputs, as a store does
        tap_names = set(feats)

        def __call__(self, b):
            return feats

    d = Distiller(student, build_method("clockdistill"), Replay(), ce_weight=0.0, task=ToyImageTask())
    d.prepare(batch)
    with pytest.raises(ValueError, match="cannot replay"):
        d(batch)
