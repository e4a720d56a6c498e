"""Hugging Face ``datasets`` saved on disk (``save_to_disk``): Arrow files, memory-mapped, never downloaded.

Why its own reader: an HF user's data is a ``DatasetDict`` on disk; ``load_from_disk`` maps its Arrow files
without reading them into memory, and batched row access (``ds[list_of_ids]``) is one Arrow take per batch —
so a dataset larger than RAM trains as fast as the columns can be sliced. Rows become the featdistill batch:
the input columns (all but the target, unless named) go to the model as keyword arguments (``input_ids``,
``attention_mask``, …; a single column named ``input`` is passed positionally), the target column is ``target``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featdistill.data.formats import DataFormatError

__all__ = ["HFDiskDataset", "load_hf_disk"]


class HFDiskDataset:
    """One split of an on-disk HF dataset behind the featdistill loader contract (``batch``, ``fingerprint``)."""

    def __init__(self, ds: Any, name: str, input_columns: Sequence[str], target_column: str | None, split: str) -> None:
        self.ds = ds.with_format("numpy")
        self.name = name
        self.split = split
        self.input_columns = list(input_columns)
        self.target_column = target_column
        feature = ds.features.get(target_column) if target_column else None
        self.classes = list(getattr(feature, "names", []) or []) or None
        self.info: dict[str, Any] = {"split": split, "columns": list(ds.column_names)}
        self.target_kind = "class" if self.classes else "none"
        self.ignore_index = None

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 0

    @property
    def image_shape(self) -> tuple[int, ...]:
        first = self.ds[0][self.input_columns[0]]
        return tuple(np.asarray(first).shape)

    @property
    def stratify_labels(self) -> Tensor | None:
        if not self.classes or self.target_column is None:
            return None
        return torch.as_tensor(np.asarray(self.ds[self.target_column]), dtype=torch.long)

    def fingerprint(self) -> str:
        """The Arrow table's fingerprint (``datasets`` tracks every transform) plus split and columns."""
        fp = getattr(self.ds, "_fingerprint", None) or ""
        return hashlib.sha256(
            f"{fp}|{self.split}|{self.input_columns}|{self.target_column}|{len(self)}".encode()
        ).hexdigest()

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
                f"{self.name}: data.augment applies to featdistill image datasets, not to {self.split} rows"
            )
        ids = [int(i) for i in torch.as_tensor(sample_ids).reshape(-1).tolist()]
        rows = self.ds[ids]  # one batched Arrow take
        inputs = {c: torch.as_tensor(np.asarray(rows[c])) for c in self.input_columns}
        out: dict[str, Any] = {"input": inputs["input"] if list(inputs) == ["input"] else inputs}
        if self.target_column is not None:
            out["target"] = torch.as_tensor(np.asarray(rows[self.target_column]))
        if device is not None:
            from featdistill.data.batching import to_device

            out = to_device(out, device)
        return out


def load_hf_disk(
    root: str,
    train_split: str = "train",
    test_split: str = "test",
    input_columns: Sequence[str] | None = None,
    target_column: str | None = "label",
) -> tuple[HFDiskDataset, HFDiskDataset]:
    """``(train, test)`` from a ``DatasetDict`` written by ``save_to_disk`` under ``root``.

    ``input_columns`` default: every column but the target. A missing folder, a folder that is not a saved
    dataset, a missing split or column is refused with what exists.
    """
    try:
        import datasets
    except ImportError:
        raise ImportError("data.name = 'hf-disk' needs the datasets package: pip install datasets") from None
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(
            f"hf-disk: folder not found: {path}. Save your data there with DatasetDict.save_to_disk({str(path)!r})"
        )
    try:
        saved = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DataFormatError(f"hf-disk: {path} is not a dataset written by save_to_disk ({err})") from None
    if not isinstance(saved, datasets.DatasetDict):
        raise DataFormatError(
            f"hf-disk: {path} holds one Dataset; save a DatasetDict with {train_split!r} and {test_split!r} splits"
        )
    for split in (train_split, test_split):
        if split not in saved:
            raise DataFormatError(f"hf-disk: {path} has splits {sorted(saved)}, not {split!r} (set data.kwargs)")
    columns = list(saved[train_split].column_names)
    if target_column is not None and target_column not in columns:
        raise DataFormatError(f"hf-disk: {path} has columns {columns}, no target column {target_column!r}")
    inputs = list(input_columns) if input_columns else [c for c in columns if c != target_column]
    missing = [c for c in inputs if c not in columns]
    if missing or not inputs:
        raise DataFormatError(f"hf-disk: {path} has columns {columns}; input columns {missing or inputs} are missing")
    name = path.name or "hf-disk"
    return (
        HFDiskDataset(saved[train_split], f"{name}-{train_split}", inputs, target_column, train_split),
        HFDiskDataset(saved[test_split], f"{name}-{test_split}", inputs, target_column, test_split),
    )
