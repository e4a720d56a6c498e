"""ND (feature norm and direction) and the recipes built on it: KD++ (``nd``) and DKD++ (``dkd++``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from featdistill.losses._util import upcast
from featdistill.losses.features import class_means as _class_means
from featdistill.losses.features import nd_loss
from featdistill.losses.logits import dkd_loss, kd_loss
from featdistill.methods._util import collect_features
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec

__all__ = ["ND", "DKDPlusPlus", "NDProjector", "fit_class_means"]


class NDProjector(nn.Sequential):
    """The ND projector used when embedding sizes differ: ``BatchNorm1d(d_s) → Dropout(p) → Linear(d_s → d_t)``.

    BN weight 1, bias 0 (official ``embtrans_cifar.py``).  Dropped at export.
    """

    def __init__(self, d_s: int, d_t: int, dropout: float = 0.5) -> None:
        bn = nn.BatchNorm1d(d_s)
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
        super().__init__(bn, nn.Dropout(dropout), nn.Linear(d_s, d_t))


def fit_class_means(
    teacher: nn.Module | Any,
    loader: Iterable[Mapping[str, torch.Tensor]],
    num_classes: int | None = None,
    embedding_path: str | None = None,
    max_batches: int | None = None,
) -> torch.Tensor:
    """The teacher's class-mean embeddings ``(num_classes, D)``, computed once before training.

    ``teacher`` is a zoo model (its ``embedding_path`` is tapped; the forward stops there) or a teacher source
    providing ``"emb"`` (e.g. a teacher store built with an ``emb`` tap).  The ND paper uses the whole training
    set *with train-time augmentation*, so pass the training loader.
    """
    if isinstance(teacher, nn.Module):
        path = embedding_path or getattr(teacher, "embedding_path", None)
        if not path:
            raise ValueError(f"fit_class_means: {type(teacher).__name__} has no `embedding_path`; pass embedding_path=")
        feats = collect_features(teacher, loader, {"emb": TapSpec(path)}, max_batches=max_batches)
    else:
        feats = collect_features(teacher, loader, {"emb": "emb"}, max_batches=max_batches)
    emb, y = feats["emb"].flatten(1), feats["target"]
    n = num_classes if num_classes is not None else int(y.max()) + 1
    return _class_means(emb, y, n)


class _NDBase(Method):
    """Shared wiring: embedding taps, optional projector, the class-mean buffer and the ND term."""

    def __init__(
        self,
        class_means: torch.Tensor | None = None,
        student_path: str | None = None,
        teacher_path: str | None = None,
        temperature: float = 4.0,
        dropout: float = 0.5,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        self.student_path, self.teacher_path = student_path, teacher_path
        self.temperature, self.dropout = temperature, dropout
        self.register_buffer(
            # given means keep their precision (float64 stays float64); half precision is upcast
            "class_means",
            None if class_means is None else upcast(torch.as_tensor(class_means)).clone(),
        )

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or getattr(student, "embedding_path", None)
        if teacher is not None:
            self.teacher_path = self.teacher_path or getattr(teacher, "embedding_path", None)
        if not self.student_path or not self.teacher_path:
            raise ValueError(
                f"{self.name}: give student_path / teacher_path (the pooled penultimate embedding); "
                "the models have no `embedding_path`"
            )

    def student_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.teacher_path or ""), "logits": TapSpec("")}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        d_s, d_t = student_feats["emb"].flatten(1).shape[1], teacher_feats["emb"].flatten(1).shape[1]
        if d_s != d_t:
            self.adapters["emb"] = NDProjector(d_s, d_t, self.dropout).to(student_feats["emb"].device)

    def fit_class_means(
        self,
        teacher: nn.Module | Any,
        loader: Iterable[Mapping[str, torch.Tensor]],
        num_classes: int | None = None,
        max_batches: int | None = None,
    ) -> torch.Tensor:
        """Compute and store the teacher's class means (see :func:`fit_class_means`); returns them."""
        path = self.teacher_path if isinstance(teacher, nn.Module) else None
        means = fit_class_means(teacher, loader, num_classes, embedding_path=path, max_batches=max_batches)
        self.class_means = means.to(self.class_means.device if self.class_means is not None else "cpu")
        return means

    def fit(
        self, teacher: nn.Module | Any, loader: Iterable[Mapping[str, torch.Tensor]], num_classes: int | None = None
    ) -> None:
        """The uniform pre-training hook (same name as :meth:`LELP.fit`): computes the class means."""
        self.fit_class_means(teacher, loader, num_classes)

    def nd_term(self, student_feats: Features, teacher_feats: Features, target: torch.Tensor) -> torch.Tensor:
        if self.class_means is None:
            raise RuntimeError(
                f"{self.name}: the teacher's class means are not set; call "
                "method.fit_class_means(teacher, train_loader) before training, or pass class_means="
            )
        e_s = student_feats["emb"].flatten(1)
        if "emb" in self.adapters:
            e_s = self.adapters["emb"](e_s)
        e_t = teacher_feats["emb"].flatten(1)
        return nd_loss(e_s, e_t, self.class_means.to(e_s.device), target)


