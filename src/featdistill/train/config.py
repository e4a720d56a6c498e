"""``TrainConfig``: the validated settings of one training run, and how "auto" settings resolve.

Why pydantic with ``extra="forbid"``: a misspelt key (``warmup_epoch``) silently falling back to a default is
the most expensive kind of config bug — the run finishes and the number is wrong.  Every error names the
key, the value that was given and what would have been accepted (:func:`format_config_error`).

"auto" settings (``precision``, ``channels_last``, ``device``) are resolved by the functions at the end of
this file, so the rules are written down once and can be unit-tested without hardware.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from featdistill.validation import format_validation_error

__all__ = [
    "TrainConfig",
    "TrainConfigError",
    "format_config_error",
    "resolve_device",
    "resolve_precision",
    "resolve_channels_last",
    "cpu_supports_bf16",
    "TRAJECTORY_IRRELEVANT_KEYS",
]

#: Keys that change logging/bookkeeping only, never the sequence of weights.  Resuming with a different
#: value is allowed; any other difference would make the resumed run diverge from the original.
TRAJECTORY_IRRELEVANT_KEYS = frozenset(
    {"eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard", "progress"}
)


class TrainConfigError(ValueError):
    """A training config value is invalid; the message names the key, the bad value and the fix."""


class TrainConfig(BaseModel):
    """Everything the :class:`~featdistill.train.Trainer` needs besides the model and the data.

    Epoch-valued fields (``milestones``, ``warmup_epochs``) are in epochs, not steps, so a config stays
    valid when the batch size (and thus the steps per epoch) changes; the schedule is still evaluated per
    optimiser step (see :mod:`featdistill.train.schedule`).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: int = Field(10, ge=1, le=100_000, description="number of passes over the training loader (at most 100,000)")
    optimizer: Literal["sgd", "adamw", "dot"] = "sgd"
    lr: float = Field(0.05, gt=0, description="peak learning rate (reached after warm-up)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by AdamW)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (ignored by SGD)")
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False
    dot_delta: float = Field(
        0.075, ge=0, lt=1, description="optimizer=dot: task momentum − delta, distillation momentum + delta"
    )
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    milestones: list[float] = Field(
        default_factory=list, description="epochs at which the step schedule multiplies the lr by gamma"
    )
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: float = Field(0.0, ge=0, description="linear lr warm-up length in epochs (0 = none)")
    min_lr: float = Field(0.0, ge=0, description="floor of the cosine schedule")
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm, or None for no clipping")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    seed: int = Field(0, ge=0)
    eval_every: int = Field(1, ge=1, description="evaluate every N epochs (the last epoch always)")
    log_every: int = Field(20, ge=1, description="write a step record every N optimiser steps")
    checkpoint_every: int = Field(1, ge=1, description="checkpoint every N epochs (the last epoch always)")
    keep_checkpoints: int = Field(2, ge=1, description="how many epoch checkpoints to keep on disk")
    best_metric: str | None = Field(
        None, min_length=1, description="eval metric that defines the best epoch (default: the task's primary)"
    )
    best_mode: Literal["max", "min"] | None = Field(None, description="default: the task's (min for perplexity, MSE)")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: torch's; on a busy machine set it to the free cores)"
    )
    tensorboard: bool = False
    progress: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("channels_last", mode="before")
    @classmethod
    def _channels_last_value(cls, v: Any) -> Any:
        # YAML gives "true"/"false" strings through --set; accept them, reject anything else clearly.
        if isinstance(v, str) and v.lower() in {"true", "false"}:
            return v.lower() == "true"
        if v == "auto" or isinstance(v, bool):
            return v
        raise ValueError("must be 'auto', true or false")

    @field_validator("milestones")
    @classmethod
    def _milestones_increasing(cls, v: list[float]) -> list[float]:
        if any(m <= 0 for m in v):
            raise ValueError("milestones are epochs and must be > 0")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("milestones must be strictly increasing, e.g. [150, 180, 210]")
        return v

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(b) and 0 <= b < 1 for b in v):
            raise ValueError("AdamW betas must both be in [0, 1), e.g. [0.9, 0.999]")
        return v

    @field_validator("lr", "min_lr", "warmup_epochs", "gamma", "weight_decay")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} must be smaller than epochs={self.epochs}; "
                "shorten the warm-up or train longer"
            )
        late = [m for m in self.milestones if m >= self.epochs]
        if self.schedule == "step" and late:
            raise ValueError(f"milestones {late} are not before epochs={self.epochs}; they would never take effect")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("schedule='step' needs milestones (epochs), e.g. milestones: [150, 180, 210]")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov=true needs optimizer='sgd' and momentum > 0")
        if self.optimizer == "dot":
            if not (0 <= self.momentum - self.dot_delta and self.momentum + self.dot_delta < 1):
                raise ValueError(
                    f"optimizer='dot' needs 0 <= momentum ± dot_delta < 1, got momentum={self.momentum} and "
                    f"dot_delta={self.dot_delta}; mdistiller uses momentum 0.9, dot_delta 0.075"
                )
            if self.grad_clip is not None:
                raise ValueError("optimizer='dot' does not clip gradients (two backward passes); unset grad_clip")
        if self.schedule == "cosine" and self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} is above lr={self.lr}")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, prefix: str = "train") -> TrainConfig:
        """Validate ``data``; on failure raise :class:`TrainConfigError` with one line per bad key."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as err:
            raise TrainConfigError(format_config_error(err, prefix=prefix)) from None


def format_config_error(err: ValidationError, *, prefix: str = "train") -> str:
    """One readable line per error: ``train.lr = -1.0: Input should be greater than 0`` (see
    :func:`featdistill.validation.format_validation_error`)."""
    return format_validation_error(err, TrainConfig, prefix=prefix)


# ---------------------------------------------------------------------------------------------------------
# resolution of "auto" settings
# ---------------------------------------------------------------------------------------------------------


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when available, else CPU.  Under DDP each process takes ``cuda:LOCAL_RANK``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise TrainConfigError("train.device = 'cuda': no CUDA device is visible; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX512-BF16 or AMX-BF16).

    Why not just "AVX512": ``torch.backends.cpu.get_cpu_capability()`` reports the vector ISA torch's
    kernels were dispatched to (``"AVX2"``, ``"AVX512"``, ...) but not the bf16 extensions; without them
    oneDNN emulates bf16 and autocast is *slower* than fp32.  ``torch.cpu._is_avx512_bf16_supported`` and
    ``_is_amx_tile_supported`` (private but present since torch 2.1) probe the extensions directly; if they
    are missing we conservatively say no.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in probes:
        fn = getattr(torch.cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - defensive: a probe must never break training
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None`` = plain fp32).

    ``auto`` = bf16 autocast where the hardware runs it natively (CUDA with bf16 support, i.e. Ampere or
    newer; a CPU with AVX512-BF16/AMX), fp32 elsewhere.  An explicit ``bf16`` is honoured everywhere, even
    where it is emulated (slow but correct), because the user asked for it.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


_SLOW_CHANNELS_LAST_NORMS = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def has_slow_channels_last_norm(*models: nn.Module | None) -> bool:
    """Whether any model contains GroupNorm / InstanceNorm, whose eager channels_last kernels are slow.

    Measured (efficiency.md §10.3): a GroupNorm ConvNet-3 step goes 188 ms → 577 ms with bf16 +
    channels_last, a 3× slowdown instead of a speed-up.
    """
    return any(
        isinstance(m, _SLOW_CHANNELS_LAST_NORMS) for model in models if model is not None for m in model.modules()
    )


def has_conv2d(*models: nn.Module | None) -> bool:
    """channels_last only changes the layout of 4-D tensors; without 2-D convolutions it cannot help."""
    return any(isinstance(m, nn.Conv2d) for model in models if model is not None for m in model.modules())


def resolve_channels_last(
    setting: str | bool,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    *models: nn.Module | None,
) -> bool:
    """``auto`` = on for models with 2-D convolutions on CUDA, or on CPU when bf16 autocast is on; off for
    models with GroupNorm/InstanceNorm (eager slow path).  An explicit bool is honoured as given.

    Why only with bf16 on CPU: the measured fp32 gain is small (632 → 534 ms) and noisy, while bf16 +
    channels_last is where oneDNN's blocked kernels shine (405 → 257 ms, efficiency.md §10.1).
    """
    if isinstance(setting, bool):
        return setting
    if not has_conv2d(*models) or has_slow_channels_last_norm(*models):
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and amp_dtype == torch.bfloat16
