"""SP: preserve the teacher's batch similarity structure (Similarity-Preserving KD)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from featdistill.losses.similarity import sp_loss
from featdistill.methods._paired import PairedMaps
from featdistill.methods.base import Features, register_method


@register_method
class SP(PairedMaps):
    """ "Similarity-Preserving Knowledge Distillation" (Tung & Mori, ICCV 2019).

    ``L = CE + w·Σ_pairs ‖rownorm(F_t F_tᵀ) − rownorm(F_s F_sᵀ)‖_F² / B²`` (:func:`~featdistill.losses.similarity.
    sp_loss`) on the last stage maps by default — RepDistiller ``--distill similarity`` (``feat[-2]``, weight
    3000, CE 1, no KD term) and mdistiller ``SP.py`` (``feats[-1]``, FEAT_WEIGHT 3000). The B × B Grams compare
    any widths and spatial sizes, so there is no adapter. ``student_paths``/``teacher_paths`` give other (paired)
    maps; the terms are summed as RepDistiller's trainer does.
    """

    name = "sp"
    applies_to = frozenset({"image"})
    paper = "Similarity-Preserving Knowledge Distillation (Tung & Mori, ICCV 2019)"
    default_weights = {"sp": 3000.0}
    default_ce_weight = 1.0

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        terms = [sp_loss(s, t) for s, t in self.pairs(student_feats, teacher_feats)]
        return {"sp": torch.stack(terms).sum()}
