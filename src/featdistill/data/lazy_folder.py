"""Lazy image folders: ``root/<class>/<file>`` decoded per batch (in DataLoader workers), never read whole.

Why: an image folder larger than memory cannot be an in-memory ``ImageDataset``. ``LazyImageFolder`` keeps only
the sorted file list; ``batch(sample_ids, view_ids, augmenter)`` decodes just those files (optionally resized to
``image_size`` so any folder batches), then renders the views with the same function as every image dataset
(:func:`featdistill.data.loaders.render_images`): a view's pixels depend only on ``(seed, sample_id, view_id)``
and the file. With ``data.num_workers > 0`` the loader renders whole batches in worker processes.

Identity: reading every byte to hash it is what a lazy folder avoids, so its fingerprint is the sorted relative
paths, their sizes and the class names — a teacher store built on it is as valid as that file list. The
normalisation statistics are measured on up to ``stats_samples`` evenly spaced training files (or given).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featdistill.data.formats import _EXTS, DataFormatError, _load_image_file

__all__ = ["LazyImageFolder", "load_lazy_image_folder"]


def _list_folder(root: Path, classes: Sequence[str] | None) -> tuple[list[str], list[Path], list[int]]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected {root}/<class_name>/<image files>)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(classes) if classes is not None else found
    if not names:
        raise DataFormatError(f"{root}: no class sub-folders; expected {root}/<class_name>/<image files>")
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataFormatError(f"{root}: class folder(s) {unknown} are not among the known classes {names}")
    files: list[Path] = []
    targets: list[int] = []
    for k, cls in enumerate(names):
        cdir = root / cls
        if not cdir.is_dir():
            continue
        usable = sorted(p for p in cdir.iterdir() if p.is_file() and p.suffix.lower() in _EXTS and p.name[0] != ".")
        if not usable and classes is None:
            raise DataFormatError(f"empty class folder {cdir}: no image files; supported: {sorted(_EXTS)}")
        files += usable
        targets += [k] * len(usable)
    return names, files, targets


class LazyImageFolder:
    """An image folder behind the loader contract, decoded per batch. See the module docstring."""

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] | None = None,
        image_size: int | None = None,
        mode: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        stats_samples: int = 512,
        name: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.classes, self.files, targets = _list_folder(self.root, classes)
        self.targets = torch.tensor(targets, dtype=torch.long)
        self.image_size, self.mode = image_size, mode
        self.name = name or self.root.name
        self.info: dict[str, Any] = {"root": str(self.root), "lazy": True}
        first = self._read(0)
        self._shape = tuple(first.shape)
        if mean is None or std is None:
            from featdistill.data.base import channel_stats

            picks = np.linspace(0, len(self.files) - 1, num=min(stats_samples, len(self.files))).round().astype(int)
            m, s = channel_stats(torch.stack([self._read(int(i)) for i in np.unique(picks)]))
            mean, std = (m if mean is None else mean), (s if std is None else std)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.image_input = True

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def stratify_labels(self) -> Tensor:
        return self.targets

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"classes={self.classes}|size={self.image_size}|mode={self.mode}".encode())
        for p in self.files:
            h.update(f"{p.relative_to(self.root)}|{p.stat().st_size}\n".encode())
        return h.hexdigest()

    def _read(self, i: int) -> Tensor:
        path = self.files[i]
        arr = _load_image_file(path, self.mode)
        x = torch.from_numpy(np.ascontiguousarray(arr))
        if self.image_size is not None and tuple(x.shape[1:]) != (self.image_size, self.image_size):
            import torch.nn.functional as F

            y = F.interpolate(x[None].float(), size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
            x = y[0].round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y[0]
        if hasattr(self, "_shape") and tuple(x.shape) != self._shape:
            raise DataFormatError(
                f"{path}: image shape {tuple(x.shape)} differs from {self._shape} of {self.files[0]}; set "
                "data.kwargs.image_size to resize every image, or mode: RGB to unify grey and colour"
            )
        return x

    def batch(
        self,
        sample_ids: Tensor,
        view_ids: Tensor,
        augmenter: Any,
        normalize: bool = True,
        device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """Decode these files and render their views (the same pixels in any process, batch or order)."""
        from featdistill.data.loaders import render_images

        sid = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1)
        vid = torch.as_tensor(view_ids, dtype=torch.long).reshape(-1)
        x = torch.stack([self._read(int(i)) for i in sid.tolist()])
        if device is not None:
            x = x.to(device)
        y = self.targets[sid]
        return {"input": render_images(x, sid, vid, augmenter, self.mean, self.std, normalize), "target": y}


def load_lazy_image_folder(
    root: str | Path,
    test_root: str | Path | None = None,
    image_size: int | None = None,
    mode: str | None = None,
    stats_samples: int = 512,
) -> tuple[LazyImageFolder, LazyImageFolder]:
    """``(train, test)`` lazy folders: ``root/train`` + ``root/test`` (or ``val``), or ``root`` and ``test_root``."""
    r = Path(root)
    if test_root is None:
        for cand in ("test", "val"):
            if (r / "train").is_dir() and (r / cand).is_dir():
                r, test_root = r / "train", r / cand
                break
    if test_root is None:
        raise DataFormatError(
            f"{root}: a lazy image folder needs root/train and root/test (or root/val) sub-folders, or test_root"
        )
    train = LazyImageFolder(
        r, image_size=image_size, mode=mode, stats_samples=stats_samples, name=f"{Path(root).name}-train"
    )
    test = LazyImageFolder(
        test_root, classes=train.classes, image_size=image_size, mode=mode, mean=train.mean, std=train.std,
        name=f"{Path(root).name}-test",
    )  # fmt: skip
    return train, test