@register_method
class ND(_NDBase):
    """ "Improving Knowledge Distillation via Regularizing Feature Norm and Direction" (Wang et al., ECCV 2024)
    — KD++.

    Adds the ND term to Hinton KD: per sample ``1 − ⟨e_s, c_y/‖c_y‖⟩ / max(‖e_s‖, ‖e_t‖)`` where ``c_y`` is
    the teacher's class-mean embedding (computed once, offline: :meth:`fit_class_means`).  It pulls the
    student's penultimate embedding towards the class-mean *direction* and its *norm* up to the teacher's.
    ``L = CE + kd·min(1, epoch/20)·T²·KL + nd·ND``; default weights are the ResNet-56→20 ones (kd 1, nd 2);
    per-pair weights in ``benchmarks.md`` §3.3.  A ``BN → Dropout → Linear`` projector bridges embedding sizes.
    """

    name = "nd"
    paper = "Improving Knowledge Distillation via Regularizing Feature Norm and Direction (Wang et al., ECCV 2024)"
    default_weights = {"kd": {"value": 1.0, "warmup": 20}, "nd": 2.0}
    default_ce_weight = 1.0

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        return {
            "kd": kd_loss(*self.standardized(student_feats["logits"], teacher_feats["logits"]), self.temperature),
            "nd": self.nd_term(student_feats, teacher_feats, batch["target"]),
        }


@register_method
class DKDPlusPlus(_NDBase):
    """DKD++ from "Improving Knowledge Distillation via Regularizing Feature Norm and Direction" (ECCV 2024).

    DKD (``α·TCKD + β·NCKD`` with its 20-epoch warm-up) plus the ND term.  Defaults are the ND repository's
    ResNet-32x4→8x4 values (α 2, β 8, nd 0.5, T 4).
    """

    name = "dkd++"
    paper = "DKD++: Improving Knowledge Distillation via Regularizing Feature Norm and Direction (ECCV 2024)"
    default_weights = {"dkd": {"value": 1.0, "warmup": 20}, "nd": 0.5}
    default_ce_weight = 1.0

    def __init__(
        self, class_means: torch.Tensor | None = None, alpha: float = 2.0, beta: float = 8.0, **kwargs: Any
    ) -> None:
        super().__init__(class_means, **kwargs)
        self.alpha, self.beta = alpha, beta

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        z_s, z_t = self.standardized(student_feats["logits"], teacher_feats["logits"])
        dkd = dkd_loss(
            z_s,
            z_t,
            batch["target"],
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
        )
        return {"dkd": dkd, "nd": self.nd_term(student_feats, teacher_feats, batch["target"])}
