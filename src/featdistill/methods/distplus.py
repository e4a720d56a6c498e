"""DIST+: DIST's logit relations plus channel and spatial relations of the last-stage feature maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featdistill.losses.logit_variants import channel_relation_loss, spatial_relation_loss
from featdistill.losses.logits import dist_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


def _last_stage(model: nn.Module | None) -> str | None:
    stages = getattr(model, "stage_paths", None) if model is not None else None
    return stages[-1] if stages else None


@register_method
class DISTPlus(Method):
    """ "DIST+: Knowledge Distillation From a Stronger Adaptive Teacher" (Huang et al., TPAMI 2025), as torchdistill
    codes it (``DISTPlusLoss``, ``configs/sample/ilsvrc2012/dist_plus/resnet18_from_resnet34.yaml``).

    ``dist`` = DIST's ``β·(1 − ρ_inter) + γ·(1 − ρ_intra)`` on ``softmax(z/τ)`` (τ² each); ``channel`` = 1 − the mean
    Pearson correlation across channels at every position of the last-stage maps; ``spatial`` = 1 − the mean Pearson
    correlation across the batch of the channel-summed maps at every position
    (:mod:`featdistill.losses.logit_variants`).  Defaults are torchdistill's recipe: β = γ = 2, ι = κ = 1, τ = 1, the
    whole DIST+ loss weighted 2 and CE 1 — here the weights ``dist`` 2, ``channel`` 2·ι, ``spatial`` 2·κ.  The
    channel term is ``1 − ρ`` where torchdistill adds ``ρ`` (see :func:`channel_relation_loss`).  A student map of
    another shape goes through an ``auto`` adapter (1×1 conv + BN, resampling) to the teacher's.
    """

    name = "dist+"
    paper = "DIST+: Knowledge Distillation From a Stronger Adaptive Teacher (Huang et al., TPAMI 2025)"
    default_weights = {"dist": 2.0, "channel": 2.0, "spatial": 2.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 2.0,
        temperature: float = 1.0,
        student_path: str | None = None,
        teacher_path: str | None = None,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        self.beta, self.gamma, self.temperature = beta, gamma, temperature
        self.student_path, self.teacher_path = student_path, teacher_path

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or _last_stage(student)
        self.teacher_path = self.teacher_path or _last_stage(teacher)
        if not self.student_path or not self.teacher_path:
            raise ValueError("dist+: give student_path / teacher_path (the last-stage feature maps)")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"feat": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"feat": TapSpec(self.teacher_path or ""), "logits": TapSpec("")}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        s, t = student_feats["feat"], teacher_feats["feat"]
        if tuple(s.shape[1:]) != tuple(t.shape[1:]):
            self.add_adapter("feat", s, t, "auto")

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        z_s, z_t = self.standardized(student_feats["logits"], teacher_feats["logits"])
        f_s, f_t = student_feats["feat"], teacher_feats["feat"]
        if "feat" in self.adapters:
            f_s = self.adapters["feat"](f_s)
        return {
            "dist": dist_loss(z_s, z_t, beta=self.beta, gamma=self.gamma, temperature=self.temperature),
            "channel": channel_relation_loss(f_s, f_t),
            "spatial": spatial_relation_loss(f_s, f_t),
        }
