"""DIST: match inter-class and intra-class Pearson relations of the predictions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featdistill.losses.logits import dist_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


@register_method
class DIST(Method):
    """ "Knowledge Distillation from A Stronger Teacher" (Huang et al., NeurIPS 2022).

    Relations instead of exact probabilities: ``β·(1 − ρ_inter) + γ·(1 − ρ_intra)``.  The official
    classification loss uses T = 1 (the default here).
    """

    name = "dist"
    applies_to = frozenset({"class"})
    paper = "Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022)"
    default_weights = {"dist": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"logits": TapSpec("")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        s, t = self.standardized(student_feats["logits"], teacher_feats["logits"])
        return {"dist": dist_loss(s, t, beta=self.beta, gamma=self.gamma, temperature=self.temperature)}
