"""RKD: transfer the teacher's pairwise distances and triplet angles of the pooled embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featdistill.losses.similarity import rkd_angle_loss, rkd_distance_loss
from featdistill.methods._util import pool_tokens
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


def embedding(model: nn.Module, method: str) -> str:
    """The model's pooled penultimate embedding path (RepDistiller's ``feat[-1]``, mdistiller's ``pooled_feat``)."""
    path = getattr(model, "embedding_path", None)
    if not path:
        raise ValueError(
            f"{method}: {type(model).__name__} declares no `embedding_path`; give student_path / teacher_path "
            "(featdistill inspect MODEL lists the module paths)"
        )
    return path


@register_method
class RKD(Method):
    """ "Relational Knowledge Distillation" (Park, Kim, Lu, Cho; CVPR 2019): distance + angle.

    ``L = CE + w_d·smooth_l1(ψ_D(e_s), ψ_D(e_t)) + w_a·smooth_l1(ψ_A(e_s), ψ_A(e_t))`` on the pooled embeddings
    (:func:`~featdistill.losses.similarity.rkd_distance_loss`, :func:`~featdistill.losses.similarity.rkd_angle_loss`).
    w_d = 25, w_a = 50 are RepDistiller's ``RKDLoss`` / mdistiller's ``CFG.RKD`` defaults, applied with ``-b 1``
    (FEAT_WEIGHT 1) and CE 1; here they are the two named terms' weights, so ``distance``/``angle`` are logged
    apart. No adapter: both relations compare any widths. ``squared``/``eps``: mdistiller's ``PDIST`` options.
    Any task: a feature is flattened per sample; a ``(B, L, D)`` sequence feature is first averaged over its
    non-padding tokens (``position_mask``).
    """

    name = "rkd"
    paper = "Relational Knowledge Distillation (Park et al., CVPR 2019)"
    applies_to = frozenset({"any"})
    default_weights = {"distance": 25.0, "angle": 50.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_path: str | None = None,
        teacher_path: str | None = None,
        squared: bool = False,
        eps: float = 1e-12,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_path, self.teacher_path = student_path, teacher_path
        self.squared, self.eps = squared, eps

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or embedding(student, self.name)
        if teacher is not None:
            self.teacher_path = self.teacher_path or embedding(teacher, self.name)
        if not self.teacher_path:
            raise ValueError("rkd: give teacher_path when the teacher is not a live model")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.teacher_path or "")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        mask = batch.get("position_mask")  # sequence tasks: each sample is its mean over non-padding tokens
        s, t = pool_tokens(student_feats["emb"], mask), pool_tokens(teacher_feats["emb"], mask)
        return {
            "distance": rkd_distance_loss(s, t, squared=self.squared, eps=self.eps),
            "angle": rkd_angle_loss(s, t),
        }
