"""Logit-side variants of KD (method catalog II): logit standardisation, NKD, Tf-KD / LSR, and the two feature
relations DIST+ adds to DIST PAD-L2's variance-weighted embedding loss and SSKD's similarity transfer.

The logit functions take ``(N, C)`` logits (one row per valid position: per image, per pixel, per token); every
function computes in its inputs' dtype — float64 in, float64 out; half precision is upcast to float32 as in
:mod:`featdistill.losses.logits`. Teacher tensors made under ``torch.inference_mode`` are accepted.
"""

from __future__ import annotations

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

__all__ = [
    "standardize_logits",
    "LOGIT_STANDARDIZATION_EPS",
    "nkd_loss",
    "tfkd_teacher",
    "tfkd_loss",
    "lsr_loss",
    "channel_relation_loss",
    "spatial_relation_loss",
    "pad_l2_loss",
    "cosine_similarity_matrix",
    "error_rejection_rows",
    "sskd_similarity_loss",
]

#: the epsilon of the reference ``normalize`` (added to the standard deviation, not under the root)
LOGIT_STANDARDIZATION_EPS = 1e-7


def _reduce(per_sample: Tensor, reduction: Reduction) -> Tensor:
    return per_sample.mean() if reduction == "batchmean" else per_sample


def _check_temperature(temperature: float, fn: str) -> None:
    if not temperature > 0:
        raise ValueError(f"{fn}: temperature must be > 0, got {temperature!r}")


# ----------------------------------------------------------------------------------------------------
# Logit standardisation (Sun et al., CVPR 2024)
# ----------------------------------------------------------------------------------------------------


def standardize_logits(logits: Tensor, eps: float = LOGIT_STANDARDIZATION_EPS) -> Tensor:
    """Z-score each row over the class dim: ``(z − mean(z)) / (eps + std(z))``.

    "Logit Standardization in Knowledge Distillation" (Sun et al., CVPR 2024), code
    ``sunshangquan/logit-standardization-KD`` (``normalize`` in ``mdistiller/distillers/KD.py``): the standard
    deviation is PyTorch's default **unbiased** one (``C − 1`` in the denominator) and ``eps = 1e-7`` is added
    to it. The paper writes the z-score with the plain (biased) std and no ε; the two differ by the constant
    factor ``sqrt(C/(C − 1))``, which a base temperature absorbs — the code decides here. The result is
    invariant to a per-row shift ``z + a`` and, up to ε, to a per-row positive scale ``b·z``. A recipe then
    divides by its (base) temperature as usual, so the effective temperature of each row is
    ``T·std(z)``: the paper's "temperature = weighted standard deviation of the logits".

    Rows must have ``C ≥ 2`` classes (a single class has no standard deviation).
    """
    if logits.ndim != 2:
        raise ValueError(
            f"standardize_logits: expected (N, C) logits, got {tuple(logits.shape)}; flatten positions first"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"standardize_logits: needs at least 2 classes, got {logits.shape[1]}")
    z = as_target(logits)
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True)  # unbiased, as torch.Tensor.std in the reference
    return (z - mean) / (eps + std)


# ----------------------------------------------------------------------------------------------------
# NKD (Yang et al., ICCV 2023)
# ----------------------------------------------------------------------------------------------------


def _without_target(z: Tensor, target: Tensor) -> Tensor:
    """The ``(N, C − 1)`` non-target entries of each row, in class order (a gather: no host sync on GPU)."""
    cols = torch.arange(z.shape[1] - 1, device=z.device)[None, :]
    return z.gather(1, cols + (cols >= target[:, None]).long())


def nkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 1.0,
    gamma: float = 1.5,
    reduction: Reduction = "batchmean",
) -> Tensor:
    """Normalized KD: ``−t_y·log s_y − γ·T²·Σ_{j≠y} t̂_j^T · log ŝ_j^T`` (mean over rows).

    "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with Normalized Loss and
    Customized Soft Labels" (Yang et al., ICCV 2023); code ``yzd-v/cls_KD`` ``NKDLoss``. The target term uses
    ``s = softmax(z_s)`` and ``t = softmax(z_t)`` at **T = 1** with the teacher's target probability detached;
    the non-target term uses the softmax over the ``C − 1`` non-target logits (``t̂``, ``ŝ`` — the
    *normalised* non-target distributions) at temperature T, times ``γ·T²``. Reference defaults: T = 1,
    γ = 1.5 (ImageNet); its CIFAR-100 config uses T = 3, γ = 3.5.

    As in the code, the loss is a cross-entropy, not a KL: it differs from ``t_y·KL-like`` forms by the
    teacher's (student-independent) entropy terms, so its minimum is not 0. One version of ``nkd.py`` in the
    repository builds its non-target mask with ``scatter_(1, label, 1)`` on a tensor of ones (an all-true
    mask: the "non-target" softmax then covers every class); the other versions and the paper exclude the
    target, as here. ``target`` is ``(N,)`` class ids (soft labels: their argmax, as the reference does).
    """
    check_logits_pair(student_logits, teacher_logits, "nkd_loss")
    check_reduction(reduction, "nkd_loss")
    _check_temperature(temperature, "nkd_loss")
    if target.is_floating_point() and target.ndim == 2:
        target = target.argmax(dim=1)
    check_target(student_logits, target, "nkd_loss")
    if student_logits.shape[1] < 2:
        raise ValueError(f"nkd_loss: needs at least 2 classes, got {tuple(student_logits.shape)}")
    y = target.long()
    z_s, z_t = upcast(student_logits), as_target(teacher_logits)
    log_s_y = F.log_softmax(z_s, dim=1).gather(1, y[:, None]).squeeze(1)
    t_y = F.softmax(z_t, dim=1).gather(1, y[:, None]).squeeze(1).detach()
    target_term = -t_y * log_s_y
    log_s_hat = F.log_softmax(_without_target(z_s, y) / temperature, dim=1)
    t_hat = F.softmax(_without_target(z_t, y) / temperature, dim=1)
    non_target = -gamma * temperature**2 * (t_hat * log_s_hat).sum(dim=1)
    return _reduce(target_term + non_target, reduction)


# ----------------------------------------------------------------------------------------------------
# Tf-KD / LSR (Yuan et al., CVPR 2020)
# ----------------------------------------------------------------------------------------------------


