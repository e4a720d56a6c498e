"""``classification``: one class per sample — ``(B, C)`` logits against ``(B,)`` class ids (or ``(B, C)`` soft labels).

This is the task every earlier featdistill number was measured on; its loss is the same
``F.cross_entropy`` call on float32 logits the Distiller always made, so runs are bit-identical to before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from featdistill.losses.logits import cross_entropy
from featdistill.tasks.base import Task, TaskError, micro_accuracy, register_task

__all__ = ["Classification"]


def _check_class_target(task: str, pred: Tensor, target: Tensor, hint: str) -> None:
    if pred.ndim != 2:
        raise TaskError(f"task {task!r} expects logits (B, C), got a prediction of shape {tuple(pred.shape)}; {hint}")
    b, c = pred.shape
    if c < 2:
        raise TaskError(
            f"task {task!r}: the model predicts {c} class (shape {tuple(pred.shape)}); classification needs at "
            "least 2 — for a real-valued output use task: regression"
        )
    if target.is_floating_point():
        if tuple(target.shape) != (b, c):
            raise TaskError(
                f"task {task!r}: a float target must be class probabilities of shape ({b}, {c}), got "
                f"{target.dtype} {tuple(target.shape)}; for real-valued targets use task: regression"
            )
        sums = target.detach().float().sum(dim=1)
        if bool(((sums - 1).abs() > 1e-3).any()) or bool((target < 0).any()):
            raise TaskError(
                f"task {task!r}: float targets are read as class probabilities, but these rows do not sum to 1 "
                f"(e.g. {float(sums[0]):.4g}); for real-valued targets use task: regression"
            )
        return
    if target.dtype == torch.bool or tuple(target.shape) != (b,):
        raise TaskError(
            f"task {task!r} expects integer class ids of shape ({b},), got {target.dtype} {tuple(target.shape)}"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
        raise TaskError(
            f"task {task!r}: class ids span [{int(target.min())}, {int(target.max())}] but the model predicts "
            f"{c} classes; set the model's num_classes to the dataset's"
        )


@register_task
class Classification(Task):
    """CE on ``(B, C)`` logits (label smoothing optional); metrics ``top1`` (primary) and ``loss`` (mean CE)."""

    name = "classification"
    family = "class"
    primary_metric = "top1"
    primary_mode = "max"
    modality = "image"
    prediction_shape = "(B, C)"

    def check_target(self, pred: Tensor, target: Tensor) -> None:
        _check_class_target(
            self.name, pred, target, "per-pixel logits need task: segmentation, per-token logits a sequence task"
        )

    def loss(self, pred: Tensor, batch: Mapping[str, Any], label_smoothing: float = 0.0) -> Tensor:
        return cross_entropy(pred.float(), batch["target"], label_smoothing=label_smoothing)

    def build_metrics(self, pred: Tensor, **kw: Any) -> dict[str, Any]:
        from torchmetrics import MeanMetric

        return {
            "top1": micro_accuracy(self.infer_classes(pred), **kw),
            "loss": MeanMetric(**kw).set_dtype(torch.float64),
        }

    def update_metrics(self, metrics: Mapping[str, Any], pred: Tensor, batch: Mapping[str, Any]) -> None:
        import torch.nn.functional as F

        y = batch["target"]
        self.check_target(pred, y)
        hard = y.argmax(dim=1) if y.is_floating_point() else y
        metrics["top1"].update(pred, hard)
        metrics["loss"].update(F.cross_entropy(pred, y, reduction="none").double())
