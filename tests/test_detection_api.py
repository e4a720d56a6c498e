"""The padded-target contract shared by the detection task and every detector."""

from __future__ import annotations

import pytest
import torch

from featdistill.models.detection_api import PAD_LABEL, pad_targets, unpad_targets


def test_pad_and_unpad_round_trip() -> None:
    targets = [
        {"boxes": torch.tensor([[0.0, 1.0, 4.0, 5.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 9.0, 9.0]]), "labels": torch.tensor([0, 1])},
    ]
    boxes, labels = pad_targets(targets, max_objects=3)
    assert boxes.shape == (3, 3, 4) and labels.shape == (3, 3)
    assert labels[1].eq(PAD_LABEL).all() and labels[0].tolist() == [2, PAD_LABEL, PAD_LABEL]
    back = unpad_targets(boxes, labels)
    for a, b in zip(targets, back):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def test_too_many_objects_is_an_error_not_a_truncation() -> None:
    t = [{"boxes": torch.zeros(4, 4), "labels": torch.zeros(4, dtype=torch.long)}]
    with pytest.raises(ValueError, match="max_objects=2"):
        pad_targets(t, max_objects=2)
