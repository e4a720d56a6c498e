"""RKD: transfer the teacher's pairwise distances and triplet angles of the pooled embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featdistill.losses.similarity import rkd_angle_loss, rkd_distance_loss
from featdistill.methods._paired import EmbeddingPair
from featdistill.methods.base import Features, register_method


@register_method
class RKD(EmbeddingPair):
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
        super().__init__(student_path, teacher_path, weights)
        self.squared, self.eps = squared, eps

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        s, t = self.embeddings(student_feats, teacher_feats, batch)
        return {
            "distance": rkd_distance_loss(s, t, squared=self.squared, eps=self.eps),
            "angle": rkd_angle_loss(s, t),
        }
