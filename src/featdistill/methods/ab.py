"""AB: transfer the teacher's activation boundaries (pre-ReLU signs) in an initialisation stage.

RepDistiller's ``--distill abound`` is two-stage: ``helper/pretrain.py:init`` first trains the student's feature
layers and the connectors for ``init_epochs`` (30) epochs with the AB loss alone (its own SGD at the run's lr,
momentum 0.9, wd 5e-4), then the 240-epoch run trains with CE only (``loss_kd = 0`` in ``train_distill``; the
``-b 1`` of its script multiplies that zero). Here the first stage is :meth:`AB.fit` — the uniform pre-training
hook ``run_experiment`` calls before the Trainer — and the second stage is the ordinary run, where the ``ab`` term's
weight is 0 by default (give it a weight to keep the loss during training, as RepDistiller's comment suggests).
:func:`run_init_stage` is shared with FSP, which has the same schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from featdistill.losses.similarity import ab_loss
from featdistill.methods._paired import paired
from featdistill.methods._util import model_device, unregistered
from featdistill.methods.base import Features, Method, register_method
from featdistill.seeding import seeded
from featdistill.taps import Taps, TapSpec, resolve_module

__all__ = ["AB", "preact_stages", "run_init_stage"]


def preact_stages(model: nn.Module) -> list[str]:
    """The pre-ReLU stage maps RepDistiller's AB reads (``is_feat=True, preact=True``, ``feat[1:-1]``).

    CIFAR ResNet: ``layer{i}.{last}.preact``; WRN: the next BN's output (``block2.layer.0.bn1``,
    ``block3.layer.0.bn1``, ``bn1``), as RepDistiller applies those BNs to the stage outputs; VGG:
    ``block1``–``block4`` before their last ReLU. ShuffleNetV2 has no single pre-ReLU module (the reference
    concatenates the split half with the pre-ReLU branch): its stage outputs (after ReLU, shuffled) are used — a
    documented difference, bridged by the connector.
    """
    from featdistill.models.resnet import CifarResNet
    from featdistill.models.shufflenet import ShuffleNetV2
    from featdistill.models.vgg import VGG
    from featdistill.models.wrn import WideResNet

    if isinstance(model, CifarResNet):
        return [f"{p}.{len(resolve_module(model, p)) - 1}.preact" for p in model.stage_paths]
    if isinstance(model, WideResNet):
        return ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
    if isinstance(model, VGG):
        return [f"block{i}.{len(resolve_module(model, f'block{i}')) - 2}" for i in range(1, 5)]
    if isinstance(model, ShuffleNetV2):
        return list(model.stage_paths)
    raise ValueError(
        f"ab: no default pre-activation taps for {type(model).__name__}; give student_paths and teacher_paths "
        "(the pre-ReLU output of each stage; featdistill inspect MODEL lists module paths)"
    )


def _resolve_device(device: str, fallback: torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else fallback
    return torch.device(device)


def run_init_stage(
    method: Method,
    student: nn.Module,
    teacher: nn.Module | Any,
    loader: Iterable[Mapping[str, Any]],
    loss_fn: Callable[[Features, Features], torch.Tensor],
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: str = "auto",
    seed: int = 0,
) -> list[float]:
    """RepDistiller's ``init`` stage: ``epochs`` epochs of SGD on ``loss_fn(student taps, teacher taps)`` alone,
    updating the student's feature layers (every parameter but the classifier's) and the method's adapters.

    ``teacher`` is the live model (run in eval mode, no gradient, up to its last tap) or a teacher source giving the
    method's teacher taps by name. Adapters are built first from one probe batch (seeded by ``seed``; the
    Distiller's later ``prepare`` keeps them). Runs on ``device`` (``auto``: CUDA when available) and moves the
    models back afterwards. Returns the mean loss of each epoch.
    """
    home = model_device(student)
    dev = _resolve_device(device, home)
    s_taps, t_taps = method.student_taps(), method.teacher_taps()
    live = isinstance(teacher, nn.Module)
    t_home = model_device(teacher) if live else None
    student.to(dev)
    if live:
        teacher.to(dev)
        teacher.eval()

    def teacher_feats(batch: Mapping[str, Any], taps: Taps | None) -> Features:
        if taps is not None:
            with torch.no_grad():
                return taps(batch["input"].to(dev))[1]
        with torch.no_grad():
            feats = teacher(batch)
        return {k: feats[k].to(dev) for k in t_taps}

    classifier = getattr(student, "classifier_path", None)
    frozen = {id(p) for p in resolve_module(student, classifier).parameters()} if classifier else set()
    history: list[float] = []
    was_training = student.training
    try:
        with (
            Taps(student, s_taps, stop_early=True) as st,
            Taps(teacher, t_taps, stop_early=True) if live else _Null() as tt,
        ):
            taps = tt if live else None
            optimizer: torch.optim.Optimizer | None = None
            for epoch in range(epochs):
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
                total, count = 0.0, 0
                for batch in loader:
                    t_feats = teacher_feats(batch, taps)
                    if optimizer is None:  # build the adapters from the first batch, then the optimiser
                        student.eval()
                        with torch.no_grad():
                            probe = st(batch["input"].to(dev))[1]
                        with seeded(seed, "adapters"):
                            method.setup(probe, t_feats)
                        method.to(dev)
                        params = [p for p in student.parameters() if p.requires_grad and id(p) not in frozen]
                        params += [p for p in method.adapters.parameters() if p.requires_grad]
                        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
                    student.train()
                    method.train()
                    s_feats = st(batch["input"].to(dev))[1]
                    loss = loss_fn(s_feats, t_feats)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach())
                    count += 1
                history.append(total / max(count, 1))
    finally:
        student.train(was_training)
        student.to(home)
        method.to(home)
        if live and t_home is not None:
            teacher.to(t_home)
    return history


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@register_method
class AB(Method):
    """ "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons" (Heo et al., AAAI
    2019), as RepDistiller's ``ABLoss`` + ``Connector`` + ``init`` stage.

    Stage 1 (:meth:`fit`, ``init_epochs`` = 30): ``ab_loss(connector(f_s^pre), f_t^pre)`` alone
    (:func:`~featdistill.losses.similarity.ab_loss`: margin 1, stage weights 2^(i−n+1), ÷B·3/1000) on the
    pre-ReLU stage maps (:func:`preact_stages`); connectors are ``1×1 conv + BN`` where shapes differ, identity
    otherwise (RepDistiller ``ConvReg(use_relu=False)``). Stage 2 (the run): CE only — the ``ab`` weight is 0.
    """

    name = "ab"
    applies_to = frozenset({"image"})
    paper = "Knowledge Transfer via Distillation of Activation Boundaries (Heo et al., AAAI 2019)"
    default_weights = {"ab": 0.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        margin: float = 1.0,
        init_epochs: int = 30,
        init_lr: float = 0.05,
        init_momentum: float = 0.9,
        init_weight_decay: float = 5e-4,
        init_device: str = "auto",
        seed: int = 0,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None
        self.margin, self.init_epochs, self.init_lr = margin, init_epochs, init_lr
        self.init_momentum, self.init_weight_decay = init_momentum, init_weight_decay
        self.init_device, self.seed = init_device, seed
        self.init_history: list[float] = []
        self._student = unregistered(None)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self._student = unregistered(student)
        self.student_paths = self.student_paths or preact_stages(student)
        if teacher is not None:
            self.teacher_paths = self.teacher_paths or preact_stages(teacher)
        paired(self.name, self.student_paths, self.teacher_paths)

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"ab{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"ab{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        for i in range(len(self.student_paths or [])):
            if f"ab{i}" not in self.adapters:  # built by the init stage already: keep the trained connector
                self.add_adapter(f"ab{i}", student_feats[f"ab{i}"], teacher_feats[f"ab{i}"], "auto")

    def loss(self, student_feats: Features, teacher_feats: Features) -> torch.Tensor:
        n = len(self.student_paths or [])
        s = [self.adapters[f"ab{i}"](student_feats[f"ab{i}"]) for i in range(n)]
        return ab_loss(s, [teacher_feats[f"ab{i}"] for i in range(n)], margin=self.margin)

    def fit(self, teacher: Any, loader: Any, num_classes: int | None = None) -> None:
        """Stage 1: RepDistiller's ``init`` (see the module docstring); ``init_history`` holds the epoch losses."""
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
            self.seed,
        )

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        if self.weight("ab", epoch) == 0:
            return {}  # RepDistiller's second stage: CE only
        return {"ab": self.loss(student_feats, teacher_feats)}
