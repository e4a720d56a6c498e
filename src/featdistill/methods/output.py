"""Output matching: regress the student's prediction onto the teacher's (regression, image-to-image)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec

__all__ = ["OutputMatching"]


@register_method
class OutputMatching(Method):
    """The teacher's prediction as a second target for value-predicting tasks (the regression analogue of KD):
    ``L = w_task·task loss + w·D(ŷ_s, ŷ_t)`` with ``D`` = MSE (default for regression) or L1 (default for
    image-to-image, as super-resolution KD does). The teacher's output is a denoised target: on forecasting it
    carries the teacher's smoothing of the noise, on super-resolution its reconstruction of the high
    frequencies the student cannot infer alone."""

    name = "output"
    paper = "output matching (regression / image-to-image KD; e.g. FAKD, Zhang et al. 2020, uses L1 to the teacher)"
    applies_to = frozenset({"output"})
    default_weights = {"output": 1.0}
    default_ce_weight = 1.0

    def __init__(self, loss: Literal["auto", "mse", "l1"] = "auto", weights: Mapping[str, Any] | None = None) -> None:
        super().__init__(weights)
        if loss not in ("auto", "mse", "l1"):
            raise ValueError(f"output: loss must be 'auto', 'mse' or 'l1', got {loss!r}")
        self.loss = loss

    def check_task(self, task: Any) -> None:
        super().check_task(task)
        if self.loss == "auto":
            self.loss = "l1" if getattr(task, "name", "") == "image-to-image" else "mse"

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"logits": TapSpec("")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        s, t = student_feats["logits"], teacher_feats["logits"].float()
        if s.shape != t.shape:
            raise ValueError(f"output: student prediction {tuple(s.shape)} ≠ teacher prediction {tuple(t.shape)}")
        fn = F.l1_loss if self.loss == "l1" else F.mse_loss
        return {"output": fn(s.float(), t)}
