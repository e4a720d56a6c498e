"""The in-memory image dataset every loader returns.

Why one plain container instead of ``torch.utils.data.Dataset`` subclasses: every dataset featdistill handles
fits in memory, augmentation is done batched on whole tensors (see :mod:`featdistill.data.views`), and the
teacher store needs a stable identity of the data (:meth:`ImageDataset.fingerprint`) and a stable sample index
(``sample_id`` = position in this dataset). A tensor pair gives all three with no per-sample Python calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageDataset", "channel_stats"]


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``images`` on the ``[0, 1]`` scale (uint8 is divided by 255).

    Computed in float64 over chunks so a 50,000-image uint8 set is never materialised as float at once.
    A zero std (constant channel) is replaced by 1 so normalising never divides by zero.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / scale
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        return tuple([0.0] * c), tuple([1.0] * c)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@dataclass(eq=False)
class ImageDataset:
    """Images with labels, class names and the normalisation statistics to use with them.

    Attributes:
        images: ``(N, C, H, W)`` tensor, ``uint8`` (0–255) or ``float32`` in ``[0, 1]``. uint8 is preferred:
            4× less memory, and it is what the file formats store.
        targets: ``(N,)`` ``long`` class indices in ``[0, len(classes))``.
        classes: class names; ``classes[k]`` names label ``k``.
        name: a short name (``"cifar10-train"``) for logs and manifests.
        mean, std: per-channel statistics on the ``[0, 1]`` scale used to normalise inputs. ``None``
            computes them from ``images``; loaders pass the *training* statistics to the test set too, so
            train and test inputs are normalised identically.

    ``sample_id`` of a sample is simply its index in this dataset; :meth:`subset` renumbers (its result is a
    new dataset). To train on part of a dataset while keeping ids stable, pass ``indices`` to the loader
    instead.
    """

    images: Tensor
    targets: Tensor
    classes: list[str]
    name: str = "dataset"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        images = torch.as_tensor(self.images)
        if images.ndim != 4:
            raise ValueError(f"{self.name}: images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype == torch.float64 or images.dtype == torch.float16 or images.dtype == torch.bfloat16:
            images = images.to(torch.float32)
        if images.dtype not in (torch.uint8, torch.float32):
            raise TypeError(
                f"{self.name}: images must be uint8 (0-255) or float32 in [0, 1], got {images.dtype}; "
                "convert them first (e.g. images.to(torch.uint8) or images.float() / 255)"
            )
        targets = torch.as_tensor(self.targets).reshape(-1)
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise TypeError(f"{self.name}: targets must be integer class indices, got {targets.dtype}")
        targets = targets.to(torch.long)
        if targets.numel() != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {targets.numel()} targets; they must match")
        self.classes = [str(c) for c in self.classes]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= len(self.classes)):
            raise ValueError(
                f"{self.name}: targets span [{int(targets.min())}, {int(targets.max())}] but there are "
                f"{len(self.classes)} classes; labels must be in [0, {len(self.classes)})"
            )
        self.images = images.contiguous()
        self.targets = targets.contiguous()
        if self.mean is None or self.std is None:
            mean, std = channel_stats(self.images)
            self.mean = mean if self.mean is None else self.mean
            self.std = std if self.std is None else self.std
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        c = self.images.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(
                f"{self.name}: mean/std need one value per channel ({c}), got {len(self.mean)}/{len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"{self.name}: std must be positive, got {self.std}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """``(image, target)`` of one sample, for inspection; training goes through the batched loaders."""
        return self.images[index], int(self.targets[index])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: Sequence[int] | Tensor, name: str | None = None) -> ImageDataset:
        """A new dataset with the selected samples, renumbered ``0..len(indices)-1``.

        The normalisation statistics are inherited, not recomputed: a subset must be normalised exactly like
        the set it came from.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return ImageDataset(
            images=self.images[idx],
            targets=self.targets[idx],
            classes=list(self.classes),
            name=name or f"{self.name}-subset",
            mean=self.mean,
            std=self.std,
        )

    @property
    def stratify_labels(self) -> Tensor:
        """The class ids splits are stratified by."""
        return self.targets

    def batch(
        self,
        sample_ids: Tensor,
        view_ids: Tensor,
        augmenter: object | None,
        normalize: bool = True,
        device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """``{"input", "target"}`` of these views (:func:`featdistill.data.loaders.make_inputs`): the loader
        contract every dataset keeps, so a view renders identically for training and for the teacher store."""
        from featdistill.data.loaders import make_inputs

        sid = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1)
        x = make_inputs(self, sid, view_ids, augmenter, normalize, device)  # type: ignore[arg-type]
        return {"input": x, "target": self.targets[sid]}

    def class_counts(self) -> Tensor:
        """``(num_classes,)`` number of samples per class."""
        return torch.bincount(self.targets, minlength=self.num_classes)

    def fingerprint(self) -> str:
        """SHA-256 over dtypes, shapes and raw bytes of ``images`` and ``targets`` (hex).

        This is the dataset identity the teacher store records: a cached teacher output is only valid for the
        exact same pixels and labels in the same order. Names, class names and statistics are not hashed (they
        do not change the pixels). The bytes are hashed straight from tensor memory (no copy); the result is
        memoised, so do not modify ``images``/``targets`` in place after calling it.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for label, t in (("images", self.images), ("targets", self.targets)):
                arr = np.ascontiguousarray(t.detach().cpu().numpy())
                h.update(f"{label}|{arr.dtype.str}|{arr.shape}|".encode())
                h.update(memoryview(arr).cast("B"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint
