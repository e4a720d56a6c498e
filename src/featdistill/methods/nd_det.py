"""ND/KD++'s detection part on DETR query embeddings: the norm-and-direction loss on the decoder outputs of the
queries matched to ground-truth objects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from featdistill.losses.features import class_means as _class_means
from featdistill.losses.features import nd_loss
from featdistill.methods._util import model_device
from featdistill.methods.base import Features, Method, register_method
from featdistill.methods.clockdistill import ground_truth
from featdistill.methods.nd import NDProjector
from featdistill.models.detection_api import PAD_LABEL
from featdistill.models.detr import pixel_boxes_to_anchors
from featdistill.models.detr_loss import hungarian_match
from featdistill.taps import TapSpec

__all__ = ["NDDet", "matched_query_embeddings", "fit_query_class_means"]


def matched_query_embeddings(
    emb: Tensor, logits: Tensor, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The embeddings of the queries a DETR's Hungarian matching assigns to the GT objects, **in GT order**:
    ``(N, D)`` for the ``N`` real objects of the batch (image by image, row order of the padded targets) and their
    labels ``(N,)``. Matching uses the model's own (detached) predictions, DETR's costs 1 / 5 / 2."""
    targets = []
    for bx, lab in zip(gt_boxes, gt_labels):
        keep = lab != PAD_LABEL
        targets.append((lab[keep], pixel_boxes_to_anchors(bx[keep].float(), image_size)))
    matches = hungarian_match(logits.detach(), boxes.detach(), targets)
    rows, labs = [], []
    for b, ((lab, _), (qi, ti)) in enumerate(zip(targets, matches)):
        order = ti.argsort()  # GT order, so the teacher's and the student's rows pair object by object
        rows.append(emb[b, qi[order]])
        labs.append(lab[ti[order]])
    return torch.cat(rows), torch.cat(labs)


@torch.no_grad()
def fit_query_class_means(
    teacher: nn.Module, loader: Iterable[Mapping[str, Any]], num_classes: int, max_batches: int | None = None
) -> Tensor:
    """The teacher's class means ``(K, D)`` of its matched query embeddings over ``loader`` (ND's class centres,
    computed once before training; eval mode, no gradient)."""
    was_training = teacher.training
    teacher.eval()
    device = model_device(teacher)
    embs, labs = [], []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = batch["input"].to(device)
        boxes, labels = ground_truth(batch)
        out = teacher(x)
        e, y = matched_query_embeddings(
            out["query_embed"], out["logits"], out["boxes"], boxes.to(device), labels.to(device), tuple(x.shape[-2:])
        )
        embs.append(e.float().cpu())
        labs.append(y.cpu())
    teacher.train(was_training)
    return _class_means(torch.cat(embs), torch.cat(labs), num_classes)


@register_method
class NDDet(Method):
    """ND (KD++, "Improving Knowledge Distillation via Regularizing Feature Norm and Direction", Wang et al., ECCV
    2024), detection part, for DETRs: the paper applies ND to the RoI embeddings of a two-stage detector; here the
    per-object embedding is the **decoder output of the query matched to the GT object** (``query_embed``).

    For every real GT object ``j`` of class ``y``: ``e_s`` = the student's query matched to ``j`` by the student's
    Hungarian matching, ``e_t`` = the teacher's query matched to ``j`` by the teacher's, and
    ``nd = 1 − ⟨e_s, c_y/‖c_y‖⟩ / max(‖e_s‖, ‖e_t‖)`` (:func:`~featdistill.losses.features.nd_loss`) averaged over
    objects, ``c_y`` the teacher's class mean of matched query embeddings (:meth:`fit`, once, over the training
    loader). Weight 2 (KD++'s default); KD++'s logit KD term is not added (DETR's logits are per query — use
    ``clockdistill`` or compose a logit recipe). Widths differ → ND's ``BN → Dropout → Linear`` projector.
    """

    name = "nd-det"
    paper = "Improving Knowledge Distillation via Regularizing Feature Norm and Direction (Wang et al., ECCV 2024)"
    default_weights = {"nd": 2.0}
    default_ce_weight = 1.0

    def __init__(
        self, class_means: Tensor | None = None, dropout: float = 0.5, weights: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(weights)
        self.dropout = dropout
        self.register_buffer("class_means", None if class_means is None else torch.as_tensor(class_means).float())

    @classmethod
    def supports(cls, task: Any) -> bool:
        task_cls = task if isinstance(task, type) else type(task)
        return task_cls.modality == "image" and "detection" in task_cls.name

    def _taps(self) -> dict[str, TapSpec]:
        return {
            "emb": TapSpec("", select="query_embed"),
            "q_logits": TapSpec("", select="logits"),
            "q_boxes": TapSpec("", select="boxes"),
        }

    def student_taps(self) -> dict[str, TapSpec]:
        return self._taps()

    def teacher_taps(self) -> dict[str, TapSpec]:
        return self._taps()

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        d_s, d_t = student_feats["emb"].shape[-1], teacher_feats["emb"].shape[-1]
        if d_s != d_t:
            self.adapters["emb"] = NDProjector(d_s, d_t, self.dropout).to(student_feats["emb"].device)

    def fit(self, teacher: Any, loader: Iterable[Mapping[str, Any]], num_classes: int | None = None) -> None:
        if not isinstance(teacher, nn.Module):
            raise ValueError("nd-det: the class means need the live teacher (a DETR), not a teacher store")
        k = num_classes if num_classes is not None else int(teacher.num_classes)
        self.class_means = fit_query_class_means(teacher, loader, k)

    def forward(  # type: ignore[override]
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, Any], epoch: float
    ) -> dict[str, Tensor]:
        if self.class_means is None:
            raise RuntimeError("nd-det: the teacher's class means are not set; call method.fit(teacher, loader)")
        boxes, labels = ground_truth(batch)
        x = batch["input"]
        size = tuple(x.shape[-2:])
        boxes, labels = boxes.to(x.device), labels.to(x.device)
        s = student_feats
        e_s, y = matched_query_embeddings(s["emb"], s["q_logits"], s["q_boxes"], boxes, labels, size)
        t = teacher_feats
        e_t, _ = matched_query_embeddings(t["emb"], t["q_logits"], t["q_boxes"], boxes, labels, size)
        if y.numel() == 0:
            return {"nd": s["emb"].sum() * 0.0}
        if "emb" in self.adapters:
            e_s = self.adapters["emb"](e_s)
        return {"nd": nd_loss(e_s, e_t, self.class_means.to(e_s.device), y)}
