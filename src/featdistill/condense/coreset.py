"""Coreset selection: random, herding and k-means-representative subsets of real images.

These are the baselines every distillation number must be compared against *under the same protocol*
(published baselines move with the protocol, ``benchmarks.md`` §4.5), and also initialisations for the
synthesis methods (DSA/DM init from real images; the smooth-expert MTT variant from representative ones).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_indices", "herding_order", "kmeans_representatives"]


def random_indices(class_indices: list[Tensor], ipc: int, generator: torch.Generator) -> Tensor:
    """Class-major dataset indices: ``ipc`` drawn uniformly without replacement from each class."""
    picks = []
    for idx in class_indices:
        perm = torch.randperm(idx.numel(), generator=generator)[:ipc]
        picks.append(idx[perm])
    return torch.cat(picks)


def herding_order(features: Tensor, k: int) -> Tensor:
    """Greedy herding (Welling 2009, as in iCaRL): pick ``k`` rows whose running mean tracks the class mean.

    Step ``j`` adds the unselected row minimising ``‖μ − (s + f_i)/j‖`` where ``s`` is the sum of the rows
    chosen so far; the first pick is therefore the row nearest the mean. Deterministic given ``features``
    (ties go to the lowest index). Returns positions into ``features``.
    """
    if k > features.shape[0]:
        raise ValueError(f"herding asked for {k} rows out of {features.shape[0]}")
    f = features.double()
    mu = f.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(f.shape[0], dtype=torch.bool)
    for j in range(1, k + 1):
        dist = ((mu - (running + f) / j) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += f[i]
    return torch.tensor(chosen, dtype=torch.long)


def kmeans_representatives(features: Tensor, k: int, generator: torch.Generator, iters: int = 20) -> Tensor:
    """Positions of the real rows nearest to ``k`` k-means centroids (distinct rows).

    The "representative initialisation" of the smooth-expert MTT paper starts each synthetic image from a
    real image that stands for one mode of its class rather than a random one [unverified: we use
    k-means++-free Lloyd iterations from a random start; the paper's clustering details were not checked].
    """
    n = features.shape[0]
    if k > n:
        raise ValueError(f"k-means asked for {k} representatives out of {n} rows")
    f = features.double()
    centroids = f[torch.randperm(n, generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(f, centroids).argmin(1)
        for j in range(k):
            members = f[assign == j]
            if members.shape[0] > 0:
                centroids[j] = members.mean(0)
    dist = torch.cdist(centroids, f)
    chosen: list[int] = []
    for j in range(k):
        d = dist[j].clone()
        if chosen:
            d[torch.tensor(chosen)] = float("inf")
        chosen.append(int(torch.argmin(d)))
    return torch.tensor(chosen, dtype=torch.long)
