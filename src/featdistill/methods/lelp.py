"""LELP: few-class distillation through linear projections of the teacher's embedding into pseudo-subclasses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses.logits import soft_target_ce
from featdistill.methods._util import collect_features
from featdistill.methods.base import Features, Method, register_method
from featdistill.seeding import generator
from featdistill.taps import TapSpec, resolve_module

__all__ = ["LELP", "SubclassHead", "null_space_projector", "subclass_directions", "subclass_targets"]


def null_space_projector(w: torch.Tensor) -> torch.Tensor:
    """``P = I − Wᵀ(WWᵀ)⁺W`` for a ``(C, D)`` classifier weight: removes the directions the logits already carry."""
    w = w.double()
    return (torch.eye(w.shape[1], dtype=w.dtype) - w.T @ torch.linalg.pinv(w @ w.T) @ w).float()


def subclass_directions(
    emb: torch.Tensor, target: torch.Tensor, num_classes: int, num_subclasses: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: the top-``S`` PCA directions of its embeddings, randomly rotated inside that subspace.

    Returns ``(dirs (C, S, D), means (C, D))``; each ``dirs[c]`` has orthonormal rows.  The rotation (a Haar
    orthogonal ``S × S`` matrix from an explicit generator) spreads the variance evenly over the S directions.
    """
    d = emb.shape[1]
    if num_subclasses > d:
        raise ValueError(f"lelp: {num_subclasses} subclasses need an embedding of at least that size, got {d}")
    g = generator(seed, "lelp-rotation")
    dirs, means = [], []
    for c in range(num_classes):
        h = emb[target == c].double()
        if h.shape[0] < num_subclasses + 1:
            raise ValueError(f"lelp: class {c} has {h.shape[0]} samples, need > {num_subclasses} for its PCA")
        mu = h.mean(0)
        _, _, vh = torch.linalg.svd(h - mu, full_matrices=False)
        v = vh[:num_subclasses]  # (S, D), orthonormal rows
        q, r = torch.linalg.qr(torch.randn(num_subclasses, num_subclasses, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))[None, :]  # Haar-distributed
        dirs.append((q.T @ v).float())
        means.append(mu.float())
    return torch.stack(dirs), torch.stack(means)


def subclass_targets(
    teacher_logits: torch.Tensor,
    emb: torch.Tensor,
    dirs: torch.Tensor,
    means: torch.Tensor,
    projector: torch.Tensor | None = None,
    beta: float = 1.0,
) -> torch.Tensor:
    """``q(c, s | x) = p_t(c|x) · softmax_s(⟨h̃ − μ_c, u_{c,s}⟩ / β)`` as a ``(B, C, S)`` tensor.

    ``h̃ = P h`` (null-space projection, optional).  Summing over ``s`` gives back ``p_t(c|x)`` exactly.
    """
    h = emb.float() if projector is None else emb.float() @ projector.T
    proj = torch.einsum("bd,csd->bcs", h, dirs) - torch.einsum("cd,csd->cs", means, dirs)[None]
    sub = F.softmax(proj / beta, dim=2)
    return F.softmax(teacher_logits.float(), dim=1)[:, :, None] * sub


class SubclassHead(nn.Module):
    """An ``S·C``-way linear head whose forward returns **class** logits ``logsumexp_s z_{c,s}``.

    ``softmax`` of the class logits equals the sum of the subclass probabilities, so the student still outputs
    ``(B, C)`` logits (evaluation, CE and export unchanged); LELP trains the inner ``fc`` (tap ``<path>.fc``).
    """

    def __init__(self, in_features: int, num_classes: int, num_subclasses: int) -> None:
        super().__init__()
        self.num_classes, self.num_subclasses = num_classes, num_subclasses
        self.in_features = in_features
        self.fc = nn.Linear(in_features, num_classes * num_subclasses)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x).view(x.shape[0], self.num_classes, self.num_subclasses)
        return torch.logsumexp(z, dim=2)


