"""Matching objectives of DC/DSA, DM, DataDAM and MTT as pure functions.

Kept free of loops over networks or data so each can be tested against its definition
(``methods.md`` Part E) in isolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "mean_embedding_distance",
    "attention_map",
    "attention_distance",
    "gradient_distance",
    "layer_gradient_distance",
    "trajectory_loss",
    "get_loops",
]


def mean_embedding_distance(real: Tensor, syn: Tensor) -> Tensor:
    """DM: ``‖mean(real) − mean(syn)‖²`` — first-moment MMD with a linear kernel (per class)."""
    return ((real.flatten(1).mean(0) - syn.flatten(1).mean(0)) ** 2).sum()


def attention_map(feature: Tensor, p: float = 4.0) -> Tensor:
    """DataDAM's spatial attention: ``normalize_L2(flatten(Σ_channels |F|^p))`` per sample → ``(B, H·W)``.

    Summing over channels makes the map invariant to channel permutations; the L2 normalisation removes the
    scale of the feature, so only *where* the network responds is matched.
    """
    if feature.dim() == 2:
        return F.normalize(feature.abs().pow(p), dim=1)
    return F.normalize(feature.abs().pow(p).sum(1).flatten(1), dim=1)


def attention_distance(real_feats: Sequence[Tensor], syn_feats: Sequence[Tensor], p: float = 4.0) -> Tensor:
    """Σ_l MSE(mean attention of the real class batch, mean attention of the synthetic class batch)."""
    total = real_feats[0].new_zeros(())
    for fr, fs in zip(real_feats, syn_feats):
        total = total + F.mse_loss(attention_map(fr, p).mean(0), attention_map(fs, p).mean(0))
    return total


def layer_gradient_distance(g_real: Tensor, g_syn: Tensor) -> Tensor:
    """DC's per-layer distance: Σ over output channels of (1 − cos) between flattened per-channel gradients.

    1-D parameters (biases, norm affines) contribute exactly 0, as in the reference ``distance_wb``.
    """
    if g_real.dim() == 1:
        return g_real.new_zeros(())
    gr = g_real.reshape(g_real.shape[0], -1)
    gs = g_syn.reshape(g_syn.shape[0], -1)
    cos = (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)
    return (1.0 - cos).sum()


def gradient_distance(g_real: Sequence[Tensor], g_syn: Sequence[Tensor], metric: str = "ours") -> Tensor:
    """DC ``match_loss``: ``ours`` (layer-wise, above), ``mse`` or ``cos`` (over all params flattened)."""
    if metric == "ours":
        total = g_real[0].new_zeros(())
        for gr, gs in zip(g_real, g_syn):
            total = total + layer_gradient_distance(gr, gs)
        return total
    fr = torch.cat([g.flatten() for g in g_real])
    fs = torch.cat([g.flatten() for g in g_syn])
    if metric == "mse":
        return ((fr - fs) ** 2).sum()
    if metric == "cos":
        return 1.0 - (fr * fs).sum() / (fr.norm() * fs.norm() + 1e-6)
    raise ValueError(f"unknown gradient distance {metric!r}; use 'ours', 'mse' or 'cos'")


def trajectory_loss(student_end: Tensor, expert_start: Tensor, expert_target: Tensor) -> Tensor:
    """MTT: ``‖θ_{t+N} − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²`` on flat parameter vectors.

    The normalisation makes the loss scale-free across start epochs (late epochs move less); a student that
    does not move (lr 0) scores exactly 1.
    """
    num = ((student_end - expert_target) ** 2).sum()
    den = ((expert_start - expert_target) ** 2).sum()
    return num / den.clamp_min(1e-12)


_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def get_loops(ipc: int) -> tuple[int, int]:
    """DC's ``(outer_loop, inner_loop)`` per IPC; the reference exits for any other IPC, we say so clearly."""
    if ipc not in _LOOPS:
        raise ValueError(
            f"DC/DSA define (outer_loop, inner_loop) only for ipc in {sorted(_LOOPS)}; found ipc={ipc}. "
            "Pass outer_loop=... and inner_loop=... explicitly"
        )
    return _LOOPS[ipc]
