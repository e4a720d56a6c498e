"""torchrun worker for test_methods_crd: a CRD run through ``run_experiment`` (Trainer + DDP, 2 gloo ranks); every
rank saves its memory banks at each epoch end, so the test can check that the ranks agree bit for bit."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from featdistill.config import parse_config
from featdistill.run import run_experiment
from featdistill.train import TrainerCallback


class SaveBanks(TrainerCallback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_epoch_end(self, trainer, epoch, record):
        m = trainer.distiller.method
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save(
            {
                "memory_s": m.memory_s.cpu(),
                "memory_t": m.memory_t.cpu(),
                "z": m.z.cpu(),
                "ddp_ignored": sorted(getattr(trainer.distiller, "_ddp_params_and_buffers_to_ignore", [])),
            },
            self.out / f"banks_rank{rank}_epoch{epoch}.pt",
        )


def main(out: Path, teacher_ckpt: str) -> None:
    cfg = parse_config(
        {
            "experiment": "crd-ddp",
            "data": {"name": "digits", "batch_size": 32, "subset": 256},
            "teacher": {"model": "mlp", "kwargs": {"hidden": [32]}, "checkpoint": teacher_ckpt},
            "student": {"model": "mlp", "kwargs": {"hidden": [16]}},
            "method": {"name": "crd", "params": {"k": 16, "feat_dim": 8}},
            "train": {"epochs": 2, "lr": 0.1, "progress": False, "precision": "fp32"},
            "run_dir": str(out / "run"),
        }
    )
    run_experiment(cfg, progress=False, callbacks=[SaveBanks(out)])


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
