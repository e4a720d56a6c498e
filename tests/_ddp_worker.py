"""Worker for the DDP equivalence test: ``torchrun --nproc_per_node 2 tests/_ddp_worker.py OUT`` or, for
the 1-process reference, :func:`run` called directly.  Trains the toy distiller with the same global batch
and writes the final trainable state to ``OUT/final.pt`` (rank 0 only)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _trainer_toys import ToyDistiller, ToyLoader, make_data  # noqa: E402
from featdistill.train import TrainConfig, Trainer, cleanup_distributed, init_distributed  # noqa: E402
from featdistill.train.checkpoint import trainable_state_dict  # noqa: E402

GLOBAL_BATCH = 8
CONFIG = dict(
    epochs=2,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="cosine",
    warmup_epochs=0.5,
    grad_clip=None,  # clipping is per-global-gradient under DDP too, but keep the comparison minimal
    precision="fp32",
    channels_last=False,
    device="cpu",
    progress=False,
    log_every=2,
    seed=0,
)


def run(out: Path) -> None:
    """Train on this process's shard (world size from torchrun's env, 1 without it)."""
    ctx = init_distributed("cpu")
    x, y = make_data(48)
    xe, ye = make_data(24, seed=1)
    loader = ToyLoader(x, y, GLOBAL_BATCH, seed=3, rank=ctx.rank, world_size=ctx.world_size)
    # sharded like featdistill.data.eval_loader(rank=, world_size=): every rank evaluates its part
    eval_loader = ToyLoader(xe, ye, 6, shuffle=False, rank=ctx.rank, world_size=ctx.world_size)
    distiller = ToyDistiller(seed=0, dropout=0.0)
    trainer = Trainer(distiller, loader, eval_loader, TrainConfig(**CONFIG), out / "run", dist=ctx)
    trainer.fit()
    if ctx.is_main:
        torch.save(trainable_state_dict(distiller), out / "final.pt")
    cleanup_distributed()


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]))