@register_method
class LELP(Method):
    """ "Linear Projections of Teacher Embeddings for Few-Class Distillation" (Loo, Iliopoulos, Hu, Vee;
    arXiv 2409.20449) — reconstructed from a secondary summary.

    With few classes the teacher's soft labels carry little information.  LELP splits every class into ``S``
    pseudo-subclasses: per class, the top PCA directions of the teacher's (null-space projected) embeddings,
    randomly rotated; the target ``q(c,s|x) = p_t(c|x)·softmax_s(⟨h̃ − μ_c, u_{c,s}⟩/β)``.  The student's
    classifier is replaced by an ``S·C``-way :class:`SubclassHead` trained with soft CE against ``q``; its
    class prediction sums the subclass probabilities.  The paper uses no ground-truth CE (``ce_weight = 0``).
    Call :meth:`fit` (one pass of the teacher over the training set) before training.
    """

    name = "lelp"
    paper = "Linear Projections of Teacher Embeddings for Few-Class Distillation (Loo et al., 2024)"
    default_weights = {"lelp": 1.0}
    default_ce_weight = 0.0

    def __init__(
        self,
        num_subclasses: int = 4,
        beta: float = 1.0,
        null_space: bool = True,
        seed: int = 0,
        teacher_path: str | None = None,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        self.num_subclasses, self.beta, self.null_space, self.seed = num_subclasses, beta, null_space, seed
        self.teacher_path = teacher_path
        self.head_path: str | None = None
        self.register_buffer("dirs", None)
        self.register_buffer("means", None)
        self.register_buffer("projector", None)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if teacher is not None:
            self.teacher_path = self.teacher_path or getattr(teacher, "embedding_path", None)
        if not self.teacher_path:
            raise ValueError("lelp: give teacher_path (the teacher's penultimate embedding)")
        path = getattr(student, "classifier_path", None)
        if not path:
            raise ValueError("lelp: the student needs a `classifier_path` (its final Linear) to get an S·C head")
        head = resolve_module(student, path)
        if not isinstance(head, SubclassHead):
            if not isinstance(head, nn.Linear):
                raise TypeError(f"lelp: {path!r} is a {type(head).__name__}, expected nn.Linear")
            new = SubclassHead(head.in_features, head.out_features, self.num_subclasses)
            new.to(head.weight.device)
            student.set_submodule(path, new)
        self.head_path = path

    def student_taps(self) -> dict[str, TapSpec]:
        return {"sub": TapSpec(f"{self.head_path}.fc")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.teacher_path or ""), "logits": TapSpec("")}

    @torch.no_grad()
    def fit(
        self,
        teacher: nn.Module | Any,
        loader: Iterable[Mapping[str, torch.Tensor]],
        num_classes: int | None = None,
        classifier_weight: torch.Tensor | None = None,
        max_batches: int | None = None,
    ) -> None:
        """One pass of the teacher: null-space projector from its classifier weight, per-class directions."""
        taps = {"emb": TapSpec(self.teacher_path or "")} if isinstance(teacher, nn.Module) else {"emb": "emb"}
        feats = collect_features(teacher, loader, taps, max_batches=max_batches)
        emb, y = feats["emb"].flatten(1), feats["target"]
        c = num_classes if num_classes is not None else int(y.max()) + 1
        projector = None
        if self.null_space:
            if classifier_weight is None:
                if not isinstance(teacher, nn.Module) or not getattr(teacher, "classifier_path", None):
                    raise ValueError("lelp: pass classifier_weight= (the teacher's (C, D) output weight)")
                classifier_weight = resolve_module(teacher, teacher.classifier_path).weight
            projector = null_space_projector(classifier_weight.detach().cpu())
            emb = emb @ projector.T
        dirs, means = subclass_directions(emb, y, c, self.num_subclasses, self.seed)
        self.dirs, self.means, self.projector = dirs, means, projector

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        if self.dirs is None:
            raise RuntimeError("lelp: call method.fit(teacher, train_loader) before training")
        z, z_t = self.standardized(student_feats["sub"], teacher_feats["logits"])  # S·C and C logits, per row
        dev = z.device
        proj = None if self.projector is None else self.projector.to(dev)
        q = subclass_targets(
            z_t,
            teacher_feats["emb"].flatten(1),
            self.dirs.to(dev),
            self.means.to(dev),
            proj,
            self.beta,
        )
        return {"lelp": soft_target_ce(z, q.reshape(z.shape[0], -1))}
