"""Feature-regression distillation losses of catalog II, each checked against its official code:

* VID — :func:`vid_loss` (Ahn et al., CVPR 2019; RepDistiller ``distiller_zoo/VID.py``);
* FT — :func:`ft_factor`, :func:`ft_loss` (Kim et al., NeurIPS 2018; RepDistiller ``distiller_zoo/FT.py``);
* OFD — :func:`ofd_margin`, :func:`ofd_partial_l2` (Heo et al., ICCV 2019; mdistiller ``distillers/OFD.py``);
* ReviewKD — :func:`hcl_loss` (Chen et al., CVPR 2021; mdistiller ``distillers/ReviewKD.py``);
* SRD — :func:`srd_feature_loss`, :func:`srd_kl` (Miles & Mikolajczyk, AAAI 2024; torchdistill
  ``losses/mid_level.py`` ``SRDLoss``).

Pure functions over plain tensors; regressors, connectors and fusion modules live in the recipes.  Every function
computes in its inputs' dtype (float64 in → float64 out; half precision in float32) and accepts teacher tensors
made under ``torch.inference_mode``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.losses._util import as_target, upcast

__all__ = [
    "match_spatial",
    "vid_variance",
    "vid_loss",
    "ft_factor",
    "ft_loss",
    "ofd_margin",
    "ofd_partial_l2",
    "hcl_loss",
    "srd_feature_loss",
    "srd_kl",
]


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two maps to the other's height (RepDistiller's ``VIDLoss``/``FactorTransfer``
    rule: square ``(H, H)`` output, decided by the heights)."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


# -- VID ------------------------------------------------------------------------------------------------------
def vid_variance(log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """``σ² = log(1 + exp(α)) + eps`` per channel (the code's softplus, written out as it is there)."""
    return torch.log(1.0 + torch.exp(log_scale)) + eps


def vid_loss(pred_mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """VID's negative log-likelihood ``mean(½·((μ(f_s) − f_t)²/σ² + log σ²))`` over batch, channels and positions.

    ``pred_mean`` is the regressor's output ``μ(f_s)`` ``(B, C_t, H, W)`` (already spatially matched to ``target``),
    ``log_scale`` ``(C_t,)`` the per-channel parameter of the heteroscedastic variance (:func:`vid_variance`).
    As in the code, the constant ``½·log 2π`` of the Gaussian is dropped and the mean (not the sum) is taken.
    """
    mu = upcast(pred_mean)
    t = as_target(target).to(mu.dtype)
    if mu.shape != t.shape:
        raise ValueError(f"vid_loss: prediction {tuple(mu.shape)} and target {tuple(t.shape)} differ in shape")
    var = vid_variance(log_scale.to(mu.dtype), eps).view(1, -1, *([1] * (mu.ndim - 2)))
    return torch.mean(0.5 * ((mu - t) ** 2 / var + torch.log(var)))


# -- FT ---------------------------------------------------------------------------------------------------------
def ft_factor(f: Tensor, p1: float = 2) -> Tensor:
    """FT's factor ``normalize(flatten(mean_c f^p1))`` per sample (``FactorTransfer.factor``; ``F.normalize``'s
    eps 1e-12).  Note ``f.pow(p1)``, not ``|f|^p1``: with the default p1 = 2 the two agree."""
    x = upcast(f)
    return F.normalize(x.pow(p1).mean(1).reshape(x.shape[0], -1))


def ft_loss(factor_s: Tensor, factor_t: Tensor, p1: float = 2, p2: float = 1) -> Tensor:
    """``mean(|F(f_s) − F(f_t)|^p2)`` with ``F`` = :func:`ft_factor` (p2 = 1: the L1 distance of the paper).

    ``factor_s`` is the translator's output, ``factor_t`` the paraphraser's encoding (maps; the larger is pooled to
    the other's height first, as in the code)."""
    s, t = match_spatial(upcast(factor_s), as_target(factor_t).to(upcast(factor_s).dtype))
    d = ft_factor(s, p1) - ft_factor(t, p1)
    return d.abs().mean() if p2 == 1 else d.pow(p2).mean()


# -- OFD --------------------------------------------------------------------------------------------------------
def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """Per-channel margin ``m = E[x | x < 0]`` of ``x ~ N(β, γ²)`` (the teacher BN before the ReLU).

    ``m = β − |γ|·φ(β/|γ|)/Φ(−β/|γ|)`` where ``Φ(−β/|γ|) > 0.001``, else ``−3|γ|`` (mdistiller ``OFD``; computed
    in float64 like its per-channel Python floats, returned in ``bn_weight``'s dtype).
    """
    s = bn_weight.detach().double().abs()
    m = bn_bias.detach().double()
    z = -m / s
    cdf = 0.5 * torch.erfc(-z / math.sqrt(2.0))  # Φ(−m/s)
    pdf = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > 0.001, -s * pdf / cdf + m, -3 * s)
    return margin.to(bn_weight.dtype if bn_weight.is_floating_point() else torch.float32)


def ofd_partial_l2(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 (mdistiller ``feat_loss``): ``Σ_{c,h,w} mean_b d²`` where ``d`` counts only where it matters:

    * ``(s − m)²`` where ``s > m`` and ``t ≤ m`` (the teacher is off: the student need only go below the margin);
    * ``(s − t)²`` where ``s > t``, ``m < t ≤ 0`` (the code's extra case for a teacher between the margin and 0);
    * ``(s − t)²`` where ``t > 0`` (the teacher is on: plain L2).

    ``source`` is the student's connector output, ``target`` the teacher's pre-ReLU map, ``margin`` ``(C,)`` or
    broadcastable.  The batch is averaged and every other dimension summed, as in the code.
    """
    s = upcast(source)
    t = as_target(target).to(s.dtype)
    m = margin.to(s.dtype)
    if m.ndim == 1:
        m = m.view(1, -1, *([1] * (s.ndim - 2)))
    loss = (
        (s - m) ** 2 * ((s > m) & (t <= m)).to(s.dtype)
        + (s - t) ** 2 * ((s > t) & (t > m) & (t <= 0)).to(s.dtype)
        + (s - t) ** 2 * (t > 0).to(s.dtype)
    )
    return loss.abs().mean(dim=0).sum()


# -- ReviewKD ---------------------------------------------------------------------------------------------------
def hcl_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """ReviewKD's hierarchical context loss summed over the stage pairs (mdistiller ``hcl_loss``).

    Per pair of ``(B, C, H, W)`` maps: ``MSE(f_s, f_t)`` at full size, plus for each level ``l`` in ``levels``
    smaller than ``H`` the MSE of both maps adaptive-average-pooled to ``l × l``, weighted ``1, 1/2, 1/4, …``
    (full size first), and the sum divided by the total weight.
    """
    if len(student) != len(teacher):
        raise ValueError(f"hcl_loss: {len(student)} student maps vs {len(teacher)} teacher maps")
    total: Tensor | None = None
    for fs, ft in zip(student, teacher):
        s = upcast(fs)
        t = as_target(ft).to(s.dtype)
        if s.shape != t.shape:
            raise ValueError(f"hcl_loss: student {tuple(s.shape)} and teacher {tuple(t.shape)} maps differ")
        h = s.shape[2]
        loss = F.mse_loss(s, t, reduction="mean")
        cnt, tot = 1.0, 1.0
        for level in levels:
            if level >= h:
                continue
            cnt /= 2.0
            loss = (
                loss
                + F.mse_loss(F.adaptive_avg_pool2d(s, (level, level)), F.adaptive_avg_pool2d(t, (level, level))) * cnt
            )
            tot += cnt
        loss = loss / tot
        total = loss if total is None else total + loss
    if total is None:
        raise ValueError("hcl_loss: no feature pair")
    return total


# -- SRD --------------------------------------------------------------------------------------------------------
def srd_feature_loss(student: Tensor, teacher: Tensor, exponent: float = 4.0) -> Tensor:
    """SRD's feature term ``log Σ_{b,d} |f_s − f_t|^p`` (torchdistill ``SRDLoss``: a log of the **sum** over batch
    and dims, exponent 4 in the official config); the recipe weights it 2 as ``SRDLoss`` does."""
    s = upcast(student)
    t = as_target(teacher).to(s.dtype)
    if s.shape != t.shape:
        raise ValueError(f"srd_feature_loss: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ in shape")
    return torch.log((s - t).abs().pow(exponent).sum())


def srd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """SRD's logit term ``KL(softmax(z_t/T) ‖ softmax(z_s/T))``, batchmean, **without** the T² factor (torchdistill
    ``SRDLoss``: ``nn.KLDivLoss(reduction="batchmean")``; T = 1 in the official config)."""
    s = upcast(student_logits)
    t = as_target(teacher_logits).to(s.dtype)
    return F.kl_div(F.log_softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1), reduction="batchmean")
