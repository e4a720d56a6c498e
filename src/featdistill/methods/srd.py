"""SRD: a linear projector + batch norm on the student embedding, a log-sum feature loss and KL on logits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses.feature_regression import srd_feature_loss, srd_kl
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec

__all__ = ["SRD", "SRDProjector"]


class SRDProjector(nn.Sequential):
    """torchdistill ``SRDModelWrapper`` (student): ``Linear(d_s → d_t)`` then ``BatchNorm1d(d_t, eps=1e-4,
    affine=False)`` on the pooled embedding."""

    def __init__(self, d_s: int, d_t: int, eps: float = 1e-4) -> None:
        super().__init__(nn.Linear(d_s, d_t), nn.BatchNorm1d(d_t, eps=eps, affine=False))


@register_method
class SRD(Method):
    """ "Understanding the Role of the Projector in Knowledge Distillation" (Miles & Mikolajczyk, AAAI 2024) — the
    method torchdistill ships as SRD: ``losses/mid_level.py`` ``SRDLoss``, ``models/wrapper.py``
    ``SRDModelWrapper``, ``configs/official/ilsvrc2012/roymiles/aaai2024/srd-resnet18_from_resnet34.yaml``.

    The student's pooled embedding goes through a linear projector and an affine-free BN (eps 1e-4); the teacher's
    pooled embedding through an affine-free BN too (batch statistics: torchdistill's wrapper BN is never switched to
    eval mode during training).  ``L = CE + 2·log Σ|p(f_s) − bn(f_t)|⁴ + KL(p_t ‖ p_s)`` (batchmean, T = 1, no T²);
    the ``2`` is the default ``feat`` weight.

    Not SimKD: "Knowledge Distillation with the Reused Teacher Classifier" (Chen et al., CVPR 2022;
    ``DefangChen/SimKD`` ``models/util.py`` ``SimKD``) projects the student's last map (conv bottleneck) and *deploys*
    the student with that projector and the teacher's frozen classifier, trained by an L2 feature loss only — a
    different exported model; not implemented here.
    """

    name = "srd"
    paper = "Understanding the Role of the Projector in Knowledge Distillation (Miles & Mikolajczyk, AAAI 2024)"
    default_weights = {"feat": 2.0, "kl": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_path: str | None = None,
        teacher_path: str | None = None,
        exponent: float = 4.0,
        temperature: float = 1.0,
        bn_eps: float = 1e-4,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_path, self.teacher_path = student_path, teacher_path
        self.exponent, self.temperature, self.bn_eps = exponent, temperature, bn_eps

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or getattr(student, "embedding_path", None)
        if teacher is not None:
            self.teacher_path = self.teacher_path or getattr(teacher, "embedding_path", None)
        if not self.student_path or not self.teacher_path:
            raise ValueError("srd: give student_path / teacher_path (the pooled embedding); the models have none")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.teacher_path or ""), "logits": TapSpec("")}

    @staticmethod
    def _pool(f: torch.Tensor) -> torch.Tensor:
        return f.mean(dim=(-2, -1)) if f.ndim == 4 else f.reshape(f.shape[0], -1)

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        d_s, d_t = self._pool(student_feats["emb"]).shape[1], self._pool(teacher_feats["emb"]).shape[1]
        self.adapters["proj"] = SRDProjector(d_s, d_t, self.bn_eps).to(student_feats["emb"].device)

    def teacher_norm(self, f_t: torch.Tensor) -> torch.Tensor:
        """Affine-free batch normalisation of the teacher embedding with the batch's statistics (biased variance)."""
        f = self._pool(f_t.clone() if f_t.is_inference() else f_t)
        return F.batch_norm(f, None, None, training=True, eps=self.bn_eps)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        z_s = self.adapters["proj"](self._pool(student_feats["emb"]))
        z_t = self.teacher_norm(teacher_feats["emb"]).to(z_s.dtype)
        return {
            "feat": srd_feature_loss(z_s, z_t, self.exponent),
            "kl": srd_kl(student_feats["logits"], teacher_feats["logits"], self.temperature),
        }
