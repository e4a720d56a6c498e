"""Explicit seeding: every random choice in featdistill derives from a seed the user gave.

Library code never touches the global RNG state permanently.  Where PyTorch only offers the global RNG
(``nn.Module`` parameter initialisation), :func:`seeded` forks it, seeds it, and restores it on exit, so
building a model or an adapter is reproducible without side effects on the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch

__all__ = ["seeded", "derive_seed", "generator"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. ``(seed, "adapter")``)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


@contextlib.contextmanager
def seeded(seed: int, *parts: int | str) -> Iterator[None]:
    """Run a block (model construction, adapter init) under a seeded, forked global RNG."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, *parts) if parts else seed)
        yield
