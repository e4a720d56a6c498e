"""Readers and fixture writers for the on-disk formats users have: CIFAR (binary and Python), IDX, folders.

Why the project ships its own readers: torchvision cannot be installed beside the CPU torch wheel and every
anchor codebase downloads at run time, which fails offline. Each reader validates what it reads (sizes,
magic numbers, record lengths) and names the offending file, because a silently mis-parsed dataset trains
fine and gives wrong numbers. Each writer produces exactly the layout its reader expects, so tests (and users
packaging their own data) can create fixture files without any download.

Layouts (from the distributors' format descriptions):

* CIFAR-10 binary: ``data_batch_1.bin`` … ``data_batch_5.bin``, ``test_batch.bin``; records of 1 label byte
  + 3,072 pixel bytes (1,024 R, then G, then B, each row-major 32×32). Names in ``batches.meta.txt``.
* CIFAR-100 binary: ``train.bin``, ``test.bin``; records of 1 coarse byte + 1 fine byte + 3,072 pixel bytes.
  Names in ``coarse_label_names.txt`` / ``fine_label_names.txt``.
* CIFAR Python version: pickled dicts (``data_batch_1`` …, ``test_batch``; ``train``, ``test``) with a
  ``(N, 3072)`` uint8 ``data`` array; read through a restricted unpickler (plain unpickling runs code).
* IDX (MNIST, Fashion-MNIST, KMNIST): big-endian header ``0, 0, type (0x08 = ubyte), ndim`` + one uint32 per
  dimension, then row-major data; optionally gzipped.
* Image folder: ``root/<class>/<file>`` with ``.npy`` (``(H, W)`` or ``(C, H, W)``) or PNG/JPEG (Pillow).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featdistill.data.base import ImageDataset, channel_stats
from featdistill.data.splits import stratified_split

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_FINE_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DataFormatError",
    "load_cifar10",
    "load_cifar100",
    "load_mnist_idx",
    "load_image_folder",
    "read_idx",
    "read_image_folder",
    "restricted_pickle_load",
    "write_cifar10_bin",
    "write_cifar100_bin",
    "write_cifar10_python",
    "write_cifar100_python",
    "write_mnist_idx",
    "write_idx",
    "write_image_folder",
]

PathLike = str | os.PathLike


class DataFormatError(ValueError):
    """A data file exists but its content does not match the expected format (the message names the file)."""


CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR100_FINE_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
    "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon",
    "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
]  # fmt: skip
CIFAR100_COARSE_CLASSES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
]  # fmt: skip

# The customary published statistics, so numbers stay comparable with the literature (CRD/mdistiller use
# these); fixture data is normalised with them too, which is harmless.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_CIFAR_PIXELS = 3 * 32 * 32
_CIFAR10_RECORD = 1 + _CIFAR_PIXELS
_CIFAR100_RECORD = 2 + _CIFAR_PIXELS
_CIFAR10_TRAIN_BIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
_CIFAR10_TRAIN_PY = [f"data_batch_{i}" for i in range(1, 6)]


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------


def _missing(path: Path, what: str, how: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what}: file not found: {path}. {how}")


def _find_dir(root: Path, candidates: Sequence[str], marker_sets: Sequence[Sequence[str]]) -> Path | None:
    """The first of ``root`` and ``root/<candidate>`` that contains every file of one marker set."""
    for d in [root, *(root / c for c in candidates)]:
        for markers in marker_sets:
            if all((d / m).is_file() for m in markers):
                return d
    return None


def _read_names(path: Path, default: list[str]) -> list[str]:
    """Class names, one per line; blank lines (the CIFAR files end with some) are dropped."""
    if not path.is_file():
        return list(default)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(default):
        raise DataFormatError(f"{path}: expected {len(default)} class names (one per line), found {len(names)}")
    return names


def _as_uint8_nchw(images: Tensor | np.ndarray, what: str) -> np.ndarray:
    """Writers accept uint8 or float in [0, 1] ``(N, C, H, W)`` and store uint8."""
    arr = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(f"{what}: images must be (N, C, H, W), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{what}: images must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _as_labels(labels: Tensor | np.ndarray | Sequence[int], n: int, hi: int, what: str) -> np.ndarray:
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    arr = arr.reshape(-1)
    if arr.size != n:
        raise ValueError(f"{what}: {n} images but {arr.size} labels")
    if arr.size and (arr.min() < 0 or arr.max() >= hi):
        raise ValueError(f"{what}: labels must be in [0, {hi}), got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8 if hi <= 256 else np.int64)


def _check_cifar_shape(arr: np.ndarray, what: str) -> None:
    if arr.shape[1:] != (3, 32, 32):
        raise ValueError(f"{what}: CIFAR images must be (N, 3, 32, 32), got {arr.shape}")


# ------------------------------------------------------------------------------------------------------
# CIFAR binary
# ------------------------------------------------------------------------------------------------------


def _read_cifar_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 3, 32, 32) uint8, labels (N, label_bytes) uint8)`` from one binary batch file."""
    record = label_bytes + _CIFAR_PIXELS
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record != 0:
        raise DataFormatError(
            f"{path}: size {raw.size} bytes is not a positive multiple of the {record}-byte record "
            f"({label_bytes} label byte(s) + {_CIFAR_PIXELS} pixel bytes); the file is truncated or is not a "
            f"{'CIFAR-10' if label_bytes == 1 else 'CIFAR-100'} binary batch"
        )
    rec = raw.reshape(-1, record)
    labels = rec[:, :label_bytes].copy()
    images = rec[:, label_bytes:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def _write_cifar_bin(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    n = images.shape[0]
    rec = np.empty((n, labels.shape[1] + _CIFAR_PIXELS), dtype=np.uint8)
    rec[:, : labels.shape[1]] = labels
    rec[:, labels.shape[1] :] = images.reshape(n, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec.tofile(path)


def write_cifar10_bin(
    directory: PathLike,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    split: str = "train",
    classes: Sequence[str] | None = None,
) -> list[Path]:
    """Write CIFAR-10 binary batch files (the layout :func:`load_cifar10` reads).

    ``split="train"`` spreads the records over ``data_batch_1.bin`` … ``data_batch_5.bin`` (as evenly as
    possible, in order); ``split="test"`` writes ``test_batch.bin``. ``batches.meta.txt`` is written too.
    Returns the written batch paths.
    """
    d = Path(directory)
    arr = _as_uint8_nchw(images, "write_cifar10_bin")
    _check_cifar_shape(arr, "write_cifar10_bin")
    lab = _as_labels(labels, arr.shape[0], 10, "write_cifar10_bin").reshape(-1, 1)
    if split == "train":
        if arr.shape[0] < 5:
            raise ValueError("write_cifar10_bin: the train split needs at least 5 images (one per batch file)")
        parts = np.array_split(np.arange(arr.shape[0]), 5)
        paths = [d / name for name in _CIFAR10_TRAIN_BIN]
    elif split == "test":
        parts = [np.arange(arr.shape[0])]
        paths = [d / "test_batch.bin"]
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    for p, idx in zip(paths, parts):
        _write_cifar_bin(p, arr[idx], lab[idx])
    names = list(classes) if classes is not None else CIFAR10_CLASSES
    (d / "batches.meta.txt").write_text("\n".join(names) + "\n\n", encoding="utf-8")
    return paths


def write_cifar100_bin(
    directory: PathLike,
    images: Tensor | np.ndarray,
    fine_labels: Tensor | np.ndarray | Sequence[int],
    coarse_labels: Tensor | np.ndarray | Sequence[int],
    split: str = "train",
) -> Path:
    """Write a CIFAR-100 binary file (``train.bin`` or ``test.bin``) and the two label-name files.

    Records are ``coarse byte, fine byte, 3,072 pixels`` — coarse first, as in the distributed files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = Path(directory)
    arr = _as_uint8_nchw(images, "write_cifar100_bin")
    _check_cifar_shape(arr, "write_cifar100_bin")
    fine = _as_labels(fine_labels, arr.shape[0], 100, "write_cifar100_bin (fine)")
    coarse = _as_labels(coarse_labels, arr.shape[0], 20, "write_cifar100_bin (coarse)")
    path = d / f"{split}.bin"
    _write_cifar_bin(path, arr, np.stack([coarse, fine], axis=1))
    (d / "fine_label_names.txt").write_text("\n".join(CIFAR100_FINE_CLASSES) + "\n", encoding="utf-8")
    (d / "coarse_label_names.txt").write_text("\n".join(CIFAR100_COARSE_CLASSES) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------------
# CIFAR Python (pickle) version
# ------------------------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None)
    if core is not None and hasattr(core, "multiarray"):
        return core.multiarray._reconstruct
    return np.core.multiarray._reconstruct  # pragma: no cover - numpy < 2


def _numpy_frombuffer() -> Any:
    core = getattr(np, "_core", None)
    mod = core.numeric if core is not None and hasattr(core, "numeric") else np.core.numeric
    return mod._frombuffer


def _codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Python 3 pickles bytes at protocol ≤ 2 as ``_codecs.encode(text, "latin1")``; only text → bytes."""
    if not isinstance(obj, str):
        raise pickle.UnpicklingError("_codecs.encode is only allowed on str")
    return obj.encode(encoding, errors)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer(),
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer(),
    ("_codecs", "encode"): _codecs_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows only the globals needed to rebuild NumPy arrays; anything else is refused, not executed."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only NumPy array reconstruction is allowed in "
                "dataset pickles (arbitrary globals can execute code)"
            ) from None


def restricted_pickle_load(path: PathLike) -> Any:
    """Unpickle a dataset file allowing only NumPy array globals.

    ``encoding="latin1"`` reads the distributed Python 2 pickles (and NumPy arrays inside them) correctly.
    """
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise DataFormatError(f"{path}: {e}") from e
        except (EOFError, ValueError, TypeError) as e:
            raise DataFormatError(f"{path}: not a readable CIFAR Python batch ({e})") from e


def _get(d: dict[Any, Any], key: str, path: Path) -> Any:
    for k in (key, key.encode("latin1")):
        if k in d:
            return d[k]
    raise DataFormatError(f"{path}: missing key {key!r} (found {sorted(str(k) for k in d)})")


def _read_cifar_python(path: Path, label_keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    obj = restricted_pickle_load(path)
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    data = np.asarray(_get(obj, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise DataFormatError(
            f"{path}: 'data' must be a (N, {_CIFAR_PIXELS}) uint8 array, got {data.shape} {data.dtype}"
        )
    cols = []
    for key in label_keys:
        lab = np.asarray(_get(obj, key, path), dtype=np.int64).reshape(-1)
        if lab.size != data.shape[0]:
            raise DataFormatError(f"{path}: {data.shape[0]} images but {lab.size} entries in {key!r}")
        cols.append(lab)
    return data.reshape(-1, 3, 32, 32).copy(), np.stack(cols, axis=1)


def _write_pickle(path: Path, obj: dict[bytes, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10_python(
    directory: PathLike,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    split: str = "train",
) -> list[Path]:
    """Write the CIFAR-10 *Python* version (pickled dicts with bytes keys, as distributed) for fixtures."""
    d = Path(directory)
    arr = _as_uint8_nchw(images, "write_cifar10_python")
    _check_cifar_shape(arr, "write_cifar10_python")
    lab = _as_labels(labels, arr.shape[0], 10, "write_cifar10_python").astype(np.int64)
    if split == "train":
        if arr.shape[0] < 5:
            raise ValueError("write_cifar10_python: the train split needs at least 5 images")
        parts = np.array_split(np.arange(arr.shape[0]), 5)
        paths = [d / name for name in _CIFAR10_TRAIN_PY]
    elif split == "test":
        parts = [np.arange(arr.shape[0])]
        paths = [d / "test_batch"]
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    for p, idx in zip(paths, parts):
        _write_pickle(p, {b"data": arr[idx].reshape(len(idx), -1), b"labels": lab[idx].tolist()})
    _write_pickle(d / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_CLASSES]})
    return paths


def write_cifar100_python(
    directory: PathLike,
    images: Tensor | np.ndarray,
    fine_labels: Tensor | np.ndarray | Sequence[int],
    coarse_labels: Tensor | np.ndarray | Sequence[int],
    split: str = "train",
) -> Path:
    """Write the CIFAR-100 *Python* version (``train`` / ``test`` pickles) for fixtures."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = Path(directory)
    arr = _as_uint8_nchw(images, "write_cifar100_python")
    _check_cifar_shape(arr, "write_cifar100_python")
    fine = _as_labels(fine_labels, arr.shape[0], 100, "write_cifar100_python (fine)").astype(np.int64)
    coarse = _as_labels(coarse_labels, arr.shape[0], 20, "write_cifar100_python (coarse)").astype(np.int64)
    path = d / split
    _write_pickle(
        path,
        {
            b"data": arr.reshape(arr.shape[0], -1),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": coarse.tolist(),
        },
    )
    return path


# ------------------------------------------------------------------------------------------------------
# CIFAR loaders
# ------------------------------------------------------------------------------------------------------


def _cifar_split_sets(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    label_col: int,
    classes: list[str],
    name: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[ImageDataset, ImageDataset]:
    out = []
    for split, (imgs, labs) in (("train", train), ("test", test)):
        targets = labs[:, label_col].astype(np.int64)
        if targets.size and targets.max() >= len(classes):
            raise DataFormatError(f"{name} {split}: label {int(targets.max())} out of range for {len(classes)} classes")
        out.append(
            ImageDataset(
                images=torch.from_numpy(imgs),
                targets=torch.from_numpy(targets),
                classes=classes,
                name=f"{name}-{split}",
                mean=mean,
                std=std,
            )
        )
    return out[0], out[1]


def load_cifar10(root: PathLike) -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-10 ``(train 50,000, test 10,000)`` from the binary or the Python version.

    Looks in ``root``, ``root/cifar-10-batches-bin`` and ``root/cifar-10-batches-py`` (the folders the
    archives extract to). The binary version is preferred when both are present.
    """
    r = Path(root)
    d = _find_dir(r, ["cifar-10-batches-bin", "cifar-10-batches-py"], [[*_CIFAR10_TRAIN_BIN, "test_batch.bin"]])
    if d is not None:
        train_parts = [_read_cifar_bin(d / f, 1) for f in _CIFAR10_TRAIN_BIN]
        test = _read_cifar_bin(d / "test_batch.bin", 1)
    else:
        d = _find_dir(r, ["cifar-10-batches-py", "cifar-10-batches-bin"], [[*_CIFAR10_TRAIN_PY, "test_batch"]])
        if d is None:
            bin_dir = r / "cifar-10-batches-bin" if (r / "cifar-10-batches-bin").is_dir() else r
            first_missing = next(
                bin_dir / f for f in [*_CIFAR10_TRAIN_BIN, "test_batch.bin"] if not (bin_dir / f).is_file()
            )
            raise _missing(
                first_missing,
                "CIFAR-10",
                f"Download the CIFAR-10 binary version (cifar-10-binary.tar.gz) and extract it into {r} "
                "(files data_batch_1.bin … data_batch_5.bin and test_batch.bin, directly or in "
                "cifar-10-batches-bin/); the Python version (cifar-10-batches-py/) is accepted too.",
            )
        train_parts = [_read_cifar_python(d / f, ["labels"]) for f in _CIFAR10_TRAIN_PY]
        test = _read_cifar_python(d / "test_batch", ["labels"])
    train = (np.concatenate([p[0] for p in train_parts]), np.concatenate([p[1] for p in train_parts]))
    classes = _read_names(d / "batches.meta.txt", CIFAR10_CLASSES)
    return _cifar_split_sets(train, test, 0, classes, "cifar10", CIFAR10_MEAN, CIFAR10_STD)


def load_cifar100(root: PathLike, label: str = "fine") -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-100 ``(train 50,000, test 10,000)``; ``label="fine"`` (100 classes) or ``"coarse"`` (20).

    Looks in ``root``, ``root/cifar-100-binary`` and ``root/cifar-100-python``; binary preferred.
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    r = Path(root)
    d = _find_dir(r, ["cifar-100-binary", "cifar-100-python"], [["train.bin", "test.bin"]])
    if d is not None:
        # binary records store (coarse, fine)
        train = _read_cifar_bin(d / "train.bin", 2)
        test = _read_cifar_bin(d / "test.bin", 2)
    else:
        d = _find_dir(r, ["cifar-100-python", "cifar-100-binary"], [["train", "test"]])
        if d is None:
            bin_dir = r / "cifar-100-binary" if (r / "cifar-100-binary").is_dir() else r
            first_missing = next(bin_dir / f for f in ["train.bin", "test.bin"] if not (bin_dir / f).is_file())
            raise _missing(
                first_missing,
                "CIFAR-100",
                f"Download the CIFAR-100 binary version (cifar-100-binary.tar.gz) and extract it into {r} "
                "(files train.bin and test.bin, directly or in cifar-100-binary/); the Python version "
                "(cifar-100-python/) is accepted too.",
            )
        train = _read_cifar_python(d / "train", ["coarse_labels", "fine_labels"])
        test = _read_cifar_python(d / "test", ["coarse_labels", "fine_labels"])
    if label == "fine":
        classes = _read_names(d / "fine_label_names.txt", CIFAR100_FINE_CLASSES)
        col = 1
    else:
        classes = _read_names(d / "coarse_label_names.txt", CIFAR100_COARSE_CLASSES)
        col = 0
    name = "cifar100" if label == "fine" else "cifar100-coarse"
    return _cifar_split_sets(train, test, col, classes, name, CIFAR100_MEAN, CIFAR100_STD)


# ------------------------------------------------------------------------------------------------------
# IDX (MNIST family)
# ------------------------------------------------------------------------------------------------------

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {np.dtype(np.uint8): 0x08}


def _open_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataFormatError(f"{path}: corrupt gzip stream ({e})") from e
    return data


def read_idx(path: PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a NumPy array, validating magic, dims and payload length."""
    p = Path(path)
    data = _open_maybe_gz(p)
    if len(data) < 4:
        raise DataFormatError(f"{p}: {len(data)} bytes is too short for an IDX header")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_TYPES:
        raise DataFormatError(
            f"{p}: bad IDX magic number 0x{magic:08X} (expected 0x000008NN, e.g. 0x00000803 for images, "
            "0x00000801 for labels); this is not an IDX file (or a gzip file that failed to decompress)"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataFormatError(
            f"{p}: IDX magic 0x{magic:08X} declares {ndim} dimension(s), expected {expected_ndim} "
            f"(magic 0x{0x800 + expected_ndim:08X}); are image and label files swapped?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{p}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header
    if payload != expected:
        raise DataFormatError(
            f"{p}: payload is {payload} bytes but the header sizes {dims} need {expected}; the file is "
            f"{'truncated' if payload < expected else 'longer than declared'}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: PathLike, array: np.ndarray | Tensor, gz: bool = False) -> Path:
    """Write a uint8 array as an IDX file (gzipped when ``gz``)."""
    arr = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"write_idx: only uint8 arrays are written, got {arr.dtype}")
    header = bytes([0, 0, _IDX_CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + np.ascontiguousarray(arr).tobytes()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        # mtime=0: byte-identical fixtures across runs
        with open(p, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(payload)
    else:
        p.write_bytes(payload)
    return p


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_mnist_idx(
    directory: PathLike,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    split: str = "train",
    gz: bool = False,
) -> tuple[Path, Path]:
    """Write ``(images, labels)`` as MNIST IDX files (``train-*`` or ``t10k-*``; ``.gz`` added if ``gz``).

    ``images`` is ``(N, 1, H, W)`` or ``(N, H, W)``, uint8 or float in [0, 1].
    """
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    arr = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if arr.ndim == 4:
        if arr.shape[1] != 1:
            raise ValueError(f"write_mnist_idx: images must have one channel, got shape {arr.shape}")
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"write_mnist_idx: images must be (N, H, W) or (N, 1, H, W), got {arr.shape}")
    arr = _as_uint8_nchw(arr[:, None], "write_mnist_idx")[:, 0]
    lab = _as_labels(labels, arr.shape[0], 256, "write_mnist_idx")
    suffix = ".gz" if gz else ""
    img_name, lab_name = _IDX_FILES[split]
    d = Path(directory)
    return write_idx(d / (img_name + suffix), arr, gz), write_idx(d / (lab_name + suffix), lab, gz)


def _find_idx(root: Path, stem: str) -> Path:
    """``stem``, ``stem.gz`` or the dotted variant (``train-images.idx3-ubyte``) some mirrors use."""
    dotted = stem.replace("-idx", ".idx")
    for d in (root, root / "raw"):
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            if (d / name).is_file():
                return d / name
    raise _missing(
        root / stem,
        "MNIST IDX",
        f"Put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        f"t10k-labels-idx1-ubyte; gzipped .gz files are fine) into {root}.",
    )


def load_mnist_idx(
    root: PathLike, classes: Sequence[str] | None = None, name: str = "mnist"
) -> tuple[ImageDataset, ImageDataset]:
    """``(train, test)`` from IDX files in ``root`` (MNIST, Fashion-MNIST, KMNIST share the format).

    Images become ``(N, 1, H, W)`` uint8. ``classes`` defaults to ``"0"`` … ``"K-1"`` with K = max label + 1
    (at least 10); pass the Fashion-MNIST names for readable reports. Statistics come from the train split.
    """
    r = Path(root)
    arrays = {}
    for split, (img_stem, lab_stem) in _IDX_FILES.items():
        img_path, lab_path = _find_idx(r, img_stem), _find_idx(r, lab_stem)
        imgs = read_idx(img_path, expected_ndim=3)
        labs = read_idx(lab_path, expected_ndim=1)
        if imgs.dtype != np.uint8 or labs.dtype != np.uint8:
            raise DataFormatError(f"{img_path}/{lab_path}: expected unsigned-byte (0x08) IDX data")
        if imgs.shape[0] != labs.shape[0]:
            raise DataFormatError(f"{img_path} has {imgs.shape[0]} images but {lab_path} has {labs.shape[0]} labels")
        arrays[split] = (imgs, labs)
    k = max(10, int(max(a[1].max(initial=0) for a in arrays.values())) + 1)
    names = [str(i) for i in range(k)] if classes is None else list(classes)
    train_imgs = torch.from_numpy(arrays["train"][0][:, None].copy())
    mean, std = channel_stats(train_imgs)
    out = []
    for split, (imgs, labs) in arrays.items():
        out.append(
            ImageDataset(
                images=torch.from_numpy(imgs[:, None].copy()),
                targets=torch.from_numpy(labs.astype(np.int64)),
                classes=names,
                name=f"{name}-{split}",
                mean=mean,
                std=std,
            )
        )
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------------
# image folders
# ------------------------------------------------------------------------------------------------------

_PIL_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
_EXTS = {".npy"} | _PIL_EXTS


def _load_image_file(path: Path, mode: str | None) -> np.ndarray:
    """One image as a ``(C, H, W)`` uint8 or float32 array."""
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise DataFormatError(f"{path}: .npy images must be (H, W) or (C, H, W), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise DataFormatError(f"{path}: .npy images must be uint8 or float in [0, 1], got {arr.dtype}")
            arr = arr.astype(np.float32)
        return arr
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            f"reading {path.suffix} images ({path}) needs Pillow: pip install Pillow "
            "(or store the images as .npy arrays, which need nothing extra)"
        ) from None
    with Image.open(path) as im:
        target = mode if mode is not None else ("L" if im.mode in ("L", "1", "I;16", "I", "F") else "RGB")
        arr = np.asarray(im.convert(target), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def read_image_folder(
    root: PathLike,
    classes: Sequence[str] | None = None,
    mode: str | None = None,
    name: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ImageDataset:
    """One ``root/<class>/<file>`` folder as an :class:`ImageDataset`.

    Classes are the sub-folder names sorted (deterministic numbering ``0…K-1``), unless ``classes`` gives the
    list (used to number a test folder like its train folder). Files within a class are read in sorted name
    order, so ``sample_id`` is stable. Hidden files and files with other extensions are skipped. ``mode``
    (``"RGB"``/``"L"``) forces a Pillow colour mode; by default greyscale stays one channel, the rest is RGB.
    All images must have the same shape.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"image folder not found: {r} (expected {r}/<class_name>/<image files>)")
    found = sorted(p.name for p in r.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        class_names = found
        if not class_names:
            raise DataFormatError(f"{r}: no class sub-folders; expected {r}/<class_name>/<image files>")
    else:
        class_names = [str(c) for c in classes]
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise DataFormatError(f"{r}: class folder(s) {unknown} are not among the known classes {class_names}")
    images: list[np.ndarray] = []
    targets: list[int] = []
    first: Path | None = None
    for k, cls in enumerate(class_names):
        cdir = r / cls
        if not cdir.is_dir():
            if classes is not None:
                continue  # a test folder may lack some classes
            raise DataFormatError(f"{cdir}: class folder missing")  # pragma: no cover
        files = sorted(p for p in cdir.iterdir() if p.is_file() and not p.name.startswith("."))
        usable = [p for p in files if p.suffix.lower() in _EXTS]
        if not usable:
            skipped = f" ({len(files)} file(s) with other extensions skipped)" if files else ""
            raise DataFormatError(
                f"empty class folder {cdir}: no image files{skipped}; supported: {sorted(_EXTS)}. "
                "Remove the folder or add images to it."
            )
        for p in usable:
            arr = _load_image_file(p, mode)
            if images and (arr.shape != images[0].shape or arr.dtype != images[0].dtype):
                raise DataFormatError(
                    f"{p}: shape {arr.shape} dtype {arr.dtype} differs from {first}: {images[0].shape} "
                    f"{images[0].dtype}; all images must share shape and dtype (resize them first, or pass "
                    "mode='RGB' to unify grey and colour images)"
                )
            if first is None:
                first = p
            images.append(arr)
            targets.append(k)
    return ImageDataset(
        images=torch.from_numpy(np.stack(images)),
        targets=torch.tensor(targets, dtype=torch.long),
        classes=class_names,
        name=name or r.name,
        mean=mean,
        std=std,
    )


def load_image_folder(
    root: PathLike,
    test_root: PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    mode: str | None = None,
    lazy: bool = False,
    image_size: int | None = None,
) -> tuple[ImageDataset, ImageDataset]:
    """``(train, test)`` from image folders.

    * ``test_root`` given: ``root`` is the train folder, ``test_root`` the test folder.
    * else, if ``root/train`` and ``root/test`` (or ``root/val``) exist: those two.
    * else ``root`` itself is split with :func:`stratified_split` (``test_fraction``, ``seed``).

    The test set uses the train classes' numbering and the train statistics. ``lazy=True`` keeps only the file
    list and decodes per batch (:mod:`featdistill.data.lazy_folder`; ``image_size`` resizes every image).
    """
    if lazy:
        from featdistill.data.lazy_folder import load_lazy_image_folder

        return load_lazy_image_folder(root, test_root, image_size=image_size, mode=mode)  # type: ignore[return-value]
    if image_size is not None:
        raise ValueError("image_size resizes lazily decoded folders; pass lazy=True (data.kwargs.lazy: true)")
    r = Path(root)
    if test_root is None and (r / "train").is_dir():
        for cand in ("test", "val"):
            if (r / cand).is_dir():
                r, test_root = r / "train", r / cand
                break
    if test_root is not None:
        train = read_image_folder(r, mode=mode, name=f"{Path(root).name}-train")
        test = read_image_folder(
            test_root, classes=train.classes, mode=mode, name=f"{Path(root).name}-test",
            mean=train.mean, std=train.std,
        )  # fmt: skip
        return train, test
    full = read_image_folder(r, mode=mode, name=r.name)
    train_idx, test_idx = stratified_split(full.targets, test_fraction, seed)
    mean, std = channel_stats(full.images[train_idx])
    train = ImageDataset(full.images[train_idx], full.targets[train_idx], full.classes, f"{r.name}-train", mean, std)
    test = ImageDataset(full.images[test_idx], full.targets[test_idx], full.classes, f"{r.name}-test", mean, std)
    return train, test


def write_image_folder(
    root: PathLike,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int],
    classes: Sequence[str] | None = None,
    fmt: str = "npy",
) -> list[Path]:
    """Write ``root/<class>/<index:06d>.<fmt>``; ``fmt`` is ``"npy"`` (no dependency) or ``"png"`` (Pillow).

    ``classes`` defaults to zero-padded numbers (``00000``, ``00001``, …, the RDED / DD-Ranking layout) so
    that sorted folder order equals label order. Every class gets a folder (even with no images), so a reader
    sees the full class list — and an empty class folder raises there, which is the point: it flags lost data.
    """
    arr = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(f"write_image_folder: images must be (N, C, H, W), got {arr.shape}")
    lab = np.asarray(labels.detach().cpu().numpy() if isinstance(labels, Tensor) else labels).reshape(-1)
    if lab.size != arr.shape[0]:
        raise ValueError(f"write_image_folder: {arr.shape[0]} images but {lab.size} labels")
    k = int(lab.max()) + 1 if lab.size else 0
    names = list(classes) if classes is not None else [f"{i:05d}" for i in range(k)]
    if lab.size and lab.max() >= len(names):
        raise ValueError(f"write_image_folder: label {int(lab.max())} but only {len(names)} class names")
    r = Path(root)
    for n in names:
        (r / n).mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(arr.shape[0]):
        p = r / names[int(lab[i])] / f"{i:06d}.{fmt}"
        if fmt == "npy":
            np.save(p, arr[i] if arr.dtype == np.uint8 else arr[i].astype(np.float32))
        elif fmt == "png":
            try:
                from PIL import Image
            except ImportError:
                raise ImportError("write_image_folder(fmt='png') needs Pillow: pip install Pillow") from None
            img = _as_uint8_nchw(arr[i : i + 1], "write_image_folder")[0]
            if img.shape[0] not in (1, 3):
                raise ValueError(f"write_image_folder: PNG needs 1 or 3 channels, got {img.shape[0]}")
            buf = io.BytesIO()
            Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(buf, format="PNG")
            p.write_bytes(buf.getvalue())
        else:
            raise ValueError(f"write_image_folder: fmt must be 'npy' or 'png', got {fmt!r}")
        paths.append(p)
    return paths
