"""PAD: embedding regression weighted per sample and dimension by a learned variance (prime-aware samples)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featdistill.losses.logit_variants import pad_l2_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


class VarianceBranch(nn.Sequential):
    """torchdistill's ``VarianceBranch4PAD`` estimator: ``Linear(D, D) → BatchNorm1d(D)``, output ``log σ²``."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, dim), nn.BatchNorm1d(dim))


@register_method
class PAD(Method):
    """ "Prime-Aware Adaptive Distillation" (Zhang et al., ECCV 2020) — PAD-L2, as torchdistill codes it
    (``PADL2Loss``, ``VarianceBranch4PAD``, ``configs/official/ilsvrc2012/.../pad_l2-resnet18_from_resnet34.yaml``).

    ``L = CE + w·mean_n mean_d [(e_t − e_s)²/(1e-6 + exp(v)) + v]`` with ``v = VarianceBranch(e_s)`` on the student's
    pooled embedding (:func:`~featdistill.losses.logit_variants.pad_l2_loss`); CE and PAD weight 1.  The branch is
    an adapter (trained with the student, dropped at export); a student embedding of another width first goes
    through a linear adapter to the teacher's.  torchdistill runs PAD as the **second stage** of a two-stage recipe:
    stage 1 trains the student with CE + L2 on the embeddings (``ce_l2``), stage 2 starts from that checkpoint with
    PAD for 30 epochs at lr 0.002 (ImageNet) — here two runs, the second with ``student.checkpoint`` set.
    """

    name = "pad"
    paper = "Prime-Aware Adaptive Distillation (Zhang et al., ECCV 2020): PAD-L2"
    default_weights = {"pad": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        eps: float = 1e-6,
        student_path: str | None = None,
        teacher_path: str | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.eps = eps
        self.student_path, self.teacher_path = student_path, teacher_path

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or getattr(student, "embedding_path", None)
        if teacher is not None:
            self.teacher_path = self.teacher_path or getattr(teacher, "embedding_path", None)
        if not self.student_path or not self.teacher_path:
            raise ValueError("pad: give student_path / teacher_path (the pooled embeddings); the models have none")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.teacher_path or "")}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        e_s, e_t = student_feats["emb"].flatten(1), teacher_feats["emb"].flatten(1)
        if e_s.shape[1] != e_t.shape[1]:
            self.add_adapter("emb", e_s, e_t, "linear")
        self.adapters["var"] = VarianceBranch(e_t.shape[1]).to(e_s.device)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        e_s, e_t = student_feats["emb"].flatten(1), teacher_feats["emb"].flatten(1)
        if "emb" in self.adapters:
            e_s = self.adapters["emb"](e_s)
        return {"pad": pad_l2_loss(e_s, e_t, self.adapters["var"](e_s), self.eps)}
