"""FSP: match the "flow" (Gram across consecutive layers) of the teacher in an initialisation stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.losses.similarity import fsp_loss
from featdistill.methods._paired import paired
from featdistill.methods._util import unregistered
from featdistill.methods.ab import run_init_stage
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


def fsp_stages(model: nn.Module) -> list[str]:
    """RepDistiller's ``feat[:-1]``: the stem output then every stage (ResNet ``relu``, WRN ``conv1``, ShuffleNet
    ``relu`` + ``stage_paths``; the zoo VGG's ``stage_paths`` already start with ``block0``, the reference's ``f0``)."""
    from featdistill.models.resnet import CifarResNet
    from featdistill.models.shufflenet import ShuffleNetV2
    from featdistill.models.vgg import VGG
    from featdistill.models.wrn import WideResNet

    if isinstance(model, (CifarResNet, ShuffleNetV2)):
        return ["relu", *model.stage_paths]
    if isinstance(model, WideResNet):
        return ["conv1", *model.stage_paths]
    if isinstance(model, VGG):
        return list(model.stage_paths)
    raise ValueError(
        f"fsp: no default taps for {type(model).__name__}; give student_paths and teacher_paths "
        "(the stem output, then each stage)"
    )


@register_method
class FSP(Method):
    """ "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning"
    (Yim et al., CVPR 2017), as RepDistiller's ``FSP`` with its two-stage schedule.

    Stage 1 (:meth:`fit`, ``init_epochs`` = 30, SGD at ``init_lr``): the student's feature layers minimise
    :func:`~featdistill.losses.similarity.fsp_loss` alone — the MSE between the FSP matrices of consecutive maps
    (stem, stage 1, …; :func:`fsp_stages`). Stage 2 (the run): CE only (RepDistiller's ``train_distill`` sets
    ``loss_kd = 0`` for FSP, so its script's ``-b 50`` has no effect); the ``fsp`` weight is 0 by default.
    No adapter: channel counts must agree stage by stage (RepDistiller refuses other pairs).
    """

    name = "fsp"
    applies_to = frozenset({"image"})
    paper = "A Gift from Knowledge Distillation (FSP; Yim et al., CVPR 2017)"
    default_weights = {"fsp": 0.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        init_epochs: int = 30,
        init_lr: float = 0.05,
        init_momentum: float = 0.9,
        init_weight_decay: float = 5e-4,
        init_device: str = "auto",
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None
        self.init_epochs, self.init_lr = init_epochs, init_lr
        self.init_momentum, self.init_weight_decay, self.init_device = init_momentum, init_weight_decay, init_device
        self.init_history: list[float] = []
        self._student = unregistered(None)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self._student = unregistered(student)
        self.student_paths = self.student_paths or fsp_stages(student)
        if teacher is not None:
            self.teacher_paths = self.teacher_paths or fsp_stages(teacher)
        paired(self.name, self.student_paths, self.teacher_paths)
        if len(self.student_paths or []) < 2:
            raise ValueError(f"fsp: needs at least two maps per network, got {self.student_paths}")

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"fsp{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"fsp{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        n = len(self.student_paths or [])
        s = [int(student_feats[f"fsp{i}"].shape[1]) for i in range(n)]
        t = [int(teacher_feats[f"fsp{i}"].shape[1]) for i in range(n)]
        if s != t:
            raise ValueError(
                f"fsp: the student maps {self.student_paths} have channels {s}, the teacher maps "
                f"{self.teacher_paths} have {t}; FSP matrices compare only equal widths (RepDistiller refuses "
                "this pair too) — tap stages of equal widths"
            )

    def loss(self, student_feats: Features, teacher_feats: Features) -> torch.Tensor:
        n = len(self.student_paths or [])
        return fsp_loss([student_feats[f"fsp{i}"] for i in range(n)], [teacher_feats[f"fsp{i}"] for i in range(n)])

    def fit(self, teacher: Any, loader: Any, num_classes: int | None = None) -> None:
        """Stage 1: RepDistiller's ``init`` for FSP; ``init_history`` holds the epoch losses."""
        if self.init_epochs <= 0:
            return
        self.init_history = run_init_stage(
            self,
            self._student(),
            teacher,
            loader,
            self.loss,
            self.init_epochs,
            self.init_lr,
            self.init_momentum,
            self.init_weight_decay,
            self.init_device,
        )

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        if self.weight("fsp", epoch) == 0:
            return {}  # RepDistiller's second stage: CE only
        return {"fsp": self.loss(student_feats, teacher_feats)}
