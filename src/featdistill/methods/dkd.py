"""DKD: KD split into target-class (TCKD) and non-target-class (NCKD) parts, re-weighted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featdistill.losses.logits import dkd_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


@register_method
class DKD(Method):
    """ "Decoupled Knowledge Distillation" (Zhao et al., CVPR 2022).

    ``L = CE + min(epoch/warmup, 1)·(α·TCKD + β·NCKD)``; defaults are mdistiller's CIFAR-100 ones
    (α = 1, β = 8, T = 4, 20 warm-up epochs; β = 2 for resnet56→resnet20, 6 for vgg13/wrn_40_2 pairs).
    """

    name = "dkd"
    applies_to = frozenset({"class"})
    paper = "Decoupled Knowledge Distillation (Zhao et al., CVPR 2022)"
    default_weights = {"dkd": {"value": 1.0, "warmup": 20}}
    default_ce_weight = 1.0

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"logits": TapSpec("")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        z_s, z_t = self.standardized(student_feats["logits"], teacher_feats["logits"])
        loss = dkd_loss(
            z_s,
            z_t,
            batch["target"],
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
        )
        return {"dkd": loss}
