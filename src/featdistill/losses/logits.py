"""Logit-based distillation losses: CE, Hinton KD, DKD, DIST, focal loss, soft-target CE.

All functions are pure: they take ``(B, C)`` logits (plus labels / teacher tensors) and return a scalar, or a
``(B,)`` tensor of per-sample values with ``reduction="none"`` where offered. "Batch-mean" follows PyTorch's
``reduction="batchmean"``: summed over classes, averaged over the batch (notation of the shared
``reference/methods.md``).

Numerics: half-precision inputs are upcast to float32 (float64 stays float64); teacher tensors created under
``torch.inference_mode`` are accepted as they are. No function detaches the teacher side: the teacher source
is responsible for running the teacher without gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.losses._util import (
    Reduction,
    as_target,
    check_logits_pair,
    check_reduction,
    check_target,
    upcast,
)
from featdistill.losses.position_kd import kd_loss_topk  # noqa: F401  (re-exported: the sparse KD lives there)

__all__ = [
    "cross_entropy",
    "kd_loss",
    "kd_loss_topk",
    "dkd_terms",
    "dkd_loss",
    "pearson_correlation",
    "inter_class_relation",
    "intra_class_relation",
    "dist_terms",
    "dist_loss",
    "focal_loss",
    "soft_target_ce",
    "topk_to_probs",
]


def _reduce(per_sample: Tensor, reduction: Reduction) -> Tensor:
    return per_sample.mean() if reduction == "batchmean" else per_sample


def _check_temperature(temperature: float, fn: str) -> None:
    if not temperature > 0:
        raise ValueError(f"{fn}: temperature must be > 0, got {temperature!r}")


# ----------------------------------------------------------------------------------------------------
# Cross-entropy
# ----------------------------------------------------------------------------------------------------


def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy with optional label smoothing (Szegedy et al., "Rethinking the Inception
    Architecture", CVPR 2016).

    ``target`` is either ``(B,)`` class indices or ``(B, C)`` class probabilities (mixup / CutMix labels).
    With smoothing ε the one-hot label becomes ``(1 − ε)·onehot + ε/C`` — OFA-KD's ``CE_ls`` uses ε = 0.1.
    This is a thin wrapper over :func:`torch.nn.functional.cross_entropy` so the student's CE term is
    computed the same way everywhere (float32 under autocast).
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if target.is_floating_point():
        target = as_target(target)
    return F.cross_entropy(upcast(logits), target, label_smoothing=label_smoothing)


# ----------------------------------------------------------------------------------------------------
# Hinton KD
# ----------------------------------------------------------------------------------------------------


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    reduction: Reduction = "batchmean",
) -> Tensor:
    """Hinton KD term ``T² · KL(p_t^T ‖ p_s^T)``, batch-mean (Hinton, Vinyals, Dean, arXiv 1503.02531).

    The T² factor keeps the gradient scale roughly independent of T: with batch-mean reduction
    ``∂/∂z_s = (T/B)·(p_s^T − p_t^T)`` exactly. Equals
    ``T² · F.kl_div(log_softmax(z_s/T), softmax(z_t/T), reduction="batchmean")`` (mdistiller / RepDistiller).

    ``teacher_logits`` may also be teacher *log-probabilities* (e.g. from a top-k teacher store): the softmax
    is shift invariant per row, so the result is the same. Entries of ``-inf`` (probability 0) are fine.
    ``reduction="none"`` returns the ``(B,)`` per-sample values (still scaled by T²).
    """
    check_logits_pair(student_logits, teacher_logits, "kd_loss")
    check_reduction(reduction, "kd_loss")
    _check_temperature(temperature, "kd_loss")
    log_p_s = F.log_softmax(upcast(student_logits) / temperature, dim=1)
    p_t = F.softmax(as_target(teacher_logits) / temperature, dim=1)
    # kl_div uses xlogy(p_t, p_t): teacher zeros contribute exactly 0, no NaN.
    per_sample = F.kl_div(log_p_s, p_t, reduction="none").sum(dim=1)
    return _reduce(per_sample * temperature**2, reduction)


# ----------------------------------------------------------------------------------------------------
# DKD
# ----------------------------------------------------------------------------------------------------


def _binary_log_probs(z: Tensor, target_mask: Tensor, target: Tensor) -> Tensor:
    """``log [p_y, 1 − p_y]`` per row, computed from logits without forming ``1 − p_y`` (no cancellation)."""
    log_norm = torch.logsumexp(z, dim=1, keepdim=True)
    log_p_y = z.gather(1, target[:, None]) - log_norm
    log_p_rest = torch.logsumexp(z.masked_fill(target_mask, float("-inf")), dim=1, keepdim=True) - log_norm
    return torch.cat([log_p_y, log_p_rest], dim=1)


def _non_target(z: Tensor, target: Tensor) -> Tensor:
    """The ``(B, C − 1)`` non-target logits of each row, in class order.

    Built with a gather (column ``j`` of row ``i`` is class ``j + (j >= y_i)``) rather than boolean indexing,
    which would force a host-device synchronisation on GPU.
    """
    cols = torch.arange(z.shape[1] - 1, device=z.device)[None, :]
    return z.gather(1, cols + (cols >= target[:, None]).long())


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 4.0,
    reduction: Reduction = "batchmean",
) -> tuple[Tensor, Tensor]:
    """DKD's two terms ``(TCKD, NCKD)`` (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

    With ``p = softmax(z/T)``, ``b = [p_y, 1 − p_y]`` and ``p̂`` the softmax over the non-target classes::

        TCKD = T² · KL(b_t ‖ b_s)        NCKD = T² · KL(p̂_t ‖ p̂_s)        (batch-mean, or per sample)

    Unlike the reference code (which subtracts 1000 from the target logit) the non-target softmax is taken
    over the ``C − 1`` non-target logits themselves, so it is exact at any temperature, and ``1 − p_y`` is
    computed as a log-sum-exp over the non-target logits. Per sample the exact identity
    ``T²·KL(p_t‖p_s) = TCKD + (1 − p_t,y)·NCKD`` holds (methods.md A2).
    """
    check_logits_pair(student_logits, teacher_logits, "dkd_terms")
    check_target(student_logits, target, "dkd_terms")
    check_reduction(reduction, "dkd_terms")
    _check_temperature(temperature, "dkd_terms")
    target = target.long()
    num_classes = student_logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"dkd_terms: DKD needs at least 2 classes, got logits of shape {tuple(student_logits.shape)}")
    z_s = upcast(student_logits) / temperature
    z_t = as_target(teacher_logits) / temperature
    mask = F.one_hot(target, num_classes).bool()

    log_b_s = _binary_log_probs(z_s, mask, target)
    b_t = _binary_log_probs(z_t, mask, target).exp()
    tckd = F.kl_div(log_b_s, b_t, reduction="none").sum(dim=1)

    log_p_hat_s = F.log_softmax(_non_target(z_s, target), dim=1)
    p_hat_t = F.softmax(_non_target(z_t, target), dim=1)
    nckd = F.kl_div(log_p_hat_s, p_hat_t, reduction="none").sum(dim=1)

    scale = temperature**2
    return _reduce(tckd * scale, reduction), _reduce(nckd * scale, reduction)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    reduction: Reduction = "batchmean",
) -> Tensor:
    """DKD loss ``α·TCKD + β·NCKD`` (Zhao et al., CVPR 2022); see :func:`dkd_terms`.

    Defaults are the CIFAR-100 ones (α = 1, β = 8, T = 4; ImageNet: β = 0.5, T = 1). The linear warm-up
    ``min(epoch/warmup, 1)`` of the paper is *not* applied here: it is the term's weight schedule
    (``linear_warmup`` in :mod:`featdistill.losses.schedule`). Note that α = β = 1 is not KD: it over-weights
    NCKD by ``1/(1 − p_t,y)`` and is ≥ the KD term.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature=temperature, reduction=reduction)
    return alpha * tckd + beta * nckd


