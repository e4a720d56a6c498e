"""NKD: the target-class term plus a normalised non-target distribution term."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featdistill.losses.logit_variants import nkd_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


@register_method
class NKD(Method):
    """ "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with Normalized Loss
    and Customized Soft Labels" (Yang et al., ICCV 2023) — Normalized KD.

    ``L = CE + w·(−t_y log s_y − γ·T²·Σ_{j≠y} t̂_j log ŝ_j)`` (:func:`~featdistill.losses.logit_variants.nkd_loss`;
    the target term at T = 1, the non-target softmax over the C − 1 other classes at T).  Defaults are the
    official CIFAR-100 config (``yzd-v/cls_KD`` ``res34_distill_res18_cifar.py``: T = 3, γ = 3.5, CE and NKD
    weight 1); its ImageNet configs use T = 1, γ = 1.5.  Acts per valid position on dense tasks.
    """

    name = "nkd"
    applies_to = frozenset({"class"})
    paper = "Normalized KD: From KD to Self-KD with Normalized Loss and Customized Soft Labels (Yang et al., ICCV 2023)"
    default_weights = {"nkd": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        temperature: float = 3.0,
        gamma: float = 3.5,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        self.temperature, self.gamma = temperature, gamma

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"logits": TapSpec("")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        z_s, z_t = self.standardized(student_feats["logits"], teacher_feats["logits"])
        return {"nkd": nkd_loss(z_s, z_t, batch["target"], temperature=self.temperature, gamma=self.gamma)}
