"""AT: match normalised spatial attention maps at every stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.losses.features import at_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


@register_method
class AT(Method):
    """ "Paying More Attention to Attention" (Zagoruyko & Komodakis, ICLR 2017).

    ``L = CE + w·Σ_stages mean((Q(f_s) − Q(f_t))²)`` with ``Q(f) = normalize(flatten(mean_c |f|^p))``;
    p = 2, weight 1000 (mdistiller).  No adapter: attention maps are channel-free, and spatial sizes are
    bridged by pooling the larger map.
    """

    name = "at"
    applies_to = frozenset({"image"})
    paper = "Paying More Attention to Attention (Zagoruyko & Komodakis, ICLR 2017)"
    default_weights = {"at": 1000.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        p: float = 2.0,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None
        self.p = p

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_paths = self.student_paths or list(getattr(student, "stage_paths", []))
        if teacher is not None:
            self.teacher_paths = self.teacher_paths or list(getattr(teacher, "stage_paths", []))
        if not self.student_paths or not self.teacher_paths:
            raise ValueError("at: give student_paths and teacher_paths (the models have no stage_paths)")
        if len(self.student_paths) != len(self.teacher_paths):
            raise ValueError(
                f"at: {len(self.student_paths)} student stages {self.student_paths} vs "
                f"{len(self.teacher_paths)} teacher stages {self.teacher_paths}; give paired paths"
            )

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"at{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"at{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        n = len(self.student_paths or [])
        s = [student_feats[f"at{i}"] for i in range(n)]
        t = [teacher_feats[f"at{i}"] for i in range(n)]
        return {"at": at_loss(s, t, p=self.p)}