def tfkd_teacher(
    target: Tensor,
    num_classes: int,
    correct_prob: float = 0.99,
    temperature: float = 20.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Tf-KD_reg's manually designed teacher: ``softmax(u / T)`` with ``u_y = a``, ``u_j = (1 − a)/(K − 1)``.

    As the reference code (``loss_kd_regularization``) does, the softmax is applied to the *probabilities*
    ``u`` divided by T (the paper writes the distribution ``p^d`` softened by T); at T = 20, K = 100 the result
    is close to uniform with a slight bump at the true class.
    """
    if not 0.0 < correct_prob < 1.0:
        raise ValueError(f"tfkd_teacher: correct_prob must be in (0, 1), got {correct_prob!r}")
    _check_temperature(temperature, "tfkd_teacher")
    if num_classes < 2:
        raise ValueError(f"tfkd_teacher: needs at least 2 classes, got {num_classes}")
    y = target.long()
    u = torch.full((y.shape[0], num_classes), (1.0 - correct_prob) / (num_classes - 1), dtype=dtype, device=y.device)
    u.scatter_(1, y[:, None], correct_prob)
    return F.softmax(u / temperature, dim=1)


def tfkd_loss(
    student_logits: Tensor,
    target: Tensor,
    correct_prob: float = 0.99,
    temperature: float = 20.0,
    multiplier: float = 1.0,
) -> Tensor:
    """Tf-KD_reg's regulariser ``multiplier · mean_{n,k} KL-pointwise(p^d ‖ softmax(z_s))`` (no T on the student).

    "Revisiting Knowledge Distillation via Label Smoothing Regularization" (Yuan et al., CVPR 2020), code
    ``yuanli2333/Teacher-free-Knowledge-Distillation`` ``loss_kd_regularization``: ``nn.KLDivLoss()`` with its
    default ``reduction="mean"`` — the pointwise KL ``p^d·(log p^d − log p_s)`` averaged over all ``N·K``
    entries, i.e. the batch-mean KL divided by K — times ``multiplier`` (100 in the ResNet-18 CIFAR-100 params,
    which undoes the 1/K). The student's log-softmax is at T = 1 (the paper divides both sides by τ); the
    teacher is :func:`tfkd_teacher`. The full Tf-KD_reg loss is ``(1 − α)·CE + α·this`` (α = ``reg_alpha``).
    Zero exactly when ``softmax(z_s) = p^d``.
    """
    check_target(student_logits, target, "tfkd_loss")
    z = upcast(student_logits)
    p_d = tfkd_teacher(target, z.shape[1], correct_prob, temperature, dtype=z.dtype)
    log_p_s = F.log_softmax(z, dim=1)
    return multiplier * F.kl_div(log_p_s, p_d, reduction="none").mean()


def lsr_loss(student_logits: Tensor, target: Tensor, smoothing: float = 0.1) -> Tensor:
    """The reference's label-smoothing regulariser: CE against ``1 − ε`` at the label and ``ε/(C − 1)`` elsewhere.

    ``loss_label_smoothing`` (ε = 0.1) in the Tf-KD code: summed over classes, divided by the batch size. Note the
    off-target mass is ``ε/(C − 1)``, not the ``ε/C`` of :func:`torch.nn.functional.cross_entropy`'s
    ``label_smoothing`` (which also keeps ``ε/C`` on the label).
    """
    check_target(student_logits, target, "lsr_loss")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"lsr_loss: smoothing must be in [0, 1), got {smoothing!r}")
    z = upcast(student_logits)
    n, c = z.shape
    q = torch.full_like(z, smoothing / (c - 1)).scatter(1, target.long()[:, None], 1.0 - smoothing)
    return -(q * F.log_softmax(z, dim=1)).sum() / n


# ----------------------------------------------------------------------------------------------------
# DIST+ feature relations (Huang et al., TPAMI 2025; torchdistill DISTPlusLoss)
# ----------------------------------------------------------------------------------------------------


def channel_relation_loss(student_feat: Tensor, teacher_feat: Tensor, eps: float = 1e-8) -> Tensor:
    """DIST+'s channel relation ``1 − mean_{b,h,w} ρ_c(f_s[b,:,h,w], f_t[b,:,h,w])``: at every position, the Pearson
    correlation across channels (centred over the channel dim, ``num / (sqrt(Σ a²·Σ b²) + eps)``).

    torchdistill ``DISTPlusLoss.channel_relation`` returns the mean correlation ``ρ`` itself and adds it to the
    loss, which *rewards* anti-correlation — unlike every other DIST relation (``1 − ρ``) and the loss's purpose;
    we take ``1 − ρ`` (the two differ by the constant 1 and the sign). Inputs ``(B, C, H, W)`` or ``(B, C)``,
    equal shapes (bridge widths with an adapter first).
    """
    if student_feat.shape != teacher_feat.shape or student_feat.ndim < 2:
        raise ValueError(
            f"channel_relation_loss: expected equal (B, C, ...) shapes, got {tuple(student_feat.shape)} and "
            f"{tuple(teacher_feat.shape)}; add an adapter to bridge them"
        )
    s, t = upcast(student_feat), as_target(teacher_feat)
    s = s - s.mean(dim=1, keepdim=True)
    t = t - t.mean(dim=1, keepdim=True)
    rho = (s * t).sum(dim=1) / (torch.sqrt((s * s).sum(dim=1) * (t * t).sum(dim=1)) + eps)
    return 1.0 - rho.mean()


def spatial_relation_loss(student_feat: Tensor, teacher_feat: Tensor, eps: float = 1e-8) -> Tensor:
    """DIST+'s spatial relation: sum the maps over channels to ``(B, H·W)``, then at every position the Pearson
    correlation **across the batch** — ``1 − mean_j ρ_b(A_s[:, j], A_t[:, j])`` (torchdistill
    ``spatial_relation`` = DIST's inter-class relation of the transposed maps; its cosine floors the norm product at
    eps, here eps is added as in :func:`featdistill.losses.logits.pearson_correlation`). Needs a batch ≥ 2.
    """
    if student_feat.ndim != 4 or teacher_feat.ndim != 4 or student_feat.shape[2:] != teacher_feat.shape[2:]:
        raise ValueError(
            f"spatial_relation_loss: expected (B, C, H, W) maps of equal H, W, got {tuple(student_feat.shape)} "
            f"and {tuple(teacher_feat.shape)}"
        )
    a_s = upcast(student_feat).sum(dim=1).flatten(1).transpose(0, 1)
    a_t = as_target(teacher_feat).sum(dim=1).flatten(1).transpose(0, 1)
    a_s = a_s - a_s.mean(dim=1, keepdim=True)
    a_t = a_t - a_t.mean(dim=1, keepdim=True)
    rho = (a_s * a_t).sum(dim=1) / (a_s.norm(dim=1) * a_t.norm(dim=1) + eps)
    return 1.0 - rho.mean()


# ----------------------------------------------------------------------------------------------------
# PAD-L2 (Zhang et al., ECCV 2020; torchdistill PADL2Loss)
# ----------------------------------------------------------------------------------------------------


def pad_l2_loss(student_emb: Tensor, teacher_emb: Tensor, log_variance: Tensor, eps: float = 1e-6) -> Tensor:
    """Prime-Aware Adaptive Distillation, L2 form: ``mean_n mean_d [(t − s)² / (eps + exp(v)) + v]``.

    "Prime-Aware Adaptive Distillation" (Zhang et al., ECCV 2020); torchdistill ``PADL2Loss`` (which notes the
    authors' code averages over the feature dims). ``v = log σ²`` is predicted per sample and dimension by a
    variance branch on the student's embedding, so samples the student cannot match ("non-prime") get a large σ²
    and a small weight, at the price of the ``+ v`` term. For fixed residual ``r`` and ``eps = 0`` the optimum is
    ``v = log r²``. Inputs ``(N, D)`` (or anything that flattens to it), equal shapes.
    """
    s, t, v = upcast(student_emb).flatten(1), as_target(teacher_emb).flatten(1), upcast(log_variance).flatten(1)
    if s.shape != t.shape or s.shape != v.shape:
        raise ValueError(
            f"pad_l2_loss: student {tuple(s.shape)}, teacher {tuple(t.shape)} and log-variance {tuple(v.shape)} "
            "must have the same (N, D) shape"
        )
    return ((t - s) ** 2 / (eps + torch.exp(v)) + v).mean(dim=1).mean()


# ----------------------------------------------------------------------------------------------------
# SSKD (Xu et al., ECCV 2020; xuguodong03/SSKD student.py)
# ----------------------------------------------------------------------------------------------------


def cosine_similarity_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``S[i, j] = a_i·b_j / max(‖a_i‖‖b_j‖, eps)`` for ``(M, D)`` and ``(N, D)`` rows — what the SSKD code builds with
    ``F.cosine_similarity`` over expanded tensors (same eps semantics), without materialising ``(M, D, N)``."""
    a, b = upcast(a), as_target(b)
    return (a @ b.transpose(0, 1)) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]).clamp_min(eps)


def error_rejection_rows(scores: Tensor, target: Tensor, keep_wrong: float) -> Tensor:
    """SSKD's error-level ranking: the rows to distil, sorted.

    A row is "correct" when ``target`` is its top score (rank 0). All correct rows are kept, plus the
    ``int(n_wrong · keep_wrong)`` wrong rows whose target ranks best (``ratio_tf`` / ``ratio_ss`` in the code).
    Ties in the rank are broken by row order (a stable sort; the code's sort is not stable).
    """
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.argmax((order == target.long()[:, None]).long(), dim=1)
    n_wrong = int((rank != 0).sum())
    keep = scores.shape[0] - n_wrong + int(n_wrong * keep_wrong)
    return torch.sort(torch.argsort(rank, stable=True)[:keep])[0]


def sskd_similarity_loss(
    student_sim: Tensor, teacher_sim: Tensor, rows: Tensor | None = None, temperature: float = 0.5
) -> Tensor:
    """SSKD's self-supervision transfer: ``T²·KL(softmax(S_t/T) ‖ softmax(S_s/T))`` batch-mean over the kept rows of
    the (rotated × normal) cosine-similarity matrices (code: ``ss_T`` 0.5)."""
    check_logits_pair(student_sim, teacher_sim, "sskd_similarity_loss")
    _check_temperature(temperature, "sskd_similarity_loss")
    s, t = upcast(student_sim), as_target(teacher_sim)
    if rows is not None:
        s, t = s[rows], t[rows]
    log_p_s = F.log_softmax(s / temperature, dim=1)
    p_t = F.softmax(t / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2
