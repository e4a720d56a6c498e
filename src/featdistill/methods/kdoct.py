"""KD-OCT: the large-to-small recipe (soft teacher targets + hard labels), and focal-loss teacher training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featdistill.losses.logits import cross_entropy, focal_loss, kd_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec

__all__ = ["KDOCT", "FocalOnly"]


@register_method
class KDOCT(Method):
    """ "KD-OCT: Efficient Knowledge Distillation for Clinical-Grade Retinal OCT Classification"
    (Nourbakhsh et al., 2025).

    A large teacher (ConvNeXtV2-Large, trained with focal loss, strong augmentation and SWA) is distilled
    online into a small student (EfficientNet-B2) with ``L = α·T²·KL(p_t^T ‖ p_s^T) + β·hard`` — α = 0.7,
    β = 0.3, T = 4 in the official student config (``Student-Training/NEH/config/config.py``).  The hard term is
    plain CE there; ``focal_gamma > 0`` swaps in the focal loss the teacher was trained with (class imbalance).
    The Distiller's own CE is off (``ce_weight = 0``): the hard term lives here so it can be focal.
    Train the teacher itself with the ``focal`` method.
    """

    name = "kdoct"
    paper = "KD-OCT: Efficient Knowledge Distillation for Clinical-Grade Retinal OCT Classification (2025)"
    default_weights = {"soft": 0.7, "hard": 0.3}
    default_ce_weight = 0.0

    def __init__(
        self,
        temperature: float = 4.0,
        focal_gamma: float = 0.0,
        focal_alpha: float | list[float] | None = None,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        self.temperature, self.focal_gamma, self.focal_alpha = temperature, focal_gamma, focal_alpha

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"logits": TapSpec("")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        z_s, y = student_feats["logits"], batch["target"]
        if self.focal_gamma > 0 or self.focal_alpha is not None:
            hard = focal_loss(z_s, y, gamma=self.focal_gamma, alpha=self.focal_alpha)
        else:
            hard = cross_entropy(z_s, y)
        soft = kd_loss(*self.standardized(z_s, teacher_feats["logits"]), self.temperature)  # hard term: raw logits
        return {"soft": soft, "hard": hard}


@register_method
class FocalOnly(Method):
    """Focal loss ``−α_y(1 − p_y)^γ log p_y`` alone (Lin et al., ICCV 2017): how KD-OCT trains its teacher.

    No teacher; the Distiller's CE is off (``ce_weight = 0``).  γ = 2 by default.
    """

    name = "focal"
    paper = "Focal Loss for Dense Object Detection (Lin et al., ICCV 2017) — KD-OCT teacher training"
    needs_teacher = False
    default_weights = {"focal": 1.0}
    default_ce_weight = 0.0

    def __init__(
        self, gamma: float = 2.0, alpha: float | list[float] | None = None, weights: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(weights)
        self.gamma, self.alpha = gamma, alpha

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        return {"focal": focal_loss(student_feats["logits"], batch["target"], gamma=self.gamma, alpha=self.alpha)}
