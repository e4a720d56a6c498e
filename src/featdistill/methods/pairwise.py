"""Pair-wise (structured) distillation for dense prediction: match the similarity between positions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featdistill.losses.dense import pairwise_loss
from featdistill.methods._util import dense_image_task
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


@register_method
class PairWise(Method):
    """ "Structured Knowledge Distillation for Semantic Segmentation" (Liu et al., CVPR 2019), pair-wise term.

    ``L = CE + w·Σ (sim_t − sim_s)² / M² / B`` between the position × position cosine-similarity matrices of the
    max-pooled (kernel ``scale``·size) feature maps (:func:`~featdistill.losses.dense.pairwise_loss`). No
    adapter: the matrices do not depend on the channels. Default maps: the models' ``embedding_path`` (the
    deepest feature map of a zoo segmenter); ``student_path``/``teacher_path`` choose others. The reference
    trains with a weight given on its command line; ours defaults to 1.
    """

    name = "pairwise"
    applies_to = frozenset({"image"})
    paper = "Structured Knowledge Distillation for Semantic Segmentation (Liu et al., CVPR 2019)"
    default_weights = {"pairwise": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_path: str | None = None,
        teacher_path: str | None = None,
        scale: float = 0.5,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"pairwise: scale must be in (0, 1], got {scale!r}")
        self.student_path, self.teacher_path, self.scale = student_path, teacher_path, float(scale)

    @classmethod
    def supports(cls, task: Any) -> bool:
        """Dense image tasks only (segmentation, image-to-image): it needs spatial feature maps."""
        return dense_image_task(task)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or getattr(student, "embedding_path", None)
        if teacher is not None:
            self.teacher_path = self.teacher_path or getattr(teacher, "embedding_path", None)
        if not self.student_path or not self.teacher_path:
            raise ValueError("pairwise: give student_path and teacher_path (the models declare no embedding_path)")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"map": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"map": TapSpec(self.teacher_path or "")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        return {"pairwise": pairwise_loss(student_feats["map"], teacher_feats["map"], self.scale)}
