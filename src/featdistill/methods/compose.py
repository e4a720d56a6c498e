"""Compose: several recipes trained together, their named loss terms summed.

Why: distillation recipes combine (KD + a feature hint is the most common pair in practice), and a
combination should not need a new file.  Each part keeps its own taps, adapters, terms and weights; tap and
term names are prefixed with the part's name when two parts would collide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.methods.base import METHODS, Features, Method, register_method
from featdistill.taps import TapSpec


@register_method
class Compose(Method):
    """Sum of several recipes, e.g. ``{name: compose, params: {parts: [{name: kd}, {name: fitnet}]}}``.

    The cross-entropy weight is the largest of the parts' reference CE weights unless the config sets it.
    """

    name = "compose"
    applies_to = frozenset({"any"})  # refined per instance: every part must apply (check_task)
    paper = "composition of recipes (e.g. KD + FitNets hint)"
    default_weights: dict[str, Any] = {}

    def __init__(self, parts: Sequence[Mapping[str, Any]] = (), weights: Mapping[str, Any] | None = None) -> None:
        if not parts:
            raise ValueError("compose: give parts, e.g. [{name: kd}, {name: fitnet}]")
        super().__init__(None)
        built: list[Method] = []
        for spec in parts:
            spec = dict(spec)
            name = spec.pop("name", None)
            if name not in METHODS or name == "compose":
                raise ValueError(f"compose: unknown part {name!r}; known: {sorted(METHODS)}")
            built.append(METHODS[name](**spec.get("params", {}), weights=spec.get("weights")))
        self.parts = nn.ModuleList(built)
        self.needs_teacher = any(p.needs_teacher for p in built)  # type: ignore[misc]
        self.default_ce_weight = max(p.default_ce_weight for p in built)  # type: ignore[misc]
        names = [p.name for p in built]
        if len(set(names)) != len(names):
            raise ValueError(f"compose: each recipe may appear once, got {names}")

    def check_task(self, task: Any) -> None:
        for p in self.parts:
            p.check_task(task)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        for p in self.parts:
            p.bind(student, teacher)

    def fit(self, teacher: Any, loader: Any, num_classes: int | None = None) -> None:
        for p in self.parts:
            p.fit(teacher, loader, num_classes)

    @staticmethod
    def _key(part: Method, tap: str) -> str:
        return tap if tap == "logits" else f"{part.name}.{tap}"

    def student_taps(self) -> dict[str, TapSpec]:
        return {self._key(p, k): v for p in self.parts for k, v in p.student_taps().items()}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {self._key(p, k): v for p in self.parts for k, v in p.teacher_taps().items()}

    def _view(self, part: Method, feats: Features, which: str) -> Features:
        taps = part.student_taps() if which == "s" else part.teacher_taps()
        out = {k: feats[self._key(part, k)] for k in taps}
        if "logits" in feats:
            out["logits"] = feats["logits"]
        return out

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        for p in self.parts:
            p.setup(self._view(p, student_feats, "s"), self._view(p, teacher_feats, "t"))

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for p in self.parts:
            terms = p(self._view(p, student_feats, "s"), self._view(p, teacher_feats, "t"), batch, epoch)
            for k, v in terms.items():  # weighted here: each part owns its schedules
                out[k if k not in out else f"{p.name}.{k}"] = p.weight(k, epoch) * v
        return out

    def weight(self, term: str, epoch: float) -> float:
        return 1.0  # parts already applied their own weights