# ----------------------------------------------------------------------------------------------------
# DIST
# ----------------------------------------------------------------------------------------------------


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise Pearson correlation of two ``(N, M)`` matrices: centre each row, then cosine with ``eps``.

    Matches DIST's official ``pearson_correlation`` (``a·b / (‖a‖‖b‖ + eps)``): a constant row gives 0, and
    ``|ρ| < 1`` strictly, so DIST terms stay in ``[0, 2]``.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def inter_class_relation(y_s: Tensor, y_t: Tensor, eps: float = 1e-8) -> Tensor:
    """DIST's ``L_inter = 1 − mean_i ρ(Y_s[i,:], Y_t[i,:])``: per-sample relation across classes.

    Invariant to a positive affine map of each row of ``y_s`` (Huang et al., NeurIPS 2022).
    """
    return 1.0 - pearson_correlation(y_s, y_t, eps).mean()


def intra_class_relation(y_s: Tensor, y_t: Tensor, eps: float = 1e-8) -> Tensor:
    """DIST's ``L_intra = 1 − mean_j ρ(Y_s[:,j], Y_t[:,j])``: per-class relation across the batch.

    By definition ``intra(Y_s, Y_t) = inter(Y_sᵀ, Y_tᵀ)``; needs a batch of at least 2 to be informative.
    """
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1), eps)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """DIST's ``(L_inter, L_intra)`` on ``Y = softmax(z/τ)``, each multiplied by ``τ²``.

    The official classification loss (``hunto/image_classification_sota``) uses τ = 1, where the factor is 1.
    For τ ≠ 1 we follow the reimplementations (torchdistill ``DISTLoss``) that scale each term by τ² — the
    Pearson terms themselves are bounded, so the factor only rescales the weight.
    """
    check_logits_pair(student_logits, teacher_logits, "dist_terms")
    _check_temperature(temperature, "dist_terms")
    y_s = F.softmax(upcast(student_logits) / temperature, dim=1)
    y_t = F.softmax(as_target(teacher_logits) / temperature, dim=1)
    scale = temperature**2
    return scale * inter_class_relation(y_s, y_t), scale * intra_class_relation(y_s, y_t)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """DIST loss ``β·L_inter + γ·L_intra`` (Huang et al., "Knowledge Distillation from A Stronger Teacher",
    NeurIPS 2022); see :func:`dist_terms`. Defaults β = γ = 1, τ = 1 as in the official code."""
    inter, intra = dist_terms(student_logits, teacher_logits, temperature=temperature)
    return beta * inter + gamma * intra


