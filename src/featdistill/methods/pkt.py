"""PKT: match the teacher's cosine-kernel conditional probabilities over the batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featdistill.losses.similarity import pkt_loss
from featdistill.methods._util import pool_tokens
from featdistill.methods.base import Features, Method, register_method
from featdistill.methods.rkd import embedding
from featdistill.taps import TapSpec


@register_method
class PKT(Method):
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
        super().__init__(weights)
        self.student_path, self.teacher_path, self.eps = student_path, teacher_path, eps

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or embedding(student, self.name)
        if teacher is not None:
            self.teacher_path = self.teacher_path or embedding(teacher, self.name)
        if not self.teacher_path:
            raise ValueError("pkt: give teacher_path when the teacher is not a live model")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.teacher_path or "")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        mask = batch.get("position_mask")  # sequence tasks: each sample is its mean over non-padding tokens
        s, t = pool_tokens(student_feats["emb"], mask), pool_tokens(teacher_feats["emb"], mask)
        return {"pkt": pkt_loss(s, t, eps=self.eps)}
