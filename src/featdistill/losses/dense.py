"""Losses for dense prediction (segmentation, detection maps): channel-wise distillation.

CWD (Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021) turns every channel of
a ``(N, C, *spatial)`` map into a distribution over its spatial positions (softmax of the activations / τ) and
matches the student's to the teacher's with a KL divergence, so the student learns *where* each channel (class
score, feature) is active rather than its values per pixel. Reference: MMRazor
``mmrazor/models/losses/cwd.py`` (``ChannelWiseDivergence``), whose numerics this follows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.losses._util import as_target, upcast

__all__ = ["cwd_loss", "pairwise_loss", "pairwise_similarity"]


def cwd_loss(student_map: Tensor, teacher_map: Tensor, temperature: float = 1.0) -> Tensor:
    """``τ² · Σ_{n,c} KL(softmax(t_{n,c}/τ) ‖ softmax(s_{n,c}/τ)) / (N·C)``, the softmax over each channel's
    spatial positions (MMRazor's reduction: summed over positions, averaged over samples and channels).

    Shapes must be equal ``(N, C, *spatial)`` (bridge channels with an adapter first). Invariant to adding a
    constant per (sample, channel) to either map (the spatial softmax is shift invariant); zero iff the two
    spatial distributions agree. Computed in float32 for half inputs, float64 for float64.
    """
    if student_map.shape != teacher_map.shape or student_map.ndim < 3:
        raise ValueError(
            f"cwd_loss: expected student and teacher maps of one shape (N, C, *spatial), got "
            f"{tuple(student_map.shape)} and {tuple(teacher_map.shape)}; project the student map with an adapter"
        )
    if not temperature > 0:
        raise ValueError(f"cwd_loss: temperature must be > 0, got {temperature!r}")
    n, c = student_map.shape[:2]
    s = upcast(student_map).reshape(n * c, -1) / temperature
    t = as_target(teacher_map).to(s.dtype).reshape(n * c, -1) / temperature
    log_p_t = F.log_softmax(t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=1))).sum()
    return kl * temperature**2 / (n * c)


def pairwise_similarity(feat: Tensor, eps: float = 1e-8) -> Tensor:
    """``(B, M, M)`` cosine similarities between the ``M = H·W`` positions of a ``(B, C, H, W)`` map; the per-position
    L2 norm is *detached*, as in the SKD reference (``similarity`` in ``utils/criterion.py``)."""
    f = upcast(feat)
    norm = (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps).detach()
    f = (f / norm).reshape(f.shape[0], f.shape[1], -1)
    return torch.einsum("icm,icn->imn", f, f)


def pairwise_loss(student_map: Tensor, teacher_map: Tensor, scale: float = 0.5) -> Tensor:
    """Pair-wise (structured) distillation of Liu et al., "Structured Knowledge Distillation for Semantic
    Segmentation" (CVPR 2019), as its reference code computes it (``CriterionPairWiseforWholeFeatAfterPool``):
    both maps are max-pooled with a ``scale``·size kernel (ceil mode), then
    ``Σ (sim_t − sim_s)² / M² / B`` over the ``M × M`` position-similarity matrices. The channels of the two maps
    may differ (the matrices are position × position); their spatial sizes must agree.
    """
    if student_map.ndim != 4 or teacher_map.ndim != 4 or student_map.shape[2:] != teacher_map.shape[2:]:
        raise ValueError(
            f"pairwise_loss: expected (B, C, H, W) maps of one spatial size, got {tuple(student_map.shape)} and "
            f"{tuple(teacher_map.shape)}"
        )
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"pairwise_loss: scale must be in (0, 1], got {scale!r}")
    h, w = teacher_map.shape[2:]
    kernel = (max(1, int(h * scale)), max(1, int(w * scale)))
    s = F.max_pool2d(upcast(student_map), kernel, stride=kernel, ceil_mode=True)
    t = F.max_pool2d(as_target(teacher_map).to(s.dtype), kernel, stride=kernel, ceil_mode=True)
    m = s.shape[2] * s.shape[3]
    return ((pairwise_similarity(t) - pairwise_similarity(s)) ** 2).sum() / (m * m) / s.shape[0]
