"""PKT: match the teacher's cosine-kernel conditional probabilities over the batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featdistill.losses.similarity import pkt_loss
from featdistill.methods._paired import EmbeddingPair
from featdistill.methods.base import Features, register_method


@register_method
class PKT(EmbeddingPair):
    """ "Learning Deep Representations with Probabilistic Knowledge Transfer" (Passalis & Tefas, ECCV 2018).

    ``L = CE + w·KL(P_t ‖ P_s)`` with the cosine-similarity kernel mapped to [0, 1] and row-normalised into
    conditional probabilities (:func:`~featdistill.losses.similarity.pkt_loss`, eps 1e-7), on the pooled
    embeddings — RepDistiller ``--distill pkt -b 30000`` and mdistiller ``CFG.PKT`` (FEAT_WEIGHT 30000, CE 1).
    No adapter (the kernel compares any widths). Any task: a feature is flattened per sample; a ``(B, L, D)``
    sequence feature is first averaged over its non-padding tokens (``position_mask``).
    """

    name = "pkt"
    paper = "Learning Deep Representations with Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018)"
    applies_to = frozenset({"any"})
    default_weights = {"pkt": 30000.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_path: str | None = None,
        teacher_path: str | None = None,
        eps: float = 1e-7,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(student_path, teacher_path, weights)
        self.eps = eps

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        s, t = self.embeddings(student_feats, teacher_feats, batch)
        return {"pkt": pkt_loss(s, t, eps=self.eps)}
