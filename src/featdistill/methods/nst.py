"""NST: match the distributions of channel activation patterns with a polynomial-kernel MMD."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.losses.similarity import nst_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.methods.sp import paired
from featdistill.taps import TapSpec


def stages(model: nn.Module, method: str) -> list[str]:
    """RepDistiller's ``feat[1:-1]`` / mdistiller's ``feats[1:]``: the ``stage_paths`` of the zoo ResNets, WRNs and
    ShuffleNets; for the zoo VGG, whose ``stage_paths`` start with ``block0`` (the reference's stem-like ``f0``),
    ``block1``–``block4``."""
    from featdistill.models.vgg import VGG

    paths = list(getattr(model, "stage_paths", []) or [])
    if isinstance(model, VGG):
        paths = paths[1:]
    if not paths:
        raise ValueError(
            f"{method}: {type(model).__name__} has no `stage_paths`; give student_paths and teacher_paths "
            "(featdistill inspect MODEL lists them)"
        )
    return paths


@register_method
class NST(Method):
    """ "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (Huang & Wang, 2017).

    ``L = CE + w·Σ_stages MMD²_poly(f_s, f_t)`` (:func:`~featdistill.losses.similarity.nst_loss`: channel maps
    L2-normalised over space, polynomial kernel ``(xᵀy)²``, the larger map pooled to the smaller) on every stage —
    RepDistiller ``--distill nst -b 50`` (``feat[1:-1]``) and mdistiller ``CFG.NST`` (FEAT_WEIGHT 50, CE 1). No
    adapter: channel counts may differ.
    """

    name = "nst"
    applies_to = frozenset({"image"})
    paper = "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (Huang & Wang, 2017)"
    default_weights = {"nst": 50.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_paths = self.student_paths or stages(student, self.name)
        if teacher is not None:
            self.teacher_paths = self.teacher_paths or stages(teacher, self.name)
        paired(self.name, self.student_paths, self.teacher_paths)

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"nst{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"nst{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        n = len(self.student_paths or [])
        terms = [nst_loss(student_feats[f"nst{i}"], teacher_feats[f"nst{i}"]) for i in range(n)]
        return {"nst": torch.stack(terms).sum()}
