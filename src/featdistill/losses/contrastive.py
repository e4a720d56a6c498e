"""Contrastive distillation losses: CRD's memory-bank NCE (Tian et al., "Contrastive Representation
Distillation", ICLR 2020).

Pure functions over plain tensors, checked against the official code (RepDistiller ``crd/criterion.py``,
``crd/memory.py``, the ``exact`` sampler of ``dataset/cifar100.py``).  The memory banks themselves are state and
live in the recipe (:mod:`featdistill.methods.crd`); here are the pieces it is built from:

* :func:`l2_normalize` — ``x / ‖x‖₂`` per row with **no epsilon** (the reference's ``Normalize``);
* :func:`contrast_scores` — ``exp(⟨m_j, v⟩ / T)`` for the ``K + 1`` bank rows ``j`` of each anchor, column 0 the
  positive (``ContrastMemory.forward``, before the division by ``Z``);
* :func:`nce_loss` — the NCE loss of ``ContrastLoss`` (Eq. 18 of the paper) on normalised scores ``P = s / Z``;
* :func:`momentum_rows` — ``normalize(μ·m_i + (1 − μ)·v_i)``, the bank update;
* :func:`sample_contrast_indices` — ``(B, K + 1)`` bank indices: the positive then ``K`` negatives drawn as the
  reference's dataset draws them.

Every function computes in its inputs' dtype (float64 in → float64 out); half precision is computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featdistill.losses._util import as_target, upcast

__all__ = [
    "CRD_EPS",
    "l2_normalize",
    "contrast_scores",
    "nce_loss",
    "momentum_rows",
    "sample_contrast_indices",
]

#: the constant added to ``P + K·Pn`` in ``ContrastLoss`` (``crd/criterion.py``: ``eps = 1e-7``)
CRD_EPS = 1e-7


def l2_normalize(x: Tensor) -> Tensor:
    """``x / ‖x‖₂`` over dim 1, without an epsilon (RepDistiller ``Normalize(2)``: a zero row gives NaN there too)."""
    x = upcast(x)
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def contrast_scores(anchor: Tensor, memory: Tensor, idx: Tensor, temperature: float) -> Tensor:
    """``exp(⟨memory[idx[b, j]], anchor[b]⟩ / T)`` → ``(B, K + 1)``; the bank rows are constants (detached).

    ``anchor`` ``(B, D)`` is one side's embedding, ``memory`` ``(N, D)`` the *other* side's bank (the student
    embedding is scored against the teacher bank and vice versa), ``idx`` ``(B, K + 1)`` with the positive in
    column 0.
    """
    a = upcast(anchor)
    b, d = a.shape
    rows = torch.index_select(as_target(memory).detach(), 0, idx.reshape(-1)).view(b, -1, d).to(a.dtype)
    return torch.exp(torch.bmm(rows, a.view(b, d, 1)).squeeze(2) / temperature)


def nce_loss(probs: Tensor, n_data: int, eps: float = CRD_EPS) -> Tensor:
    """CRD's NCE loss on ``probs = scores / Z`` ``(B, K + 1)`` (column 0 the positive), a scalar.

    With ``m = K`` negatives and the uniform noise ``Pn = 1/N``:
    ``L = −(1/B) Σ_b [ log(P_b0 / (P_b0 + m·Pn + eps)) + Σ_{j≥1} log(m·Pn / (P_bj + m·Pn + eps)) ]``
    (``ContrastLoss``: the sum over the batch divided by ``B``; the paper's Eq. 18 has no ``eps``).
    """
    p = upcast(probs)
    b, m = p.shape[0], p.shape[1] - 1
    mpn = m / float(n_data)
    pos, neg = p[:, 0], p[:, 1:]
    log_d1 = torch.log(pos / (pos + (mpn + eps)))
    log_d0 = torch.log(mpn / (neg + (mpn + eps)))
    return -(log_d1.sum() + log_d0.sum()) / b


def momentum_rows(old_rows: Tensor, new: Tensor, momentum: float) -> Tensor:
    """The bank update of ``ContrastMemory``: ``normalize(μ·old + (1 − μ)·new)`` per row (no epsilon)."""
    mixed = old_rows * momentum + new.to(old_rows.dtype) * (1 - momentum)
    return mixed / mixed.pow(2).sum(1, keepdim=True).pow(0.5)


def sample_contrast_indices(
    idx: Tensor,
    k: int,
    n_data: int,
    generator: torch.Generator,
    labels: Tensor | None = None,
    mode: str = "exact",
) -> Tensor:
    """``(B, K + 1)`` bank indices: column 0 the positive, then ``K`` negatives.

    * ``mode="exact"`` (the reference default, ``CIFAR100InstanceSample``): the positive is the sample itself
      and the negatives are drawn uniformly from the samples **of other classes** (``labels`` ``(N,)``), without
      replacement unless ``K`` exceeds that pool (``np.random.choice(cls_negative[y], K, replace=K > len)``).
    * ``mode="relax"``: as ``exact``, but the positive is a random sample of the anchor's class.
    * ``mode="uniform"`` (no labels needed): ``ContrastMemory``'s own sampler, ``K + 1`` uniform draws with
      replacement over all ``N`` samples, column 0 overwritten with the sample itself.

    All draws come from ``generator`` (on ``idx``'s device), never from the global RNG.
    """
    dev = idx.device
    idx = idx.reshape(-1).long()
    b = idx.numel()
    if mode == "uniform":
        out = torch.randint(0, n_data, (b, k + 1), generator=generator, device=dev)
        out[:, 0] = idx
        return out
    if mode not in ("exact", "relax"):
        raise ValueError(f"sample_contrast_indices: mode must be 'exact', 'relax' or 'uniform', got {mode!r}")
    if labels is None:
        raise ValueError(
            f"sample_contrast_indices: mode {mode!r} draws negatives from other classes and needs the class of "
            "every sample (labels=); use mode='uniform' when the data has no class labels"
        )
    labels = labels.to(dev).long()
    y = labels[idx]  # (B,)
    order = torch.argsort(labels, stable=True)  # sample ids grouped by class
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    n_y, s_y = counts[y], starts[y]  # (B,)
    pool = n_data - n_y  # other-class samples per anchor
    if int(pool.min()) <= 0:
        raise ValueError("sample_contrast_indices: every sample has the same class; there is no negative to draw")
    if k <= int(pool.min()):  # without replacement: the k smallest of per-sample uniform keys, own class excluded
        keys = torch.rand(b, n_data, generator=generator, device=dev, dtype=torch.float64)
        keys.masked_fill_(labels[None, :] == y[:, None], 2.0)
        neg = keys.topk(k, dim=1, largest=False, sorted=True).indices
    else:  # with replacement: a uniform position among the other-class samples, mapped through ``order``
        u = torch.rand(b, k, generator=generator, device=dev, dtype=torch.float64)
        pos = (u * pool[:, None]).long().clamp_max(pool[:, None] - 1)
        pos = pos + (pos >= s_y[:, None]).long() * n_y[:, None]  # skip the anchor's own class block
        neg = order[pos]
    if mode == "exact":
        positive = idx
    else:
        u = torch.rand(b, generator=generator, device=dev, dtype=torch.float64)
        positive = order[s_y + (u * n_y).long().clamp_max(n_y - 1)]
    return torch.cat([positive[:, None], neg], dim=1)
