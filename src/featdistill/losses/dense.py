"""Losses for dense prediction (segmentation, detection maps): channel-wise distillation.

CWD (Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021) turns every channel of
a ``(N, C, *spatial)`` map into a distribution over its spatial positions (softmax of the activations / τ) and
matches the student's to the teacher's with a KL divergence, so the student learns *where* each channel (class
score, feature) is active rather than its values per pixel. Reference: MMRazor
``mmrazor/models/losses/cwd.py`` (``ChannelWiseDivergence``), whose numerics this follows.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from featdistill.losses._util import as_target, upcast

__all__ = ["cwd_loss"]


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