# ----------------------------------------------------------------------------------------------------
# Focal loss
# ----------------------------------------------------------------------------------------------------


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    reduction: Reduction = "batchmean",
) -> Tensor:
    """Multi-class focal loss ``−α_y (1 − p_y)^γ log p_y``, batch mean (Lin et al., "Focal Loss for Dense
    Object Detection", ICCV 2017).

    Down-weights easy examples so training focuses on hard / minority ones (used by the KD-OCT recipe).
    ``alpha`` is ``None`` (no weighting), a scalar multiplier, or per-class weights of length C (``α_y`` is
    picked by the label). With ``gamma = 0`` and ``alpha = None`` it equals plain cross-entropy. ``1 − p_y``
    is computed as ``−expm1(log p_y)`` to stay accurate for confident predictions.
    """
    check_target(logits, target, "focal_loss")
    check_reduction(reduction, "focal_loss")
    if gamma < 0:
        raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma!r}")
    target = target.long()
    log_p_y = F.log_softmax(upcast(logits), dim=1).gather(1, target[:, None]).squeeze(1)
    per_sample = -log_p_y
    if gamma != 0:
        per_sample = per_sample * (-torch.expm1(log_p_y)).clamp_min(0.0).pow(gamma)
    if alpha is not None:
        if isinstance(alpha, (int, float)):
            per_sample = per_sample * float(alpha)
        else:
            weights = torch.as_tensor(alpha, dtype=per_sample.dtype, device=per_sample.device)
            if weights.shape != (logits.shape[1],):
                raise ValueError(
                    f"focal_loss: alpha must be a scalar or have one weight per class ({logits.shape[1]}), "
                    f"got shape {tuple(weights.shape)}"
                )
            per_sample = per_sample * weights[target]
    return _reduce(per_sample, reduction)


# ----------------------------------------------------------------------------------------------------
# Soft-target CE (teacher given as a distribution)
# ----------------------------------------------------------------------------------------------------


def soft_target_ce(
    student_logits: Tensor,
    teacher_probs: Tensor,
    temperature: float = 1.0,
    reduction: Reduction = "batchmean",
) -> Tensor:
    """Cross-entropy ``−Σ_c q_c · log softmax(z_s/T)_c``, batch-mean, against a given distribution ``q``.

    For teachers stored as probabilities rather than logits: FKD / SRe2L region soft labels, MEAL V2's
    ensemble-averaged probabilities (its ``L_KL``), or a top-k store expanded with :func:`topk_to_probs`.
    ``q`` is used as given (the temperature only divides the student logits) and no T² factor is applied;
    it differs from KL(q ‖ p_s) by the entropy H(q), a constant for the student, so the gradients are the
    same.
    """
    check_logits_pair(student_logits, teacher_probs, "soft_target_ce")
    check_reduction(reduction, "soft_target_ce")
    _check_temperature(temperature, "soft_target_ce")
    log_p_s = F.log_softmax(upcast(student_logits) / temperature, dim=1)
    q = as_target(teacher_probs)
    # where q == 0 the term is 0 even if log p_s = -inf (0·log 0 := 0)
    per_sample = -torch.where(q > 0, q * log_p_s, torch.zeros_like(log_p_s)).sum(dim=1)
    return _reduce(per_sample, reduction)


def topk_to_probs(topk_probs: Tensor, topk_indices: Tensor, num_classes: int) -> Tensor:
    """Expand top-k teacher probabilities ``(B, k)`` to a dense ``(B, C)`` distribution.

    The remaining mass ``1 − Σ top-k`` is spread uniformly over the other ``C − k`` classes, as FKD does for
    its compressed soft labels (see ``reference/efficiency.md``; note this is a biased estimate of the
    teacher). Rows then sum to 1 (up to rounding of the stored values).
    """
    if topk_probs.shape != topk_indices.shape or topk_probs.ndim != 2:
        raise ValueError(
            "topk_to_probs: expected topk_probs and topk_indices of the same shape (B, k), got "
            f"{tuple(topk_probs.shape)} and {tuple(topk_indices.shape)}"
        )
    k = topk_probs.shape[1]
    if k > num_classes:
        raise ValueError(f"topk_to_probs: k = {k} exceeds num_classes = {num_classes}")
    probs = upcast(as_target(topk_probs))
    rest = (1.0 - probs.sum(dim=1, keepdim=True)).clamp_min(0.0)
    fill = rest / (num_classes - k) if num_classes > k else torch.zeros_like(rest)
    dense = fill.expand(probs.shape[0], num_classes).clone()
    return dense.scatter(1, topk_indices.long(), probs)
