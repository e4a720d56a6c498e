"""Tf-KD_reg and LSR: teacher-free regularisers from "Revisiting KD via Label Smoothing Regularization"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featdistill.losses.logit_variants import lsr_loss, tfkd_loss
from featdistill.methods.base import Features, Method, register_method


@register_method
class TfKD(Method):
    """ "Revisiting Knowledge Distillation via Label Smoothing Regularization" (Yuan et al., CVPR 2020) —
    Tf-KD_reg, the manually designed teacher.

    No teacher network: the "teacher" is ``softmax(u/T)`` with ``u_y = a`` (0.99) and ``(1 − a)/(K − 1)``
    elsewhere, and ``L = (1 − α)·CE + α·multiplier·KLDivLoss_mean(log softmax(z_s), p^d)``
    (:func:`~featdistill.losses.logit_variants.tfkd_loss`).  Defaults are the reference's ResNet-18 CIFAR-100
    params (T = 20, α = 0.1, multiplier 100 → weights ``reg`` 0.1, CE 0.9); its ShuffleNetV2 params are T = 10,
    α = 0.95, multiplier 1.  Set the weights to ``α`` and ``1 − α`` (``ce_weight``).  The self-training variant
    Tf-KD_self is plain ``kd`` with a pre-trained copy of the student as teacher (its own config).
    """

    name = "tfkd"
    applies_to = frozenset({"class"})
    needs_teacher = False
    paper = "Revisiting Knowledge Distillation via Label Smoothing Regularization (Yuan et al., CVPR 2020): Tf-KD_reg"
    default_weights = {"reg": 0.1}
    default_ce_weight = 0.9

    def __init__(
        self,
        temperature: float = 20.0,
        correct_prob: float = 0.99,
        multiplier: float = 100.0,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.temperature, self.correct_prob, self.multiplier = temperature, correct_prob, multiplier

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        reg = tfkd_loss(student_feats["logits"], batch["target"], self.correct_prob, self.temperature, self.multiplier)
        return {"reg": reg}


@register_method
class LSR(Method):
    """Label smoothing regularisation as the Tf-KD code writes it (``loss_label_smoothing``): CE against
    ``1 − ε`` at the label and ``ε/(C − 1)`` at every other class, ε = 0.1, and **no** plain CE
    (``ce_weight = 0``).  The Distiller's ``label_smoothing`` option is PyTorch's ``ε/C`` variant instead.
    """

    name = "lsr"
    applies_to = frozenset({"class"})
    needs_teacher = False
    paper = "Revisiting Knowledge Distillation via Label Smoothing Regularization (Yuan et al., CVPR 2020): LSR"
    default_weights = {"lsr": 1.0}
    default_ce_weight = 0.0

    def __init__(self, smoothing: float = 0.1, weights: Mapping[str, Any] | None = None) -> None:
        super().__init__(weights)
        self.smoothing = smoothing

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        return {"lsr": lsr_loss(student_feats["logits"], batch["target"], self.smoothing)}
