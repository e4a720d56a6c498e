"""Tiny stand-ins for the Distiller and the ViewLoader, keeping their contracts (docs/architecture.md).

Used by tests/test_trainer*.py and tests/_ddp_worker.py.  Why toys: the trainer's guarantees (exact
resume, DDP equivalence, atomic checkpoints) must be tested in milliseconds on 2 CPU cores, independently
of the real models, methods and datasets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IN_DIM, HIDDEN, T_HIDDEN, CLASSES = 8, 16, 12, 3


class ToyStudent(nn.Module):
    """MLP on (B, D) vectors; optional dropout so exact resume must also restore the global torch RNG."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.ReLU(), nn.Dropout(dropout))
        self.fc = nn.Linear(HIDDEN, CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class ToyTeacher(nn.Module):
    """Frozen teacher with a BatchNorm (buffers that must not land in checkpoints)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN_DIM, T_HIDDEN), nn.BatchNorm1d(T_HIDDEN), nn.ReLU())
        self.fc = nn.Linear(T_HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return f, self.fc(f)


class ToyDistiller(nn.Module):
    """``forward(batch, epoch) -> (student_logits, {name: weighted loss})`` with CE + KD + a feature term
    through an adapter (a trainable module outside the student), the teacher a frozen sub-module."""

    def __init__(self, seed: int = 0, dropout: float = 0.0, teacher_seed: int = 123, kd_warmup: float = 1.0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(teacher_seed)
            self.teacher = ToyTeacher()
            torch.manual_seed(seed)
            self.student = ToyStudent(dropout)
            self.adapter = nn.Linear(HIDDEN, T_HIDDEN)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.kd_warmup = kd_warmup
        self.student_spec = {"name": "toy_mlp", "kwargs": {"dropout": dropout}}

    def train(self, mode: bool = True) -> ToyDistiller:
        super().train(mode)
        self.teacher.eval()  # the teacher stays in eval mode, as the real Distiller keeps it
        return self

    def forward(self, batch: dict[str, torch.Tensor], epoch: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch["input"], batch["target"]
        with torch.no_grad():
            t_feat, t_logits = self.teacher(x)
        s_feat = self.student.features(x)
        logits = self.student.fc(s_feat)
        w_kd = min(1.0, epoch / self.kd_warmup) if self.kd_warmup > 0 else 1.0
        kd = F.kl_div(F.log_softmax(logits.float() / 2, 1), F.softmax(t_logits.float() / 2, 1), reduction="batchmean")
        return logits, {
            "ce": F.cross_entropy(logits.float(), y),
            "kd": w_kd * 4.0 * kd,
            "feat": 0.5 * F.mse_loss(self.adapter(s_feat).float(), t_feat.float()),
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.student.parameters(), *self.adapter.parameters()]

    def export_student(self) -> nn.Module:
        return self.student


def make_data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


class ToyLoader:
    """Shuffled batches that are a pure function of (seed, epoch); DDP shards each *global* batch.

    ``batch_size`` is the global batch; rank ``r`` of ``world_size`` gets rows
    ``[r*b, (r+1)*b)`` of it with ``b = batch_size // world_size`` — so the union over ranks of step ``k``
    is exactly the 1-process batch of step ``k``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if batch_size % world_size:
            raise ValueError("global batch must divide by world_size")
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x) // self.batch_size  # drop_last

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.x)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        else:
            order = torch.arange(n)
        per = self.batch_size // self.world_size
        for k in range(len(self)):
            idx = order[k * self.batch_size : (k + 1) * self.batch_size][self.rank * per : (self.rank + 1) * per]
            yield {
                "input": self.x[idx],
                "target": self.y[idx],
                "sample_id": idx.clone(),
                "view_id": torch.zeros_like(idx),
            }
