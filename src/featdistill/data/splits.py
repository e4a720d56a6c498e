"""Deterministic stratified splits.

Why a module of its own: validation data must be carved out of the *training* set (never the test set, or
model selection leaks test information), the carve must be identical on every rank and every rerun, and
class proportions must be kept so that a small validation set still covers every class. Every random choice
comes from an explicit ``torch.Generator`` seeded from ``seed``; the global RNG is never touched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featdistill.data._seeding import generator_for

__all__ = ["stratified_split", "allocate_counts"]


def allocate_counts(class_counts: Tensor, total: int) -> Tensor:
    """Split ``total`` over classes proportionally to ``class_counts`` (largest-remainder rounding).

    Largest remainder makes the sum exactly ``total`` (plain per-class rounding can be off by a few), ties are
    broken by class index so the result is deterministic.
    """
    counts = class_counts.to(torch.float64)
    n = float(counts.sum())
    if n == 0:
        return torch.zeros_like(class_counts)
    exact = counts * (total / n)
    base = exact.floor().to(torch.long)
    remainder = exact - base.to(torch.float64)
    missing = int(total - int(base.sum()))
    if missing > 0:
        # stable sort: larger remainder first, lower class index first among equals
        order = torch.sort(-remainder, stable=True).indices
        base[order[:missing]] += 1
    return torch.minimum(base, class_counts.to(torch.long))


def stratified_split(
    targets: Tensor | list[int],
    val_fraction: float,
    seed: int = 0,
    *,
    val_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Split sample indices into ``(train_idx, val_idx)`` keeping class proportions.

    Args:
        targets: ``(N,)`` integer class labels.
        val_fraction: fraction of the samples that go to the validation part, in ``[0, 1)``.
        seed: seeds the explicit generator; same ``(targets, val_fraction, seed)`` → same split.
        val_size: exact number of validation samples (overrides ``val_fraction``); the total is allocated to
            classes by largest remainder so it is met exactly.

    Returns:
        Two sorted, disjoint ``long`` tensors of indices into ``targets`` whose union is ``range(N)``.
    """
    t = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    n = t.numel()
    if val_size is None:
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        val_size = int(round(n * float(val_fraction)))
    if not 0 <= val_size < max(n, 1):
        raise ValueError(f"val_size must be in [0, {n}) for {n} samples, got {val_size}")
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty.clone()
    if int(t.min()) < 0:
        raise ValueError(f"targets must be non-negative class indices, found {int(t.min())}")

    classes, class_counts = torch.unique(t, sorted=True, return_counts=True)
    per_class_val = allocate_counts(class_counts, val_size)
    val_parts: list[Tensor] = []
    for cls, k in zip(classes.tolist(), per_class_val.tolist()):
        members = torch.nonzero(t == cls, as_tuple=False).reshape(-1)
        # one generator per (seed, class): the draw for a class does not depend on which other classes exist
        perm = torch.randperm(members.numel(), generator=generator_for("stratified_split", seed, cls))
        val_parts.append(members[perm[:k]])
    val_idx = torch.sort(torch.cat(val_parts)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_idx] = False
    train_idx = torch.nonzero(mask, as_tuple=False).reshape(-1)
    return train_idx, val_idx
