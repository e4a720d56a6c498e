"""DDP through ``torchrun``: process-group set-up, the rank context, and the few collectives the trainer uses.

Usage under ``torchrun --nproc_per_node N script.py``::

    ctx = init_distributed()                      # reads RANK / WORLD_SIZE / LOCAL_RANK
    loader = ViewLoader(..., rank=ctx.rank, world_size=ctx.world_size)   # per-rank batch = global / N
    Trainer(distiller, loader, eval_loader, cfg, run_dir, dist=ctx).fit()
    cleanup_distributed()

Without torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) everything here is a no-op, so the same script
runs on one process.  Backend: NCCL on CUDA, gloo on CPU.

Why a small context object instead of calling ``torch.distributed`` everywhere: the trainer must behave
identically with and without a process group, and tests must be able to build a single-process context
without touching global state.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from featdistill.train.config import resolve_device

__all__ = [
    "DistContext",
    "init_distributed",
    "cleanup_distributed",
    "current_context",
    "wrap_ddp",
    "rank_synced_keys",
    "all_reduce_sum",
    "broadcast_object",
    "barrier",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.  ``world_size == 1`` means no process group is used."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes logs, checkpoints and the exported student."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    ``device`` follows :class:`~featdistill.train.TrainConfig.device`.  Returns a single-process context
    when ``WORLD_SIZE`` is unset or 1.  Idempotent: a second call reuses the existing group.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistContext(0, 1, 0, dev, None)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())


def current_context(device: str = "auto") -> DistContext:
    """The context of an already-initialised process group, or a single-process one."""
    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", dist.get_rank())
        return DistContext(
            dist.get_rank(), world_size, local_rank, resolve_device(device, local_rank), dist.get_backend()
        )
    return DistContext(0, 1, 0, resolve_device(device, 0), None)


def cleanup_distributed() -> None:
    """Destroy the process group if one exists (call at the end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, ctx: DistContext, ignore: Iterable[str] = ()) -> nn.Module:
    """Wrap ``module`` in DDP when the job has several processes; return it unchanged otherwise.

    ``ignore`` lists state-dict keys (frozen teacher parameters and buffers) that DDP must neither
    broadcast at start nor re-broadcast as buffers every step: the teacher is identical on every rank
    and never changes, so syncing it would only cost bandwidth.  Parameters with ``requires_grad=False``
    get no gradient buckets anyway; ``find_unused_parameters=False`` because every trainable parameter
    (student + adapters) takes part in every loss.
    """
    if not ctx.enabled:
        return module
    ignore = sorted(set(ignore))
    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False)


def rank_synced_keys(module: nn.Module) -> set[str]:
    """Names of buffers that sub-modules keep equal on every rank themselves (listed in a sub-module's
    ``rank_synced_buffers``, e.g. CRD's memory banks, updated from all-gathered rows): DDP need not re-broadcast
    them from rank 0 every step (~51 MB per step for CRD's two CIFAR-100 banks)."""
    keys: set[str] = set()
    for prefix, sub in module.named_modules():
        for name in getattr(sub, "rank_synced_buffers", ()):
            if getattr(sub, name, None) is not None and name in dict(sub.named_buffers(recurse=False)):
                keys.add(f"{prefix}.{name}" if prefix else name)
    return keys


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op on one process) and return it."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (used for eval metrics computed on rank 0 only)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op on one process)."""
    if ctx.enabled:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()
