"""``segmentation``: a class per pixel — ``(B, C, h, w)`` logits against a ``(B, H, W)`` mask.

Logits at a lower resolution than the mask (SegFormer-style decoders predict at 1/4) are upsampled bilinearly
to the mask's size for the loss, the metrics and the logit methods, as the segmentation recipes do. Pixels whose
label is the ignore index (255, VOC's "void") are never scored and never distilled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.tasks.base import Task, TaskError, micro_accuracy, register_task

__all__ = ["Segmentation", "align_to"]


def align_to(pred: Tensor, size: tuple[int, ...]) -> Tensor:
    """``pred (B, C, h, w)`` resized to ``size`` (bilinear, ``align_corners=False``) when it differs."""
    if tuple(pred.shape[2:]) == tuple(size):
        return pred
    return F.interpolate(pred.float(), size=size, mode="bilinear", align_corners=False)


@register_task
class Segmentation(Task):
    """Per-pixel CE with ignore index; metrics ``miou`` (primary; IoU per class over the whole split, then the
    mean over classes), ``pixel_acc`` and ``loss`` (mean CE over valid pixels)."""

    name = "segmentation"
    per_position = True
    family = "class"
    primary_metric = "miou"
    primary_mode = "max"
    modality = "image"
    default_ignore_index = 255
    prediction_shape = "(B, C, H, W)"

    def check_target(self, pred: Tensor, target: Tensor) -> None:
        if pred.ndim != 4:
            raise TaskError(
                f"task 'segmentation' expects per-pixel logits (B, C, H, W), got a prediction of shape "
                f"{tuple(pred.shape)}; for one label per image use task: classification"
            )
        if target.is_floating_point() or target.ndim != 3 or target.shape[0] != pred.shape[0]:
            raise TaskError(
                f"task 'segmentation' expects an integer mask (B, H, W) with B = {pred.shape[0]}, got "
                f"{target.dtype} {tuple(target.shape)}"
            )
        valid = target[target != self.ignore_index] if self.ignore_index is not None else target
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= pred.shape[1]):
            raise TaskError(
                f"task 'segmentation': mask values span [{int(valid.min())}, {int(valid.max())}] (ignore index "
                f"{self.ignore_index} excluded) but the model predicts {pred.shape[1]} classes"
            )

    def _aligned(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return align_to(pred, tuple(batch["target"].shape[1:]))

    def loss(self, pred: Tensor, batch: Mapping[str, Any], label_smoothing: float = 0.0) -> Tensor:
        y = batch["target"]
        self.check_target(pred, y)
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(
            self._aligned(pred, batch).float(), y.long(), ignore_index=ignore, label_smoothing=label_smoothing
        )

    def valid_positions(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor | None:
        y = batch["target"]
        return y != self.ignore_index if self.ignore_index is not None else torch.ones_like(y, dtype=torch.bool)

    def flatten(self, pred: Tensor, mask: Tensor | None) -> Tensor:
        assert mask is not None
        p = align_to(pred, tuple(mask.shape[1:])).permute(0, 2, 3, 1)
        # every pixel valid (the common case without void labels): a reshape, not a masked gather
        return p.reshape(-1, p.shape[-1]) if bool(mask.all()) else p[mask]

    def flatten_last(self, x: Tensor, mask: Tensor | None) -> Tensor:
        assert mask is not None
        if tuple(x.shape[1:3]) != tuple(mask.shape[1:]):
            raise TaskError(f"a stored per-pixel record {tuple(x.shape)} does not match the mask {tuple(mask.shape)}")
        return x.reshape(-1, *x.shape[3:]) if bool(mask.all()) else x[mask]

    def flatten_target(self, pred: Tensor, batch: Mapping[str, Any], mask: Tensor | None) -> Tensor:
        assert mask is not None
        y = batch["target"]
        return (y.reshape(-1) if bool(mask.all()) else y[mask]).long()

    def build_metrics(self, pred: Tensor, **kw: Any) -> dict[str, Any]:
        from torchmetrics import MeanMetric
        from torchmetrics.classification import MulticlassJaccardIndex

        c = self.infer_classes(pred)
        return {
            "miou": MulticlassJaccardIndex(num_classes=c, ignore_index=self.ignore_index, average="macro", **kw),
            "pixel_acc": micro_accuracy(c, ignore_index=self.ignore_index, **kw),
            "loss": MeanMetric(**kw).set_dtype(torch.float64),
        }

    def update_metrics(self, metrics: Mapping[str, Any], pred: Tensor, batch: Mapping[str, Any]) -> None:
        y = batch["target"].long()
        self.check_target(pred, y)
        p = self._aligned(pred, batch).float()
        metrics["miou"].update(p, y)
        metrics["pixel_acc"].update(p, y)
        ignore = -100 if self.ignore_index is None else self.ignore_index
        ce = F.cross_entropy(p, y, ignore_index=ignore, reduction="none")
        valid = self.valid_positions(p, batch)
        metrics["loss"].update(ce[valid].double())
