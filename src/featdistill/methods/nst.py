"""NST: match the distributions of channel activation patterns with a polynomial-kernel MMD."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from featdistill.losses.similarity import nst_loss
from featdistill.methods._paired import PairedMaps, stages
from featdistill.methods.base import Features, register_method


@register_method
class NST(PairedMaps):
    """ "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (Huang & Wang, 2017).

    ``L = CE + w·Σ_stages MMD²_poly(f_s, f_t)`` (:func:`~featdistill.losses.similarity.nst_loss`: channel maps
    L2-normalised over space, polynomial kernel ``(xᵀy)²``, the larger map pooled to the smaller) on every stage —
    RepDistiller ``--distill nst -b 50`` (``feat[1:-1]``) and mdistiller ``CFG.NST`` (FEAT_WEIGHT 50, CE 1). No
    adapter: channel counts may differ.
    """

    name = "nst"
    applies_to = frozenset({"image"})
    paper = "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (Huang & Wang, 2017)"
    default_weights = {"nst": 50.0}
    default_ce_weight = 1.0

    def default_paths(self, model: nn.Module) -> list[str]:
        return stages(model, self.name)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        terms = [nst_loss(s, t) for s, t in self.pairs(student_feats, teacher_feats)]
        return {"nst": torch.stack(terms).sum()}
