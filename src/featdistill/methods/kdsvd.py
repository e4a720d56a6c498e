"""KDSVD: transfer RBF relations between the dominant singular vectors of consecutive stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.losses.similarity import kdsvd_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.methods.nst import stages
from featdistill.methods.sp import paired
from featdistill.taps import TapSpec


@register_method
class KDSVD(Method):
    """ "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (Lee, Kim, Song; ECCV 2018).

    ``L = CE + w·kdsvd_loss(stages_s, stages_t, k)`` (:func:`~featdistill.losses.similarity.kdsvd_loss`: right
    singular vectors of each ``(H·W, C)`` stage map, sign-aligned to the teacher's, RBF over channel pairs of
    consecutive stages) on the stage maps — RepDistiller ``KDSVD`` (``feat[1:-1]``, k = 1) with mdistiller's
    ``CFG.KDSVD`` weights (FEAT_WEIGHT 1, CE 1; RepDistiller's script gives no ``-b`` for it). No adapter: channel
    counts must agree stage by stage, as in the reference.
    """

    name = "kdsvd"
    applies_to = frozenset({"image"})
    paper = "Self-supervised Knowledge Distillation Using Singular Value Decomposition (Lee et al., ECCV 2018)"
    default_weights = {"kdsvd": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        k: int = 1,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None
        self.k = k

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_paths = self.student_paths or stages(student, self.name)
        if teacher is not None:
            self.teacher_paths = self.teacher_paths or stages(teacher, self.name)
        paired(self.name, self.student_paths, self.teacher_paths)
        if len(self.student_paths or []) < 2:
            raise ValueError(
                f"kdsvd: needs at least two stages (relations between consecutive stages), got {self.student_paths}"
            )

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"svd{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"svd{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        n = len(self.student_paths or [])
        s = [int(student_feats[f"svd{i}"].shape[1]) for i in range(n)]
        t = [int(teacher_feats[f"svd{i}"].shape[1]) for i in range(n)]
        if s != t:
            raise ValueError(
                f"kdsvd: the student stages {self.student_paths} have channels {s}, the teacher stages "
                f"{self.teacher_paths} have {t}; KDSVD aligns singular vectors channel by channel, so widths must "
                "agree (as in RepDistiller)"
            )

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        n = len(self.student_paths or [])
        s = [student_feats[f"svd{i}"] for i in range(n)]
        t = [teacher_feats[f"svd{i}"] for i in range(n)]
        return {"kdsvd": kdsvd_loss(s, t, k=self.k)}
