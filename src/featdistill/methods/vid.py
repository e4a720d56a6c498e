"""VID: variational information distillation — a Gaussian likelihood of each teacher stage given the student's."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.losses.feature_regression import match_spatial, vid_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec

__all__ = ["VID", "VIDRegressor", "stage_pairs"]


def stage_pairs(
    method: str,
    student: nn.Module,
    teacher: nn.Module | None,
    student_paths: Sequence[str] | None,
    teacher_paths: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """Paired stage paths: the given ones, else both models' ``stage_paths``; unequal counts pair the deepest
    stages (mdistiller's ``_align_list``)."""
    s = list(student_paths) if student_paths else list(getattr(student, "stage_paths", []) or [])
    t = list(teacher_paths) if teacher_paths else list(getattr(teacher, "stage_paths", []) or [])
    if not s or not t:
        raise ValueError(f"{method}: give student_paths and teacher_paths (the models have no `stage_paths`)")
    if student_paths and teacher_paths and len(s) != len(t):
        raise ValueError(f"{method}: {len(s)} student paths {s} vs {len(t)} teacher paths {t}; give paired paths")
    n = min(len(s), len(t))
    return s[-n:], t[-n:]


class VIDRegressor(nn.Module):
    """``μ(f_s)``: three 1×1 convs without bias, ``C_s → C_mid → C_mid → C_t`` with ReLUs between (``VIDLoss``;
    ``C_mid = C_t`` as RepDistiller builds it), and the per-channel ``log_scale`` of the variance initialised so
    that ``softplus(α) + eps = init_pred_var``."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, init_pred_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(c_in, c_mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_mid, c_out, 1, bias=False),
        )
        self.log_scale = nn.Parameter(math.log(math.exp(init_pred_var - eps) - 1.0) * torch.ones(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(x)


@register_method
class VID(Method):
    """ "Variational Information Distillation for Knowledge Transfer" (Ahn et al., CVPR 2019) — RepDistiller
    ``distiller_zoo/VID.py`` (the authors' code), ``train_student.py --distill vid -a 0 -b 1``.

    For every stage pair (RepDistiller's ``feat[1:-1]``: the zoo's ``stage_paths``; the vgg configs name
    ``block1``–``block4``) the larger map is average-pooled to the other's height, a 1×1-conv regressor predicts
    the teacher map's mean and a learned per-channel variance ``σ² = softplus(α) + 1e-5`` (init 5) gives
    ``vid = Σ_stages mean(½((μ(f_s) − f_t)²/σ² + log σ²))``.  ``L = CE + 1·vid``.

    Differences: the paper maximises a variational lower bound of mutual information; the code (kept here) drops
    the Gaussian's constant and averages instead of summing.  mdistiller keeps ``log_scale`` in a plain list, so
    its variance is never trained; RepDistiller (followed here) trains it.
    """

    name = "vid"
    applies_to = frozenset({"image"})
    paper = "Variational Information Distillation for Knowledge Transfer (Ahn et al., CVPR 2019)"
    default_weights = {"vid": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        if init_pred_var <= eps:
            raise ValueError(f"vid: init_pred_var must exceed eps ({eps}), got {init_pred_var}")
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None
        self.init_pred_var, self.eps = init_pred_var, eps

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_paths, self.teacher_paths = stage_pairs(
            self.name, student, teacher, self.student_paths, self.teacher_paths
        )

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"vid{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"vid{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        for i in range(len(self.student_paths or [])):
            s, t = student_feats[f"vid{i}"], teacher_feats[f"vid{i}"]
            if s.ndim != 4 or t.ndim != 4:
                raise ValueError(
                    f"vid: stage {i} needs feature maps (B, C, H, W), got {tuple(s.shape)}, {tuple(t.shape)}"
                )
            reg = VIDRegressor(s.shape[1], t.shape[1], t.shape[1], self.init_pred_var, self.eps)
            self.adapters[f"vid{i}"] = reg.to(s.device)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        total: torch.Tensor | None = None
        for i in range(len(self.student_paths or [])):
            reg = self.adapters[f"vid{i}"]
            s, t = match_spatial(student_feats[f"vid{i}"], teacher_feats[f"vid{i}"])
            term = vid_loss(reg(s), t, reg.log_scale, self.eps)
            total = term if total is None else total + term
        assert total is not None
        return {"vid": total}
