"""CWD: channel-wise distillation for dense prediction — each channel's spatial distribution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featdistill.adapters import AdapterKind
from featdistill.losses.dense import cwd_loss
from featdistill.methods._util import dense_image_task
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


@register_method
class CWD(Method):
    """ "Channel-wise Knowledge Distillation for Dense Prediction" (Shu et al., ICCV 2021).

    ``L = CE + w·τ²·mean_{n,c} KL(softmax_HW(t_c/τ) ‖ softmax_HW(s_c/τ))``
    (:func:`~featdistill.losses.dense.cwd_loss`). By default on the prediction maps themselves (the class score
    maps of a segmenter: the paper's and MMRazor's segmentation setting, τ = 1, weight 3); ``student_path`` /
    ``teacher_path`` distil intermediate maps instead, through an auto adapter when the channels differ.
    Spatial sizes must agree (the prediction maps of a segmenter do).
    """

    name = "cwd"
    applies_to = frozenset({"image"})  # narrowed to dense image tasks by supports()
    paper = "Channel-wise Knowledge Distillation for Dense Prediction (Shu et al., ICCV 2021)"
    default_weights = {"cwd": 3.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        temperature: float = 1.0,
        student_path: str = "",
        teacher_path: str = "",
        adapter: AdapterKind | None = "auto",
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        if not temperature > 0:
            raise ValueError(f"cwd: temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.student_path, self.teacher_path, self.adapter = student_path, teacher_path, adapter

    @classmethod
    def supports(cls, task: Any) -> bool:
        """Dense image tasks only (segmentation, image-to-image): a classifier's prediction has no spatial map."""
        return dense_image_task(task)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        return None

    def student_taps(self) -> dict[str, TapSpec]:
        return {"map": TapSpec(self.student_path)}  # "" = the prediction map, unflattened

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"map": TapSpec(self.teacher_path)}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        s, t = student_feats["map"], teacher_feats["map"]
        if s.ndim < 3:
            raise ValueError(
                f"cwd: needs spatial maps (N, C, H, W); the tapped output has shape {tuple(s.shape)} — use a dense "
                "task (segmentation) or tap a feature map (student_path / teacher_path)"
            )
        self.add_adapter("map", s, t, self.adapter if s.shape[1] != t.shape[1] else "identity")

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        s = self.adapters["map"](student_feats["map"])
        return {"cwd": cwd_loss(s, teacher_feats["map"], self.temperature)}
