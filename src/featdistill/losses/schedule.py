"""Loss-weight schedules: a constant weight or a linear warm-up in (fractional) epochs.

DKD and KD++/ND ramp their distillation terms up as ``w · min(1, epoch / warmup)`` (Zhao et al., CVPR 2022:
20 epochs on CIFAR-100, 1 on ImageNet; Wang et al., ECCV 2024: 20 / 5). Methods declare one
:class:`Schedule` per loss term; the distiller multiplies the unweighted term by ``schedule(epoch)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Schedule", "constant", "linear_warmup"]


@dataclass(frozen=True)
class Schedule:
    """Weight ``value · min(1, max(epoch, 0) / warmup)``; with ``warmup == 0`` simply ``value``.

    ``epoch`` is a float so that warm-up can advance per step (``epoch = step / steps_per_epoch``).
    Frozen and hashable; build it with :func:`constant`, :func:`linear_warmup` or :meth:`Schedule.parse`.
    """

    value: float
    warmup: float = 0.0

    def __post_init__(self) -> None:
        for name in ("value", "warmup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"Schedule: {name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.warmup < 0:
            raise ValueError(f"Schedule: warmup must be >= 0 epochs, got {self.warmup!r}")

    def __call__(self, epoch: float) -> float:
        """The weight at ``epoch`` (fractional epochs; negative epochs count as 0)."""
        if self.warmup == 0:
            return self.value
        return self.value * min(1.0, max(float(epoch), 0.0) / self.warmup)

    @classmethod
    def parse(cls, spec: float | Mapping[str, Any] | Schedule) -> Schedule:
        """Build a schedule from a config value: a number (constant weight), a mapping
        ``{"value": w, "warmup": E}`` (``warmup`` optional, in epochs) or a :class:`Schedule` (returned
        as is)."""
        if isinstance(spec, Schedule):
            return spec
        if isinstance(spec, bool):
            raise ValueError(f"Schedule.parse: expected a number or {{'value': w, 'warmup': E}}, got {spec!r}")
        if isinstance(spec, (int, float)):
            return cls(float(spec))
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"value", "warmup"})
            if unknown or "value" not in spec:
                problem = f"unknown key(s) {unknown}" if unknown else "missing key 'value'"
                raise ValueError(
                    f"Schedule.parse: {problem} in {dict(spec)!r}; expected {{'value': w, 'warmup': E}} "
                    "(warmup in epochs, optional)"
                )
            return cls(spec["value"], spec.get("warmup", 0.0))
        raise ValueError(
            f"Schedule.parse: expected a number or {{'value': w, 'warmup': E}}, got {type(spec).__name__} {spec!r}"
        )

    def to_spec(self) -> float | dict[str, float]:
        """The config form that :meth:`parse` reads back (a number when there is no warm-up)."""
        return self.value if self.warmup == 0 else {"value": self.value, "warmup": self.warmup}


def constant(w: float) -> Schedule:
    """A constant weight ``w``."""
    return Schedule(w)


def linear_warmup(w: float, warmup_epochs: float) -> Schedule:
    """``w · min(1, epoch / warmup_epochs)``, the DKD / KD++ warm-up (``warmup_epochs`` must be > 0)."""
    if not warmup_epochs > 0:
        raise ValueError(f"linear_warmup: warmup_epochs must be > 0, got {warmup_epochs!r}")
    return Schedule(w, warmup_epochs)
