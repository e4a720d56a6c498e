"""ICKD: match per-sample inter-channel correlation matrices through a student embedding conv."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from featdistill.losses.similarity import ickd_loss
from featdistill.methods._paired import last_stage
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


class ChannelEmbed(nn.Module):
    """Student map → teacher channels: ``Conv(k×k, no bias) → BN`` (torchdistill ``ChannelSimilarityEmbed``:
    k = 3, padding 1; the official CIFAR code's ``Embed``: k = 1)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=1, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@register_method
class ICKD(Method):
    """ "Exploring Inter-Channel Correlation for Diversity-Preserved Knowledge Distillation" (Liu et al., ICCV 2021).

    ``L = CE + w·ickd_loss(embed(f_s), f_t)`` on the last stage maps (:func:`~featdistill.losses.similarity.ickd_loss`:
    per-sample C × C Grams, rows L2-normalised). Defaults follow torchdistill (``ChSimLoss`` + ``Student4ICKD``'s
    3 × 3 conv + BN embedding, ``/(C·B²)``, weight 500 in its ImageNet recipe, which also adds KD at T 1 — compose
    with ``kd`` for that). The authors' CIFAR-100 code (``ADLab-AutoDrive/ICKD``, ``Cifar100/``) uses a 1 × 1 conv
    embedding, ``/(C·B)`` and ``-b 2.5`` (``embed_kernel: 1``, ``reduction: official``; the CIFAR configs).
    """

    name = "ickd"
    applies_to = frozenset({"image"})
    paper = "Exploring Inter-Channel Correlation for Diversity-Preserved KD (Liu et al., ICCV 2021)"
    default_weights = {"ickd": 500.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_path: str | None = None,
        teacher_path: str | None = None,
        embed_kernel: int = 3,
        reduction: Literal["torchdistill", "official"] = "torchdistill",
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        if embed_kernel not in (1, 3):
            raise ValueError(
                f"ickd: embed_kernel must be 1 (official CIFAR code) or 3 (torchdistill), got {embed_kernel}"
            )
        if reduction not in ("torchdistill", "official"):
            raise ValueError(f"ickd: reduction must be 'torchdistill' or 'official', got {reduction!r}")
        self.student_path, self.teacher_path = student_path, teacher_path
        self.embed_kernel, self.reduction = embed_kernel, reduction

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or last_stage(student, self.name)[0]
        if teacher is not None:
            self.teacher_path = self.teacher_path or last_stage(teacher, self.name)[0]
        if not self.teacher_path:
            raise ValueError("ickd: give teacher_path when the teacher is not a live model")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"feat": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"feat": TapSpec(self.teacher_path or "")}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        s, t = student_feats["feat"], teacher_feats["feat"]
        if s.ndim != 4 or t.ndim != 4:
            raise ValueError(
                f"ickd: needs feature maps (B, C, H, W), got student {tuple(s.shape)} and teacher {tuple(t.shape)}"
            )
        self.adapters["embed"] = ChannelEmbed(s.shape[1], t.shape[1], self.embed_kernel).to(s.device)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        s = self.adapters["embed"](student_feats["feat"])
        return {"ickd": ickd_loss(s, teacher_feats["feat"], reduction=self.reduction)}
