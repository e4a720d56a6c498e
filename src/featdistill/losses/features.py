"""Feature-based distillation losses: FitNets hints, attention transfer, ND (feature norm and direction).

Pure functions. Features are addressed by name elsewhere (taps); here they are plain tensors:
maps ``(B, C, *spatial)`` or embeddings ``(B, D)``. Half-precision inputs are computed in float32 and teacher
tensors made under ``torch.inference_mode`` are accepted. Shape bridges (adapters / projectors) are *not* part
of these losses: a mismatch is an error that says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.losses._util import Reduction, as_target, check_reduction, upcast

__all__ = ["fitnet_loss", "attention_map", "at_loss", "nd_loss", "class_means"]


def fitnet_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets hint loss ``MSE(r(f_s), f_t)`` (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

    ``student_feat`` must already be the *projected* student map ``r(f_s)`` (the ConvReg adapter lives in the
    method, not in the loss), so the two shapes must be equal; otherwise a ValueError names both shapes.
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"fitnet_loss: student feature shape {tuple(student_feat.shape)} does not match teacher feature "
            f"shape {tuple(teacher_feat.shape)}; project the student feature with an adapter "
            "(e.g. featdistill.adapters, a ConvReg-style conv + BN) so that it has the teacher's shape"
        )
    return F.mse_loss(upcast(student_feat), as_target(teacher_feat))


def attention_map(feat: Tensor, p: float = 2) -> Tensor:
    """Spatial attention ``Q(f) = normalize_L2(flatten(mean_c |f|^p))``, one unit vector per sample.

    From Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017 (mdistiller ``AT.py``).
    Averaging over channels makes Q independent of the channel count (student and teacher need no
    projector), and the L2 normalisation makes it invariant to the feature scale: ``Q(a·f) = Q(f)`` for any
    ``a ≠ 0``. ``feat`` is ``(B, C, *spatial)``; the result is ``(B, prod(spatial))``.
    """
    if feat.ndim < 3:
        raise ValueError(
            f"attention_map: expected a feature map (B, C, *spatial), got shape {tuple(feat.shape)}; "
            "a pooled (B, D) embedding has no spatial attention"
        )
    f = upcast(feat)
    att = f.abs().pow(p).mean(dim=1).reshape(f.shape[0], -1)
    return F.normalize(att, p=2.0, dim=1)


_ADAPTIVE_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _pool_to(feat: Tensor, size: tuple[int, ...]) -> Tensor:
    if tuple(feat.shape[2:]) == size:
        return feat
    return _ADAPTIVE_POOL[len(size)](feat, size)


def at_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], p: float = 2) -> Tensor:
    """Attention-transfer loss ``Σ_pairs mean((Q(f_s) − Q(f_t))²)`` (Zagoruyko & Komodakis, ICLR 2017).

    Pairs are matched by position in the two sequences (the method builds them from named taps). Channel
    counts may differ. If the spatial sizes differ, the larger map is adaptive-average-pooled to the smaller
    size (per spatial dimension) before the attention maps are formed, as in mdistiller. A single tensor is
    accepted as a one-element sequence. The paper's weight (1000) is the term's weight, not part of this
    function.
    """
    if isinstance(student_feats, Tensor):
        student_feats = [student_feats]
    if isinstance(teacher_feats, Tensor):
        teacher_feats = [teacher_feats]
    if len(student_feats) != len(teacher_feats) or len(student_feats) == 0:
        raise ValueError(
            f"at_loss: expected equally many (>= 1) student and teacher maps, got {len(student_feats)} and "
            f"{len(teacher_feats)}"
        )
    total: Tensor | None = None
    for i, (f_s, f_t) in enumerate(zip(student_feats, teacher_feats)):
        if f_s.ndim != f_t.ndim or f_s.ndim not in (3, 4, 5) or f_s.shape[0] != f_t.shape[0]:
            raise ValueError(
                f"at_loss: pair {i}: expected maps (B, C, *spatial) with the same batch size and number of "
                f"spatial dimensions (1 to 3), got {tuple(f_s.shape)} and {tuple(f_t.shape)}"
            )
        size = tuple(min(a, b) for a, b in zip(f_s.shape[2:], f_t.shape[2:]))
        q_s = attention_map(_pool_to(upcast(f_s), size), p)
        q_t = attention_map(_pool_to(as_target(f_t), size), p)
        term = (q_s - q_t).pow(2).mean()
        total = term if total is None else total + term
    assert total is not None
    return total


def nd_loss(
    student_emb: Tensor,
    teacher_emb: Tensor,
    class_means: Tensor,
    target: Tensor,
    reduction: Reduction = "batchmean",
    eps: float = 1e-12,
) -> Tensor:
    """ND loss of KD++ (Wang et al., "Improving Knowledge Distillation via Regularizing Feature Direction and
    Norm", ECCV 2024): per sample ``1 − ⟨e_s, c_y/‖c_y‖⟩ / max(‖e_s‖, ‖e_t‖)``, averaged over the batch.

    ``class_means`` is ``(num_classes, D)``: the teacher's class-mean embeddings, computed once offline
    (:func:`class_means`). When ``‖e_s‖ < ‖e_t‖`` the loss pulls the direction to ``c_y`` *and* grows the norm
    towards the teacher's; otherwise it is ``1 − cos(e_s, c_y)``. As in the official code the max of the norms
    is not detached (gradient flows through ``‖e_s‖`` when it is the larger). Vectorised version of the
    official per-sample loop; ``nd_factor`` is the term's weight, not part of this function.
    """
    check_reduction(reduction, "nd_loss")
    if student_emb.ndim != 2 or student_emb.shape != teacher_emb.shape:
        raise ValueError(
            f"nd_loss: expected student and teacher embeddings of the same shape (B, D), got "
            f"{tuple(student_emb.shape)} and {tuple(teacher_emb.shape)}; project the student embedding to "
            "the teacher's size first (ND projector: BatchNorm1d -> Dropout -> Linear)"
        )
    if class_means.ndim != 2 or class_means.shape[1] != student_emb.shape[1]:
        raise ValueError(
            f"nd_loss: class_means must be (num_classes, {student_emb.shape[1]}), got {tuple(class_means.shape)}"
        )
    if target.shape != (student_emb.shape[0],) or target.is_floating_point():
        raise ValueError(
            f"nd_loss: expected integer labels of shape ({student_emb.shape[0]},), got {target.dtype} "
            f"{tuple(target.shape)}"
        )
    e_s = upcast(student_emb)
    e_t = as_target(teacher_emb)
    centres = F.normalize(as_target(class_means).to(e_s.dtype)[target], p=2.0, dim=1, eps=eps)
    max_norm = torch.maximum(e_s.norm(dim=1), e_t.norm(dim=1)).clamp_min(eps)
    per_sample = 1.0 - (e_s * centres).sum(dim=1) / max_norm
    return per_sample.mean() if reduction == "batchmean" else per_sample


def class_means(embeddings: Tensor, targets: Tensor, num_classes: int, *, allow_empty: bool = False) -> Tensor:
    """Per-class mean of ``(N, D)`` embeddings → ``(num_classes, D)`` (the ND/KD++ class centres).

    One pass with ``index_add_`` (accumulated in float64, returned in the embeddings' float dtype; detached,
    since the centres are fixed targets computed offline over the training set). A class with
    no sample raises a ValueError naming it (its centre would be undefined and ND would silently ignore the
    direction); with ``allow_empty=True`` its row is zeros instead.
    """
    if embeddings.ndim != 2 or targets.shape != (embeddings.shape[0],) or targets.is_floating_point():
        raise ValueError(
            "class_means: expected embeddings (N, D) and integer targets (N,), got "
            f"{tuple(embeddings.shape)} and {targets.dtype} {tuple(targets.shape)}"
        )
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(
            f"class_means: targets must lie in [0, {num_classes}), got range "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    emb = as_target(embeddings).detach()
    sums = torch.zeros(num_classes, emb.shape[1], dtype=torch.float64, device=emb.device)
    sums.index_add_(0, targets.long(), emb.double())
    counts = torch.bincount(targets.long(), minlength=num_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty and not allow_empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise ValueError(
            f"class_means: {len(empty)} class(es) have no sample: {shown}; pass embeddings of the whole "
            "training set, or allow_empty=True to get zero rows"
        )
    means = sums / counts.clamp_min(1).to(sums.dtype)[:, None]
    return means.to(emb.dtype)
