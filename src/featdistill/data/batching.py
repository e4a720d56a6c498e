"""Batch plumbing shared by loaders and the Trainer: nested device moves, batch size, user datasets.

A batch is a dict whose values are tensors or (nested) mappings / sequences of tensors — a Hugging Face batch
``{"input": {"input_ids", "attention_mask"}, "target"}`` as much as an image batch. Moving it, measuring it and
building it from a user's ``torch.utils.data.Dataset`` are done here once, so no module assumes "one tensor
called input".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["to_device", "batch_size_of", "first_tensor", "TorchDataset", "collate_items"]


def to_device(value: Any, device: torch.device | str, non_blocking: bool = True) -> Any:
    """``value`` with every tensor inside (mappings, lists, tuples, nested) moved to ``device``."""
    if torch.is_tensor(value):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, non_blocking) for v in value)
    return value


def first_tensor(value: Any) -> Tensor | None:
    """The first tensor found in ``value`` (depth first), or ``None``."""
    if torch.is_tensor(value):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """Samples in a batch: ``sample_id``'s length when present, else the leading size of the input."""
    if "sample_id" in batch and torch.is_tensor(batch["sample_id"]):
        return int(batch["sample_id"].numel())
    t = first_tensor(batch.get("input", batch))
    if t is None or t.ndim == 0:
        raise ValueError(f"cannot tell the batch size of a batch with keys {sorted(batch)}: it holds no tensor")
    return int(t.shape[0])


def collate_items(items: Sequence[Any], where: str = "dataset") -> dict[str, Any]:
    """Stack a list of samples — dicts ``{"input", "target", …}`` or ``(input, target)`` pairs — into a batch."""
    from torch.utils.data import default_collate

    if not items:
        raise ValueError(f"{where}: no samples to collate")
    first = items[0]
    if isinstance(first, Mapping):
        if "input" not in first and "target" not in first:
            # a Hugging Face-style row {input_ids, attention_mask, labels}: everything but labels is input
            label_key = "labels" if "labels" in first else ("label" if "label" in first else None)
            rows = [
                {
                    "input": {k: v for k, v in it.items() if k != label_key},
                    **({"target": it[label_key]} if label_key else {}),
                }
                for it in items
            ]
            return default_collate(rows)
        return default_collate([dict(it) for it in items])
    if isinstance(first, (tuple, list)) and len(first) == 2:
        xs, ys = default_collate([it[0] for it in items]), default_collate([it[1] for it in items])
        return {"input": xs, "target": ys}
    raise TypeError(
        f"{where}: a sample must be a dict (with 'input' and 'target', or Hugging Face keys) or an "
        f"(input, target) pair, got {type(first).__name__}"
    )


class TorchDataset:
    """A user's map-style ``torch.utils.data.Dataset`` behind the featdistill loader contract.

    ``batch(sample_ids, view_ids, augmenter)`` indexes the dataset per sample and collates. Replayable views
    are featdistill's (``data.augment``) only for featdistill datasets; a user dataset augments itself if it
    wants to, so ``data.augment`` is refused here rather than silently ignored. The fingerprint hashes what
    identifies the data from outside (class, length, the config that built it): a teacher store built from a
    user dataset is as valid as that description.
    """

    def __init__(self, dataset: Any, name: str = "dataset", identity: str = "") -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"{name}: a dataset must be map-style (define __getitem__ and __len__), got {type(dataset).__name__}"
            )
        self.dataset = dataset
        self.name = name
        self.identity = identity or f"{type(dataset).__module__}.{type(dataset).__qualname__}"
        self.info: dict[str, Any] = dict(getattr(dataset, "info", {}) or {})
        self.classes = getattr(dataset, "classes", None)
        self.ignore_index = getattr(dataset, "ignore_index", None)
        self.target_kind = getattr(dataset, "target_kind", "none")

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.info.get("num_classes", 0))

    @property
    def image_shape(self) -> tuple[int, ...]:
        x = first_tensor(self.batch(torch.tensor([0]), torch.tensor([-1]), None)["input"])
        return tuple(x.shape[1:]) if x is not None else ()

    @property
    def stratify_labels(self) -> Tensor | None:
        return None

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.identity}|n={len(self)}".encode()).hexdigest()

    def batch(
        self,
        sample_ids: Tensor,
        view_ids: Tensor,
        augmenter: Any,
        normalize: bool = True,
        device: torch.device | str | None = None,
    ) -> dict[str, Any]:
        if augmenter is not None and not augmenter.config.is_identity:
            raise ValueError(
                f"{self.name}: data.augment works on featdistill's in-memory datasets; a class_path dataset "
                "augments itself in __getitem__ (set data.augment to {} for it)"
            )
        items = [self.dataset[int(i)] for i in torch.as_tensor(sample_ids).reshape(-1).tolist()]
        out = collate_items(items, self.name)
        return to_device(out, device) if device is not None else out
