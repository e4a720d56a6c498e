"""Sequence tasks on token inputs (Hugging Face models): ``sequence-classification``, ``token-classification``.

The batch's ``input`` is a mapping (``input_ids``, ``attention_mask``, …) passed as keyword arguments; the
prediction is the output's ``logits`` (``SequenceClassifierOutput``/``TokenClassifierOutput``). Padding positions
(``attention_mask == 0``) are excluded from feature hints; labels equal to the ignore index (-100, the Hugging Face
convention) are never scored or distilled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.tasks.base import Task, TaskError, micro_accuracy, register_task
from featdistill.tasks.classification import Classification

__all__ = ["SequenceClassification", "TokenClassification", "attention_mask_of"]


def attention_mask_of(batch: Mapping[str, Any]) -> Tensor | None:
    """The batch's ``attention_mask`` (inside ``input`` or at the top level), as bool, or ``None``."""
    x = batch.get("input")
    m = x.get("attention_mask") if isinstance(x, Mapping) else None
    if m is None:
        m = batch.get("attention_mask")
    return None if m is None else m.bool()


@register_task
class SequenceClassification(Classification):
    """One label per sequence: CE on ``(B, C)``; ``top1`` (primary) and ``loss``."""

    name = "sequence-classification"
    modality = "sequence"

    def feature_mask(self, batch: Mapping[str, Any]) -> Tensor | None:
        return attention_mask_of(batch)


@register_task
class TokenClassification(Task):
    """One label per token: CE on ``(B, L, C)`` against ``(B, L)`` labels (ignore -100); ``token_acc`` (primary),
    ``f1`` (macro over classes) and ``loss``."""

    name = "token-classification"
    family = "class"
    primary_metric = "token_acc"
    primary_mode = "max"
    modality = "sequence"
    default_ignore_index = -100
    class_dim = -1
    per_position = True
    ce_over_rows = True
    prediction_shape = "(B, L, C)"

    def check_target(self, pred: Tensor, target: Tensor) -> None:
        if pred.ndim != 3:
            raise TaskError(f"task 'token-classification' expects logits (B, L, C), got {tuple(pred.shape)}")
        if target.is_floating_point() or tuple(target.shape) != tuple(pred.shape[:2]):
            raise TaskError(
                f"task 'token-classification' expects integer labels of shape {tuple(pred.shape[:2])}, got "
                f"{target.dtype} {tuple(target.shape)}"
            )

    def valid_positions(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor | None:
        return batch["target"] != self.ignore_index

    def flatten(self, pred: Tensor, mask: Tensor | None) -> Tensor:
        assert mask is not None
        return pred[mask]

    def flatten_target(self, pred: Tensor, batch: Mapping[str, Any], mask: Tensor | None) -> Tensor:
        assert mask is not None
        return batch["target"][mask].long()

    def feature_mask(self, batch: Mapping[str, Any]) -> Tensor | None:
        return attention_mask_of(batch)

    def loss(self, pred: Tensor, batch: Mapping[str, Any], label_smoothing: float = 0.0) -> Tensor:
        y = batch["target"]
        self.check_target(pred, y)
        # class-last rows, not a transposed (B, C, L) view: the same loss, ~4x faster on CPU (see causal_lm)
        return F.cross_entropy(
            pred.float().reshape(-1, pred.shape[-1]),
            y.reshape(-1).long(),
            ignore_index=self.ignore_index,
            label_smoothing=label_smoothing,
        )

    def build_metrics(self, pred: Tensor, **kw: Any) -> dict[str, Any]:
        from torchmetrics import MeanMetric
        from torchmetrics.classification import MulticlassF1Score

        c = int(self.num_classes or pred.shape[-1])
        return {
            "token_acc": micro_accuracy(c, ignore_index=self.ignore_index, **kw),
            "f1": MulticlassF1Score(num_classes=c, ignore_index=self.ignore_index, average="macro", **kw),
            "loss": MeanMetric(**kw).set_dtype(torch.float64),
        }

    def update_metrics(self, metrics: Mapping[str, Any], pred: Tensor, batch: Mapping[str, Any]) -> None:
        y = batch["target"].long()
        self.check_target(pred, y)
        p = pred.float().transpose(1, 2)  # (B, C, L): torchmetrics' multidim layout
        metrics["token_acc"].update(p, y)
        metrics["f1"].update(p, y)
        ce = F.cross_entropy(p, y, ignore_index=self.ignore_index, reduction="none")
        metrics["loss"].update(ce[y != self.ignore_index].double())
