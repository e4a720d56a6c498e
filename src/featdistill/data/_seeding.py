"""Seed derivation and counter-based random numbers shared by splits, views and loaders.

Why hashing instead of ``seed + sample_id`` arithmetic: additive schemes collide (``(seed=1, id=0)`` and
``(seed=0, id=1)`` would give the same stream), and consecutive Mersenne-Twister seeds are correlated in
their first draws. SHA-256 of the tagged tuple gives independent, platform-stable 63-bit seeds.

Why a counter-based generator (:func:`keyed_uniforms`) for per-view numbers: a view's random numbers must be a
pure function of ``(seed, sample_id, view_id)``. Seeding one ``torch.Generator`` per sample costs ~20 µs each
(5 ms+ per batch of 256, every step), and torch does not promise that its generators produce the same stream
across releases — but a teacher store written today must replay the same views after an upgrade. SplitMix64
mixing in NumPy ``uint64`` arithmetic is vectorised (microseconds per batch), fully specified here, and
identical on every platform and version.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["derive_seed", "generator_for", "keyed_uniforms"]

_MASK63 = (1 << 63) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def derive_seed(tag: str, *parts: int) -> int:
    """A 63-bit seed from a domain tag and integers; the tag keeps different uses' streams apart."""
    text = tag + ":" + ":".join(str(int(p)) for p in parts)
    digest = hashlib.sha256(text.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "little") & _MASK63


def generator_for(tag: str, *parts: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded from :func:`derive_seed` (never the global RNG)."""
    return torch.Generator().manual_seed(derive_seed(tag, *parts))


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014): a bijection on uint64 with full avalanche."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def keyed_uniforms(tag: str, seed: int, keys: list[torch.Tensor], num: int) -> torch.Tensor:
    """``(B, num)`` float64 uniforms in ``[0, 1)``; row ``b`` depends only on ``(tag, seed, keys[*][b])``.

    The stream key is ``SHA-256(tag, seed)``; each integer key (any int64, negatives included) is absorbed by
    add-and-mix, and slot ``j`` of a row is ``mix(key + (j + 1)·φ)`` (SplitMix64's own counter step). The top
    53 bits give the float. Changing ``num`` never changes the first slots.
    """
    base = np.uint64(derive_seed(tag, seed))
    with np.errstate(over="ignore"):
        h = np.full(keys[0].numel() if keys else 1, base, dtype=np.uint64)
        for k in keys:
            kk = k.detach().cpu().reshape(-1).to(torch.int64).numpy().astype(np.uint64)  # two's complement
            h = _mix64(h + _GOLDEN + kk)
        counters = (np.arange(1, num + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        bits = _mix64(h[:, None] + counters)
    u = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return torch.from_numpy(u)
