"""Learning-rate schedules evaluated per optimiser step.

Why per step and as a pure function of the step index: the lr of step ``s`` is then a function of
``(s, steps_per_epoch, config)`` alone, so a resumed run (which restores the step counter) gets exactly
the lr the uninterrupted run had — no drift from epoch-boundary bookkeeping — and warm-up is smooth even
when it lasts a fraction of an epoch.

The factor multiplies ``config.lr``:

- warm-up (``warmup_epochs > 0``): ``(s + 1) / W`` for the first ``W`` steps, so the first step already
  moves (lr ``lr / W``) and step ``W - 1`` runs at the full lr;
- ``constant``: 1;
- ``step``: ``gamma ** (number of milestones m with s >= m * steps_per_epoch)`` — milestones count from
  the start of training, warm-up included (as in the CRD / mdistiller recipes);
- ``cosine``: after warm-up, ``min + (1 - min) * (1 + cos(pi * t)) / 2`` with ``t`` going 0 → 1 over the
  remaining steps and ``min = min_lr / lr``.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from featdistill.train.config import TrainConfig

__all__ = ["LRFactor", "lr_at", "build_scheduler"]


class LRFactor:
    """Callable ``step -> lr factor``.  A class, not a closure, because ``LambdaLR.state_dict()`` stores a
    callable object's ``__dict__`` — here only primitives, so checkpoints load with ``weights_only=True``."""

    def __init__(
        self,
        schedule: str,
        steps_per_epoch: int,
        epochs: int,
        warmup_epochs: float = 0.0,
        milestones: list[float] | None = None,
        gamma: float = 0.1,
        min_ratio: float = 0.0,
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch} (is the train loader empty?)")
        self.schedule = schedule
        self.total_steps = int(steps_per_epoch * epochs)
        self.warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        self.milestone_steps = [int(round(m * steps_per_epoch)) for m in (milestones or [])]
        self.gamma = float(gamma)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.schedule == "constant":
            main = 1.0
        elif self.schedule == "step":
            main = self.gamma ** sum(step >= m for m in self.milestone_steps)
        elif self.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            main = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
        else:  # pragma: no cover - TrainConfig validates the name
            raise ValueError(f"unknown schedule {self.schedule!r}")
        return warm * main

    @classmethod
    def from_config(cls, config: TrainConfig, steps_per_epoch: int) -> LRFactor:
        return cls(
            schedule=config.schedule,
            steps_per_epoch=steps_per_epoch,
            epochs=config.epochs,
            warmup_epochs=config.warmup_epochs,
            milestones=list(config.milestones),
            gamma=config.gamma,
            min_ratio=config.min_lr / config.lr,
        )


def lr_at(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """The learning rate used by optimiser step ``step`` (0-based)."""
    return config.lr * LRFactor.from_config(config, steps_per_epoch)(step)


def build_scheduler(optimizer: Optimizer, config: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimiser step; after ``k`` steps the lr is ``lr_at(k)``."""
    return LambdaLR(optimizer, LRFactor.from_config(config, steps_per_epoch))


def scheduler_state_is_safe(state: dict[str, Any]) -> bool:
    """Whether a scheduler state dict holds only primitives (checked before saving)."""
    allowed = (int, float, str, bool, type(None))

    def ok(v: Any) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str | int) and ok(x) for k, x in v.items())
        if isinstance(v, list | tuple):
            return all(ok(x) for x in v)
        return isinstance(v, allowed)

    return ok(state)
