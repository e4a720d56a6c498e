"""The student alone: cross-entropy only, the baseline every distillation result is compared with."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from featdistill.methods.base import Features, Method, register_method


@register_method
class StudentOnly(Method):
    """No teacher: train the student on labels (the Distiller adds the cross-entropy term)."""

    name = "none"
    applies_to = frozenset({"any"})
    paper = "baseline: the student trained alone"
    needs_teacher = False

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        return {}
