"""Hinton KD: match the teacher's temperature-softened class distribution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featdistill.losses.logits import kd_loss
from featdistill.losses.position_kd import ce_and_kd_topk, kd_loss_rows, kd_loss_topk
from featdistill.methods.base import FUSED_TASK_LOSS, Features, Method, register_method
from featdistill.taps import TapSpec


@register_method
class KD(Method):
    """ "Distilling the Knowledge in a Neural Network" (Hinton, Vinyals, Dean, 2015).

    ``L = w_ce·CE + w_kd·T²·KL(p_t^T ‖ p_s^T)``; defaults are the CRD CIFAR-100 protocol (T = 4, 0.1 / 0.9).
    ``logit_standardization=True`` z-scores both logits first (Sun et al., CVPR 2024; their CIFAR-100 recipe:
    base T = 2 (3 for vgg13→vgg8), KD weight 9, CE 0.1).
    """

    name = "kd"
    applies_to = frozenset({"class"})
    paper = "Distilling the Knowledge in a Neural Network (Hinton et al., 2015)"
    default_weights = {"kd": 0.9}
    default_ce_weight = 0.1
    sparse_logits = True

    def __init__(
        self,
        temperature: float = 4.0,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        self.temperature = temperature
        if logit_standardization:  # a z-score needs every class: a top-k store must serve dense logits
            self.sparse_logits = False  # type: ignore[misc]

    def fuses_task_loss(self, teacher_feats: Features) -> bool:
        # a top-k record at T = 1: CE and KD share the student's logsumexp (one pass for both gradients)
        return self.temperature == 1.0 and "logits_topk_logp" in teacher_feats

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"logits": TapSpec("")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        if "logits_topk_logp" in teacher_feats:  # a top-k store served sparsely: same loss, no dense teacher
            t = teacher_feats
            if batch.get("fuse_task_loss"):
                ce, kd = ce_and_kd_topk(
                    student_feats["logits"],
                    batch["target"],
                    t["logits_topk_logp"],
                    t["logits_topk_idx"],
                    t["logits_rest_logp"],
                )
                return {"kd": kd, FUSED_TASK_LOSS: ce}
            kd = kd_loss_topk(
                student_feats["logits"],
                t["logits_topk_logp"],
                t["logits_topk_idx"],
                t["logits_rest_logp"],
                self.temperature,
            )
            return {"kd": kd}
        z_s, z_t = self.standardized(student_feats["logits"], teacher_feats["logits"])
        # per-pixel / per-token rows: the same value with a one-pass backward (image classification keeps
        # kd_loss, so its numbers stay bit-identical)
        fn = kd_loss_rows if batch.get("per_position") else kd_loss
        return {"kd": fn(z_s, z_t, self.temperature)}
