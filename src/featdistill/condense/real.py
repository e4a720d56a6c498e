"""The real training data as condensation sees it: normalised float images indexed by class.

Every condensation method needs the same three things from the real set — a per-class index, class-balanced
random batches and the normalisation — and every one of them must fail loudly on input it cannot use. This
module is the single place where those checks live, so the methods can assume clean input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["RealData", "as_real_data", "check_ipc", "DIGIT_DATASETS", "is_digit_dataset"]

# Datasets of hand-written or house-number digits: flipping changes the class semantics, so DSA omits flip.
DIGIT_DATASETS = frozenset({"digits", "mnist", "mnist5k", "mnist-5k", "mnist-idx", "svhn", "usps", "emnist"})


def is_digit_dataset(name: str | None) -> bool:
    """True for digit datasets, also under split names such as ``mnist5k-train`` or ``digits-test``."""
    if not name:
        return False
    low = name.lower()
    return any(low == d or low.startswith(d + "-") or low.startswith(d + "_") for d in DIGIT_DATASETS)


@dataclass
class RealData:
    """Normalised real images ``(N, C, H, W)`` with long targets and a per-class index."""

    images: Tensor
    targets: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    name: str = "tensors"

    def __post_init__(self) -> None:
        self.class_indices: list[Tensor] = [torch.nonzero(self.targets == c).flatten() for c in range(self.num_classes)]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def class_counts(self) -> list[int]:
        """Number of real images per class."""
        return [int(i.numel()) for i in self.class_indices]

    def class_batch(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """``min(n, count_c)`` random images of class ``c`` without replacement (DC's ``get_images``)."""
        idx = self.class_indices[c]
        perm = torch.randperm(idx.numel(), generator=generator)[:n]
        return self.images[idx[perm]]

    def subset(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Images and targets at ``indices``."""
        return self.images[indices], self.targets[indices]


def _norm_values(values: Any, channels: int, default: float) -> tuple[float, ...]:
    if values is None:
        return (default,) * channels
    if isinstance(values, Tensor):
        values = values.flatten().tolist()
    if isinstance(values, (int, float)):
        values = [values]
    vals = tuple(float(v) for v in values)
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(f"normalisation has {len(vals)} values for {channels} channels: {vals}")
    return vals


def as_real_data(dataset: Any, num_classes: int | None = None, name: str | None = None) -> RealData:
    """Accept an ``ImageDataset`` (``.images`` uint8 ``(N,C,H,W)``, ``.targets``, ``.classes``, ``.mean``,
    ``.std``), a ``RealData``, or a ``(images, targets)`` pair of tensors already normalised.

    uint8 images are scaled to [0, 1] and normalised with the dataset's ``mean``/``std`` (the space DC/DM
    optimise synthetic images in). Raises ``ValueError`` for images that are not ``(N, C, H, W)``, targets of
    the wrong length, or a class with no samples.
    """
    if isinstance(dataset, RealData):
        return dataset
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, targets = dataset
        mean = std = None
        classes = None
        ds_name = name or "tensors"
        pixels_01 = False
    else:
        if not hasattr(dataset, "images") or not hasattr(dataset, "targets"):
            raise TypeError(
                f"cannot condense a {type(dataset).__name__}: expected an ImageDataset (with .images and "
                ".targets), a RealData, or an (images, targets) tuple of tensors"
            )
        images, targets = dataset.images, dataset.targets
        mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
        classes = getattr(dataset, "classes", None)
        ds_name = name or getattr(dataset, "name", None) or type(dataset).__name__
        pixels_01 = True  # ImageDataset floats are pixels in [0, 1], not normalised values
    images = torch.as_tensor(images)
    targets = torch.as_tensor(targets).long().flatten()
    if images.dim() == 3:
        raise ValueError(
            f"images must be (N, C, H, W); found {tuple(images.shape)} — looks like grey images without a "
            "channel axis: use images.unsqueeze(1)"
        )
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W); found {images.dim()}-D shape {tuple(images.shape)}")
    if images.shape[1] > 4 and images.shape[-1] in (1, 3, 4):
        raise ValueError(
            f"images look channels-last {tuple(images.shape)}; expected (N, C, H, W): use images.permute(0, 3, 1, 2)"
        )
    if images.shape[0] != targets.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} targets")
    if images.shape[0] == 0:
        raise ValueError("the dataset is empty")
    channels = int(images.shape[1])
    mean_t = _norm_values(mean, channels, 0.0)
    std_t = _norm_values(std, channels, 1.0)
    if images.dtype == torch.uint8 or pixels_01:
        # ImageDataset pixels (uint8 0-255 or float in [0, 1]) → the normalised space DC/DM optimise in
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        x = (x - torch.tensor(mean_t).view(1, -1, 1, 1)) / torch.tensor(std_t).view(1, -1, 1, 1)
    else:
        # An (images, targets) pair of floats is taken as already normalised; mean/std (identity) are kept
        # only for de-normalising exports.
        x = images.float()
    if classes is not None:
        k = len(classes)
    elif num_classes is not None:
        k = num_classes
    else:
        k = int(targets.max().item()) + 1
    if num_classes is not None and num_classes != k:
        raise ValueError(f"num_classes={num_classes} but the dataset names {k} classes")
    if int(targets.min()) < 0 or int(targets.max()) >= k:
        raise ValueError(f"targets must lie in [0, {k}); found range [{int(targets.min())}, {int(targets.max())}]")
    class_names = [str(c) for c in classes] if classes is not None else [str(c) for c in range(k)]
    real = RealData(x.contiguous(), targets, k, mean_t, std_t, class_names, str(ds_name))
    empty = [c for c, n in enumerate(real.class_counts()) if n == 0]
    if empty:
        names = ", ".join(f"{class_names[c]!r} (index {c})" for c in empty)
        raise ValueError(
            f"class {names} has no samples in the training data; every one of the {k} classes needs at least "
            "one image to be condensed — drop the class from the label space or add images"
        )
    return real


def check_ipc(real: RealData, ipc: int, needs_real: bool = True) -> None:
    """Raise if ``ipc`` is not positive or, for methods that select/initialise from real images, exceeds the
    smallest class (naming it) — silently sampling with replacement would duplicate images."""
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise ValueError(f"ipc must be a positive integer; found {ipc!r}")
    if not needs_real:
        return
    counts = real.class_counts()
    smallest = min(range(real.num_classes), key=lambda c: counts[c])
    if ipc > counts[smallest]:
        short = [f"{real.classes[c]!r}: {n}" for c, n in enumerate(counts) if n < ipc]
        raise ValueError(
            f"ipc={ipc} is larger than class {real.classes[smallest]!r} (index {smallest}), which has only "
            f"{counts[smallest]} images; classes below ipc: {', '.join(short)}. "
            f"Use ipc <= {counts[smallest]} "
            "or init='noise' (for methods that synthesise rather than select images)"
        )
