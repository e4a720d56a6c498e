"""The contract between the detection task and a detector: targets as padded tensors, the loss and the decoding
owned by the model.

Why the model owns its loss and decoding: an anchor-free dense detector (FCOS/CenterNet: per-location class
scores, box distances, centre-ness) and a set predictor (DETR: queries matched to objects by the Hungarian
algorithm) have nothing in common between "raw output" and "boxes with scores". The task stays one small file
that batches, measures (torchmetrics ``MeanAveragePrecision``) and calls the two methods below; each detector
family brings the loss and post-processing its paper defines.

Targets travel as **padded tensors**, so they batch, move to the device, pass through replayable views and sit
in a teacher store like any other tensor:

* ``boxes``: float ``(B, M, 4)``, ``(x1, y1, x2, y2)`` in input-pixel coordinates of the (augmented) image;
* ``labels``: long ``(B, M)``, class index ``0..K-1``, **-1 marks padding** (and boxes dropped by a crop).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Detector", "PAD_LABEL", "unpad_targets", "pad_targets"]

#: label of a padding row in the ``(B, M)`` labels tensor
PAD_LABEL = -1


@runtime_checkable
class Detector(Protocol):
    """What the detection task needs from a model besides ``forward``."""

    num_classes: int

    def detection_loss(self, output: Any, boxes: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Named loss terms (summed by the task) for ``output = model(images)`` and padded targets."""
        ...

    def decode(self, output: Any, score_threshold: float = 0.05, max_detections: int = 100) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,)}`` — torchmetrics' format."""
        ...


def unpad_targets(boxes: Tensor, labels: Tensor) -> list[dict[str, Tensor]]:
    """Padded ``(B, M, 4)`` / ``(B, M)`` targets → per image ``{"boxes", "labels"}`` without the padding rows."""
    out = []
    for b, lab in zip(boxes, labels):
        keep = lab != PAD_LABEL
        out.append({"boxes": b[keep], "labels": lab[keep]})
    return out


def pad_targets(targets: list[dict[str, Tensor]], max_objects: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-image ``{"boxes", "labels"}`` → padded ``(B, M, 4)`` float and ``(B, M)`` long (``-1`` padding).

    ``max_objects`` fixes ``M`` (a dataset pads every image to one width so batches stack); more objects than
    that is an error rather than a silent truncation.
    """
    widest = max((int(t["labels"].numel()) for t in targets), default=0)
    m = widest if max_objects is None else int(max_objects)
    if widest > m:
        raise ValueError(f"an image has {widest} objects but max_objects={m}; raise max_objects")
    boxes = torch.zeros(len(targets), m, 4)
    labels = torch.full((len(targets), m), PAD_LABEL, dtype=torch.long)
    for i, t in enumerate(targets):
        n = int(t["labels"].numel())
        boxes[i, :n] = t["boxes"].reshape(-1, 4).float()
        labels[i, :n] = t["labels"].reshape(-1).long()
    return boxes, labels
