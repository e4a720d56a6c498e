"""Recipes that compare paired student/teacher maps tapped by module path (SP, NST, KDSVD, …).

One place for what they share: the ``student_paths``/``teacher_paths`` arguments, their defaults from the zoo's
``stage_paths`` (:func:`last_stage`, :func:`stages`), the pairing check, and taps named ``<name><i>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.methods.base import Features, Method
from featdistill.taps import TapSpec

__all__ = ["PairedMaps", "last_stage", "paired", "stages"]


def last_stage(model: nn.Module, method: str) -> list[str]:
    """``[stage_paths[-1]]``: the last stage map (RepDistiller's ``feat[-2]``, mdistiller's ``feats[-1]``)."""
    stages = getattr(model, "stage_paths", None)
    if not stages:
        raise ValueError(
            f"{method}: {type(model).__name__} has no `stage_paths`; give the tap paths explicitly "
            "(featdistill inspect MODEL lists them)"
        )
    return [stages[-1]]


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


def paired(method: str, student: Sequence[str] | None, teacher: Sequence[str] | None) -> None:
    """Refuse unpaired path lists, naming both."""
    if not student or not teacher or len(student) != len(teacher):
        raise ValueError(
            f"{method}: pair the tap paths: student {list(student or [])}, teacher {list(teacher or [])} "
            "(give student_paths and teacher_paths of equal length)"
        )


class PairedMaps(Method):
    """Base of the recipes on ``(student_paths[i], teacher_paths[i])`` map pairs.

    Subclasses set :meth:`default_paths` (the zoo default for a model) and use :meth:`pairs` in ``forward``.
    """

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None

    def default_paths(self, model: nn.Module) -> list[str]:
        """The maps compared when no paths are given (default: the last stage)."""
        return last_stage(model, self.name)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_paths = self.student_paths or self.default_paths(student)
        if teacher is not None:
            self.teacher_paths = self.teacher_paths or self.default_paths(teacher)
        paired(self.name, self.student_paths, self.teacher_paths)

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"{self.name}{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"{self.name}{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def pairs(self, student_feats: Features, teacher_feats: Features) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The tapped ``(student, teacher)`` maps, in path order."""
        keys = [f"{self.name}{i}" for i in range(len(self.student_paths or []))]
        return [(student_feats[k], teacher_feats[k]) for k in keys]
