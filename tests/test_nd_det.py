"""ND/KD++'s detection part on DETR query embeddings: GT-ordered matched queries, the ND value, training."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from featdistill.distiller import Distiller
from featdistill.methods import build_method
from featdistill.methods.nd_det import matched_query_embeddings
from featdistill.models import build_model
from featdistill.models.detr_loss import hungarian_match
from test_clockdistill import ToyImageTask, _batch


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("detr_small", num_classes=3, image_size=32, num_queries=8).eval()


def test_matched_embeddings_follow_gt_order() -> None:
    model = _teacher()
    batch = _batch()
    out = model(batch["input"])
    e, y = matched_query_embeddings(
        out["query_embed"], out["logits"], out["boxes"], batch["boxes"], batch["labels"], (32, 32)
    )
    valid = batch["labels"] != -1
    assert e.shape == (int(valid.sum()), 128) and torch.equal(y, batch["labels"][valid])
    # image 1 has two objects: its rows are the queries matched to object 0 then object 1
    targets = model._targets(out, batch["boxes"], batch["labels"])
    qi, ti = hungarian_match(out["logits"], out["boxes"], targets)[1]
    first = int(valid[0].sum())
    assert torch.equal(e[first : first + 2], out["query_embed"][1, qi[ti.argsort()]])


def test_nd_value_at_identity_and_training_lowers_it() -> None:
    teacher = _teacher()
    batch = _batch()
    loader = [batch, _batch(4)]
    method = build_method("nd-det")
    d = Distiller(copy.deepcopy(teacher).eval(), method, teacher, ce_weight=0.0, task=ToyImageTask())
    d.prepare(batch)
    d.fit_data(loader, 3)
    assert method.class_means.shape == (3, 128)
    _, losses = d(batch)
    # student == teacher: ND = 1 − cos(e_t, c_y) per object (the max of equal norms is ‖e_t‖), × weight 2
    out = teacher(batch["input"])
    e, y = matched_query_embeddings(
        out["query_embed"], out["logits"], out["boxes"], batch["boxes"], batch["labels"], (32, 32)
    )
    hand = (1 - F.cosine_similarity(e, method.class_means[y], dim=1)).mean()
    assert torch.allclose(losses["nd"].detach(), 2 * hand, atol=1e-5)

    torch.manual_seed(1)
    student = build_model("detr_tiny", num_classes=3, image_size=32, num_queries=8)
    d = Distiller(
        student, build_method("nd-det", class_means=method.class_means), teacher, ce_weight=0.0, task=ToyImageTask()
    )
    d.prepare(batch)
    assert "emb" in d.method.adapters  # 64 → 128 projector
    opt = torch.optim.AdamW(list(d.trainable_parameters()), lr=5e-3)
    vals = []
    for _ in range(20):
        _, losses = d(batch)
        opt.zero_grad()
        losses["nd"].backward()
        opt.step()
        vals.append(float(losses["nd"].detach()))
    assert all(p.grad is None for p in teacher.parameters())
    assert vals[-1] < 0.7 * vals[0], vals
