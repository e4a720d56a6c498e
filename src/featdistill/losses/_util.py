"""Small helpers shared by the loss families (private).

Why they exist:

* Teacher tensors usually come from ``LiveTeacher``, which runs under ``torch.inference_mode``. PyTorch
  refuses to *save* an inference tensor for backward ("Inference tensors cannot be saved for backward"),
  which happens as soon as a teacher tensor meets a student tensor in e.g. ``mse_loss`` or a product.
  :func:`as_target` clones such tensors into ordinary ones, so every loss accepts teacher outputs exactly as
  the teacher source returns them.
* Under bf16/fp16 autocast the inputs may arrive in half precision. Softmax, norms and reductions are computed
  in float32 (:func:`upcast`); float64 inputs stay float64 so tests can check identities tightly.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["batchmean", "none"]

_HALF = (torch.float16, torch.bfloat16)


def upcast(x: Tensor) -> Tensor:
    """Return ``x`` in float32 if it is a half-precision or integer tensor, else ``x`` unchanged."""
    if x.dtype in _HALF or not x.is_floating_point():
        return x.float()
    return x


def as_target(x: Tensor) -> Tensor:
    """Return a tensor usable as a (teacher-side) target in autograd-tracked code, upcast like :func:`upcast`.

    Inference tensors are cloned into normal tensors (outside inference mode); others are returned as they are
    (no copy, no detach: gradient flows into the teacher side if the caller asks for it, e.g. online KD).
    """
    if x.is_inference() and not torch.is_inference_mode_enabled():
        x = x.clone()
    return upcast(x)


def check_reduction(reduction: str, fn: str) -> None:
    """Raise a ValueError naming ``fn`` unless ``reduction`` is ``"batchmean"`` or ``"none"``."""
    if reduction not in ("batchmean", "none"):
        raise ValueError(f"{fn}: reduction must be 'batchmean' or 'none', got {reduction!r}")


def check_logits_pair(student_logits: Tensor, teacher_logits: Tensor, fn: str) -> None:
    """Check that two logit tensors are ``(B, C)`` with the same shape, with an actionable message."""
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{fn}: expected student and teacher logits of the same shape (B, C), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}; flatten extra dimensions "
            "(e.g. per-pixel logits to (B*H*W, C)) before calling"
        )


def check_target(logits: Tensor, target: Tensor, fn: str) -> None:
    """Check that ``target`` is a ``(B,)`` integer label tensor matching ``(B, C)`` logits."""
    if logits.ndim != 2:
        raise ValueError(f"{fn}: expected logits of shape (B, C), got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0],) or target.is_floating_point():
        raise ValueError(
            f"{fn}: expected integer class labels of shape ({logits.shape[0]},), got "
            f"{target.dtype} tensor of shape {tuple(target.shape)}"
        )
