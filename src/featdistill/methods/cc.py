"""CC: correlation congruence between linearly embedded student and teacher embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from featdistill.adapters import build_adapter
from featdistill.losses._util import as_target
from featdistill.losses.similarity import cc_loss, cckd_loss
from featdistill.methods._paired import embedding
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec

CCForm = Literal["repdistiller", "gaussian", "bilinear"]


@register_method
class CC(Method):
    """ "Correlation Congruence for Knowledge Distillation" (Peng et al., ICCV 2019).

    Both pooled embeddings pass through a trained ``Linear(D → feat_dim)`` (RepDistiller ``LinearEmbed``, 128;
    adapters ``embed_s`` and ``embed_t`` — the teacher-side one is trained too, as in RepDistiller and torchdistill's
    ``Linear4CCKD``), then ``form`` picks the loss:

    * ``"repdistiller"`` (default; the code behind RepDistiller's CIFAR-100 table, ``-b 0.02``, CE 1):
      :func:`~featdistill.losses.similarity.cc_loss`, ``mean_i Σ_d |δ_i,d|·|δ_i+1,d|`` with ``δ = e_s − e_t``;
    * ``"gaussian"`` / ``"bilinear"``: torchdistill's ``CCKDLoss`` (the paper's correlation matrices,
      Taylor-expanded Gaussian RBF with ``gamma``, ``max_p``), :func:`~featdistill.losses.similarity.cckd_loss`.

    Paper vs code: the paper's loss is the B × B kernel-matrix distance (the torchdistill forms); RepDistiller's
    code, shared by the authors, is the neighbour-product form — see :func:`cc_loss`.
    """

    name = "cc"
    paper = "Correlation Congruence for Knowledge Distillation (Peng et al., ICCV 2019)"
    default_weights = {"cc": 0.02}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_path: str | None = None,
        teacher_path: str | None = None,
        feat_dim: int = 128,
        form: CCForm = "repdistiller",
        gamma: float = 0.4,
        max_p: int = 2,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        if form not in ("repdistiller", "gaussian", "bilinear"):
            raise ValueError(f"cc: form must be 'repdistiller', 'gaussian' or 'bilinear', got {form!r}")
        self.student_path, self.teacher_path = student_path, teacher_path
        self.feat_dim, self.form, self.gamma, self.max_p = feat_dim, form, gamma, max_p

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or embedding(student, self.name)
        if teacher is not None:
            self.teacher_path = self.teacher_path or embedding(teacher, self.name)
        if not self.teacher_path:
            raise ValueError("cc: give teacher_path when the teacher is not a live model")

    def student_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.teacher_path or "")}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        s, t = student_feats["emb"].flatten(1), teacher_feats["emb"].flatten(1)
        out = (s.shape[0], self.feat_dim)
        self.adapters["embed_s"] = build_adapter(tuple(s.shape), out, "linear").to(s.device)
        self.adapters["embed_t"] = build_adapter(tuple(t.shape), out, "linear").to(s.device)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        e_s = self.adapters["embed_s"](student_feats["emb"].flatten(1))
        t = as_target(teacher_feats["emb"].flatten(1)).to(e_s.dtype)
        e_t = self.adapters["embed_t"](t)
        if self.form == "repdistiller":
            return {"cc": cc_loss(e_s, e_t)}
        return {"cc": cckd_loss(e_s, e_t, kernel=self.form, gamma=self.gamma, max_p=self.max_p)}
