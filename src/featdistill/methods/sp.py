"""SP: preserve the teacher's batch similarity structure (Similarity-Preserving KD)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.losses.similarity import sp_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


def last_stage(model: nn.Module, method: str) -> list[str]:
    """``[stage_paths[-1]]``: the last stage map (RepDistiller's ``feat[-2]``, mdistiller's ``feats[-1]``)."""
    stages = getattr(model, "stage_paths", None)
    if not stages:
        raise ValueError(
            f"{method}: {type(model).__name__} has no `stage_paths`; give the tap paths explicitly "
            "(featdistill inspect MODEL lists them)"
        )
    return [stages[-1]]


def paired(method: str, student: Sequence[str] | None, teacher: Sequence[str] | None) -> None:
    """Refuse unpaired path lists, naming both."""
    if not student or not teacher or len(student) != len(teacher):
        raise ValueError(
            f"{method}: pair the tap paths: student {list(student or [])}, teacher {list(teacher or [])} "
            "(give student_paths and teacher_paths of equal length)"
        )


@register_method
class SP(Method):
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

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_paths = self.student_paths or last_stage(student, self.name)
        if teacher is not None:
            self.teacher_paths = self.teacher_paths or last_stage(teacher, self.name)
        paired(self.name, self.student_paths, self.teacher_paths)

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"sp{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"sp{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        n = len(self.student_paths or [])
        terms = [sp_loss(student_feats[f"sp{i}"], teacher_feats[f"sp{i}"]) for i in range(n)]
        return {"sp": torch.stack(terms).sum()}
