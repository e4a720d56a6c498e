"""Output tasks: ``regression`` (e.g. multi-step forecasting ``(B, horizon, D)``) and ``image-to-image``
(super-resolution, restoration ``(B, C, H, W)`` in [0, 1]).

Their predictions are values, not class distributions, so logit methods do not apply; the teacher's
prediction is matched with an output loss (the ``output`` method: MSE or L1 to the teacher's output).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.tasks.base import Task, TaskError, register_task

__all__ = ["Regression", "ImageToImage"]


def _check_values(task: str, pred: Tensor, target: Tensor, shape_hint: str) -> None:
    if not target.is_floating_point():
        raise TaskError(
            f"task {task!r} expects real-valued (float) targets {shape_hint}, got {target.dtype} "
            f"{tuple(target.shape)}; for class ids use task: classification"
        )
    if tuple(target.shape) != tuple(pred.shape):
        raise TaskError(
            f"task {task!r}: the prediction has shape {tuple(pred.shape)} but the target {tuple(target.shape)}; "
            f"the model must output the target's shape {shape_hint}"
        )


@register_task
class Regression(Task):
    """MSE to float targets of the prediction's shape; metrics ``mse`` (primary) and ``mae``."""

    name = "regression"
    family = "output"
    primary_metric = "mse"
    primary_mode = "min"
    modality = "vector"
    loss_name = "mse"
    prediction_shape = "(B, horizon, D)"

    def check_target(self, pred: Tensor, target: Tensor) -> None:
        _check_values(self.name, pred, target, "(B, ...) — e.g. (B, horizon, D) for forecasting")

    def loss(self, pred: Tensor, batch: Mapping[str, Any], label_smoothing: float = 0.0) -> Tensor:
        y = batch["target"]
        self.check_target(pred, y)
        return F.mse_loss(pred.float(), y.float())

    def build_metrics(self, pred: Tensor, **kw: Any) -> dict[str, Any]:
        from torchmetrics import MeanAbsoluteError, MeanSquaredError

        return {
            "mse": MeanSquaredError(**kw).set_dtype(torch.float64),
            "mae": MeanAbsoluteError(**kw).set_dtype(torch.float64),
        }

    def update_metrics(self, metrics: Mapping[str, Any], pred: Tensor, batch: Mapping[str, Any]) -> None:
        y = batch["target"]
        self.check_target(pred, y)
        p, t = pred.double().flatten(), y.double().flatten()
        metrics["mse"].update(p, t)
        metrics["mae"].update(p, t)


@register_task
class ImageToImage(Task):
    """L1 to a ``(B, C, H, W)`` target image in [0, 1]; metrics ``psnr`` (primary; per image, then averaged),
    ``ssim`` and ``l1``. Predictions are clamped to [0, 1] for the metrics (not for the loss)."""

    name = "image-to-image"
    family = "output"
    primary_metric = "psnr"
    primary_mode = "max"
    modality = "image"
    loss_name = "l1"
    prediction_shape = "(B, C, H, W)"

    def check_target(self, pred: Tensor, target: Tensor) -> None:
        if pred.ndim != 4:
            raise TaskError(f"task 'image-to-image' expects images (B, C, H, W), got a prediction {tuple(pred.shape)}")
        _check_values(self.name, pred, target, "(B, C, H, W) in [0, 1]")

    def loss(self, pred: Tensor, batch: Mapping[str, Any], label_smoothing: float = 0.0) -> Tensor:
        y = batch["target"]
        self.check_target(pred, y)
        return F.l1_loss(pred.float(), y.float())

    def build_metrics(self, pred: Tensor, **kw: Any) -> dict[str, Any]:
        from torchmetrics import MeanAbsoluteError
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        return {
            "psnr": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), **kw),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0, **kw),
            "l1": MeanAbsoluteError(**kw).set_dtype(torch.float64),
        }

    def update_metrics(self, metrics: Mapping[str, Any], pred: Tensor, batch: Mapping[str, Any]) -> None:
        y = batch["target"].float()
        self.check_target(pred, y)
        p = pred.float().clamp(0.0, 1.0)
        metrics["psnr"].update(p, y)
        metrics["ssim"].update(p, y)
        metrics["l1"].update(p.double().flatten(), y.double().flatten())
