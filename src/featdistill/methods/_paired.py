"""Recipes that compare student/teacher features tapped by module path.

One place for what they share: the path arguments, their zoo defaults (``stage_paths`` — :func:`last_stage`,
:func:`stages`; ``embedding_path`` — :func:`embedding`), the pairing check and the taps. :class:`PairedMaps`
serves the recipes on paired stage maps (SP, NST, KDSVD), :class:`EmbeddingPair` those on the pooled embedding
(RKD, PKT, CC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.methods.base import Features, Method
from featdistill.taps import TapSpec

__all__ = ["EmbeddingPair", "PairedMaps", "embedding", "last_stage", "paired", "stages"]


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


def embedding(model: nn.Module, method: str) -> str:
    """The model's pooled penultimate embedding path (RepDistiller's ``feat[-1]``, mdistiller's ``pooled_feat``);
    a model that declares none is an error naming the fix, never a silent fallback to its logits."""
    path = getattr(model, "embedding_path", None)
    if not isinstance(path, str) or not path:
        raise ValueError(
            f"{method}: the model {type(model).__name__} declares no embedding_path; give the student and teacher "
            'paths explicitly (`featdistill inspect MODEL` lists the module paths; "" is the prediction)'
        )
    return path


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


class EmbeddingPair(Method):
    """Base of the recipes on one student/teacher embedding pair (default: the models' ``embedding_path``),
    tapped as ``emb``; :meth:`embeddings` averages a ``(B, L, D)`` sequence feature over its non-padding tokens."""

    def __init__(
        self, student_path: str | None = None, teacher_path: str | None = None, weights: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(weights)
        self.student_path, self.teacher_path = student_path, teacher_path

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or embedding(student, self.name)
        if teacher is not None:
            self.teacher_path = self.teacher_path or embedding(teacher, self.name)
        if not self.teacher_path:
            raise ValueError(f"{self.name}: give teacher_path when the teacher is not a live model")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.teacher_path or "")}

    def embeddings(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two embeddings, each sample of a sequence task the mean over its non-padding tokens."""
        from featdistill.methods._util import pool_tokens

        mask = batch.get("position_mask")
        return pool_tokens(student_feats["emb"], mask), pool_tokens(teacher_feats["emb"], mask)
