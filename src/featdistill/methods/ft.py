"""FT: factor transfer — a paraphraser pre-trained on the teacher's last stage, a translator on the student's."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from featdistill.losses.feature_regression import ft_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.seeding import seeded
from featdistill.taps import Taps, TapSpec

__all__ = ["FT", "Paraphraser", "Translator", "pretrain_paraphraser"]

log = logging.getLogger(__name__)


def _norm(c: int, use_bn: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if use_bn else nn.Identity()


class Paraphraser(nn.Module):
    """RepDistiller ``models/util.py`` ``Paraphraser``: an encoder ``C → C → kC → kC`` (3×3 convs) and a decoder
    back to ``C`` (3×3 transposed convs), LeakyReLU(0.1) after every layer, no BN (``use_bn=False``)."""

    def __init__(self, c: int, k: float = 0.5, use_bn: bool = False) -> None:
        super().__init__()
        o = int(c * k)
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1), _norm(c, use_bn), act(),
            nn.Conv2d(c, o, 3, 1, 1), _norm(o, use_bn), act(),
            nn.Conv2d(o, o, 3, 1, 1), _norm(o, use_bn), act(),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(o, o, 3, 1, 1), _norm(o, use_bn), act(),
            nn.ConvTranspose2d(o, c, 3, 1, 1), _norm(c, use_bn), act(),
            nn.ConvTranspose2d(c, c, 3, 1, 1), _norm(c, use_bn), act(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """RepDistiller ``Translator``: ``C_s → C_s → kC_t → kC_t`` 3×3 convs, each with BN and LeakyReLU(0.1)."""

    def __init__(self, c_s: int, c_t: int, k: float = 0.5, use_bn: bool = True) -> None:
        super().__init__()
        o = int(c_t * k)
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(
            nn.Conv2d(c_s, c_s, 3, 1, 1), _norm(c_s, use_bn), act(),
            nn.Conv2d(c_s, o, 3, 1, 1), _norm(o, use_bn), act(),
            nn.Conv2d(o, o, 3, 1, 1), _norm(o, use_bn), act(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def _world() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def pretrain_paraphraser(
    paraphraser: Paraphraser,
    teacher: nn.Module | Any,
    loader: Iterable[Mapping[str, torch.Tensor]],
    path: str,
    epochs: int = 30,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: torch.device | str = "cpu",
) -> list[float]:
    """RepDistiller's ``init`` stage for FT: SGD on ``MSE(decoder(encoder(f_t)), f_t)`` over ``epochs`` passes of the
    training loader, the teacher frozen in eval mode; returns the mean loss per epoch.  Under DDP the gradients are
    averaged over ranks, so every rank ends with the same paraphraser."""
    paraphraser.to(device).train()
    opt = torch.optim.SGD(paraphraser.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    history: list[float] = []
    live = isinstance(teacher, nn.Module)
    taps = Taps(teacher, {"ft": TapSpec(path)}, stop_early=True) if live else None
    if live:
        was, dev_before = teacher.training, next(iter(teacher.parameters())).device
        teacher.eval().to(device)
    stack = contextlib.ExitStack()
    if taps is not None:
        stack.enter_context(taps)
    try:
        for epoch in range(epochs):
            if callable(getattr(loader, "set_epoch", None)):
                loader.set_epoch(epoch)  # type: ignore[attr-defined]
            total, n = 0.0, 0
            for batch in loader:
                with torch.no_grad():
                    if taps is not None:
                        _, feats = taps(batch["input"].to(device))
                    else:
                        feats = teacher(batch)
                f_t = feats["ft"].detach().to(device).float()
                if f_t.is_inference():
                    f_t = f_t.clone()
                _, rec = paraphraser(f_t)
                loss = F.mse_loss(rec, f_t)
                opt.zero_grad()
                loss.backward()
                if _world() > 1:
                    for p in paraphraser.parameters():
                        if p.grad is not None:
                            tdist.all_reduce(p.grad)
                            p.grad /= _world()
                opt.step()
                total, n = total + float(loss.detach()), n + 1
            history.append(total / max(n, 1))
    finally:
        stack.close()
        if live:
            teacher.train(was).to(dev_before)
    return history


@register_method
class FT(Method):
    """ "Paraphrasing Complex Network: Network Compression via Factor Transfer" (Kim, Park & Kwak, NeurIPS 2018)
    — RepDistiller ``distiller_zoo/FT.py``, ``models/util.py`` (``Paraphraser``, ``Translator``),
    ``helper/pretrain.py`` (the init stage), ``train_student.py --distill factor -a 0 -b 200``.

    Stage 1 (:meth:`fit`, before training): a paraphraser (rate k = 0.5) is trained to reconstruct the teacher's
    last stage map, ``MSE(dec(enc(f_t)), f_t)``, for ``init_epochs`` (30) epochs with SGD (lr 0.01 for ResNet/WRN
    students — RepDistiller's rule — else the run's lr; momentum 0.9, wd 5e-4); then it is frozen (eval mode, not
    trained, not checkpointed: ``run_experiment`` calls ``fit`` again on resume and, seeded, rebuilds it
    identically).  Stage 2: a translator (3 convs + BN) maps the student's last stage to the factor space and
    ``ft = mean|F(T(f_s)) − F(P(f_t))|``, ``F(f) = normalize(flatten(mean_c f²))``; ``L = CE + 200·ft``.

    Differences: the paper's factor is the encoder output itself, compared after an L2 normalisation of the whole
    factor; the code (kept) compares channel-pooled squared factors (an attention map of the factor).  The engine
    has no second training stage, so stage 1 lives in :meth:`fit` (its own SGD loop over the training loader).
    """

    name = "ft"
    applies_to = frozenset({"image"})
    paper = "Paraphrasing Complex Network: Network Compression via Factor Transfer (Kim et al., NeurIPS 2018)"
    default_weights = {"ft": 200.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_path: str | None = None,
        teacher_path: str | None = None,
        rate: float = 0.5,
        p1: float = 2.0,
        p2: float = 1.0,
        init_epochs: int = 30,
        init_lr: float = 0.01,
        init_momentum: float = 0.9,
        init_weight_decay: float = 5e-4,
        pretrain_device: str = "auto",
        seed: int = 0,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_path, self.teacher_path = student_path, teacher_path
        self.rate, self.p1, self.p2 = rate, p1, p2
        self.init_epochs, self.init_lr = int(init_epochs), float(init_lr)
        self.init_momentum, self.init_weight_decay = init_momentum, init_weight_decay
        self.pretrain_device, self.seed = pretrain_device, seed
        self.paraphraser: Paraphraser | None = None
        self.pretrain_history: list[float] = []

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or (getattr(student, "stage_paths", None) or [None])[-1]
        if teacher is not None:
            self.teacher_path = self.teacher_path or (getattr(teacher, "stage_paths", None) or [None])[-1]
        if not self.student_path or not self.teacher_path:
            raise ValueError(
                "ft: give student_path / teacher_path (the last stage maps); the models have no stage_paths"
            )

    def student_taps(self) -> dict[str, TapSpec]:
        return {"ft": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"ft": TapSpec(self.teacher_path or "")}

    def _build_paraphraser(self, c_t: int, device: torch.device | str) -> Paraphraser:
        with seeded(self.seed, "ft-paraphraser"):
            p = Paraphraser(c_t, self.rate, use_bn=False)
        self.paraphraser = p.to(device)
        return p

    def _freeze(self) -> None:
        assert self.paraphraser is not None
        self.paraphraser.eval()
        for q in self.paraphraser.parameters():
            q.requires_grad_(False)

    def fit(self, teacher: Any, loader: Iterable[Mapping[str, torch.Tensor]], num_classes: int | None = None) -> None:
        """Stage 1: build and pre-train the paraphraser on the teacher's last stage (see the class docstring)."""
        first = next(iter(loader))
        device = self.pretrain_device
        if device == "auto":  # this rank's GPU under torchrun (LOCAL_RANK), else the first; CPU without CUDA
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        if isinstance(teacher, nn.Module):
            with Taps(teacher, {"ft": TapSpec(self.teacher_path or "")}, stop_early=True) as t, torch.no_grad():
                was = teacher.training
                teacher.eval()
                dev = next(iter(teacher.parameters())).device
                _, feats = t(first["input"].to(dev))
                teacher.train(was)
        else:
            with torch.no_grad():
                feats = teacher(first)
        self._build_paraphraser(feats["ft"].shape[1], device)
        assert self.paraphraser is not None
        self.pretrain_history = pretrain_paraphraser(
            self.paraphraser,
            teacher,
            loader,
            self.teacher_path or "",
            epochs=self.init_epochs,
            lr=self.init_lr,
            momentum=self.init_momentum,
            weight_decay=self.init_weight_decay,
            device=device,
        )
        self._freeze()

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        s, t = student_feats["ft"], teacher_feats["ft"]
        if self.paraphraser is None:
            log.warning("ft: the paraphraser was not pre-trained (call method.fit(teacher, train_loader) first)")
            self._build_paraphraser(t.shape[1], s.device)
            self._freeze()
        self.adapters["translator"] = Translator(s.shape[1], t.shape[1], self.rate).to(s.device)

    def train(self, mode: bool = True) -> FT:
        super().train(mode)
        if self.paraphraser is not None:
            self.paraphraser.eval()  # frozen in stage 2 (RepDistiller: module_list[2].eval())
        return self

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        assert self.paraphraser is not None
        factor_s = self.adapters["translator"](student_feats["ft"])
        f_t = teacher_feats["ft"]
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(f_t.clone() if f_t.is_inference() else f_t.to(factor_s.dtype))
        return {"ft": ft_loss(factor_s, factor_t, self.p1, self.p2)}
