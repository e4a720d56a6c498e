"""FitNets: regress a student feature map onto a teacher "hint" map through an adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featdistill.adapters import AdapterKind
from featdistill.losses.features import fitnet_loss
from featdistill.methods._util import valid_tokens
from featdistill.methods.base import Features, Method, middle_stage, register_method
from featdistill.taps import TapSpec


@register_method
class FitNet(Method):
    """ "FitNets: Hints for Thin Deep Nets" (Romero et al., ICLR 2015).

    ``L = CE + w·MSE(r(f_s), f_t)`` at the middle stage by default (mdistiller's hint layer 2, weight 100,
    one-stage training).  ``r`` is the auto-built adapter (1×1 conv + BN, or the stride/transposed conv
    FitNets' ConvReg picks when the spatial sizes differ by 2×).
    """

    name = "fitnet"
    applies_to = frozenset({"any"})
    paper = "FitNets: Hints for Thin Deep Nets (Romero et al., ICLR 2015)"
    default_weights = {"hint": 100.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_path: str | None = None,
        teacher_path: str | None = None,
        adapter: AdapterKind | None = "auto",
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_path, self.teacher_path, self.adapter = student_path, teacher_path, adapter

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or middle_stage(student)
        if teacher is not None:
            self.teacher_path = self.teacher_path or middle_stage(teacher)
        if self.teacher_path is None:
            raise ValueError("fitnet: give teacher_path when the teacher is not a live model")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"hint": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"hint": TapSpec(self.teacher_path or "")}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        self.add_adapter("hint", student_feats["hint"], teacher_feats["hint"], self.adapter)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        mask = batch.get("position_mask")  # sequence tasks: padding tokens are not hinted
        s = valid_tokens(self.adapters["hint"](student_feats["hint"]), mask)
        return {"hint": fitnet_loss(s, valid_tokens(teacher_feats["hint"], mask))}
