"""On-disk format of the teacher store: a JSON manifest plus memory-mapped ``.npy`` shards.

Layout of a store directory::

    STORE/
      manifest.json              what the store was built from + the shard list (written last, atomically)
      index.npy                  int64 sorted dataset sample ids covered by the store (position → sample id)
      projection.<tap>.npy       float32 (in_dim, out_dim) random projection of a tap, when one was asked for
      shards/
        00000.logits_topk_logp.npy   (rows, V, k) per field, sample-major, one file per field per shard
        00000.logits_topk_idx.npy
        ...
        00000.json               the shard record: sample range, per-file bytes + sha256 (its presence = done)

Why this shape:

- **Plain ``.npy`` + ``np.load(mmap_mode="r")``** gives zero-copy random access with nothing but NumPy, no
  pickle anywhere (a store from someone else cannot run code on load), and files any tool can read.
- **One file per field per shard**: fields have different dtypes and shapes; a structured dtype would force
  odd alignments and copies on every lookup.
- **Shards by contiguous ranges of covered samples** (all ``V`` views of a sample live in the same row), so a
  build splits over ranks by shard number, a killed build loses at most the shard in flight, and a lookup is
  two integer divisions.
- **Atomic writes** (temporary name, ``fsync``, ``os.replace``): a file either exists complete or not at all.
  The shard record is written after the shard's arrays, so "record present and sizes match" means done.
- **The manifest records what the outputs are valid for** (teacher weights, dataset fingerprint, augmentation
  config + hash, seed, V, k, taps, projection); :mod:`featdistill.cache.store` refuses any mismatch with the
  exact reason instead of silently serving outputs for other inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featdistill.io import atomic_write_bytes, atomic_write_json, file_sha256, fsync_dir, temp_path_for

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "INDEX_FILE",
    "SHARD_DIR",
    "StoreError",
    "StoreMismatchError",
    "StoreCorruptError",
    "StoreIncompleteError",
    "teacher_sha256",
    "file_sha256",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_npy",
    "read_json",
    "shard_stem",
    "shard_record_path",
    "field_path",
    "index_dtype_for",
    "LOGITS_FIELDS",
]

FORMAT_NAME = "featdistill-teacher-store"
#: bump on any change a reader of the previous version would misread
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.npy"
SHARD_DIR = "shards"
#: field names used for the teacher's logits; every other field is a tap (or view parameter) by name
LOGITS_FIELDS = ("logits", "logits_topk_logp", "logits_topk_idx", "logits_rest_logp")


class StoreError(RuntimeError):
    """Base class of every refusal to use a teacher store; the message says what to do."""


class StoreMismatchError(StoreError, ValueError):
    """The store was built from other inputs (teacher, dataset, augmentation, k, …) than the ones in use."""


class StoreCorruptError(StoreError):
    """A shard file is missing, truncated or does not match its recorded checksum (the file is named)."""


class StoreIncompleteError(StoreError):
    """The build has not finished; open with ``allow_incomplete=True`` to use the covered part."""


# -- hashing ------------------------------------------------------------------------------
def teacher_sha256(model: nn.Module) -> str:
    """SHA-256 over the teacher's ``state_dict`` (names, dtypes, shapes, raw bytes) in sorted key order.

    Buffers are included on purpose: BatchNorm running statistics change the outputs exactly like weights.
    Hashing the tensors rather than a checkpoint file makes the identity independent of how the weights were
    saved (``.pt``, safetensors, built in memory).
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name]
        if not torch.is_tensor(t):
            continue
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bit pattern
            t = t.view(torch.int16)
        arr = t.numpy()
        h.update(f"{name}|{arr.dtype.str}|{tuple(arr.shape)}|".encode())
        h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return h.hexdigest()


# -- atomic writes ------------------------------------------------------------------------------
def atomic_save_npy(path: Path, array: np.ndarray) -> tuple[int, str]:
    """Save ``array`` as ``.npy`` atomically; return ``(bytes on disk, sha256 of the file)``.

    The array is written through :func:`numpy.lib.format.open_memmap` into the temporary file (so a large
    shard is streamed, not pickled), flushed, fsynced and renamed into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
    mm[...] = array
    mm.flush()
    del mm
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    size = tmp.stat().st_size
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return size, digest


def read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


# -- names ------------------------------------------------------------------------------
def shard_stem(index: int) -> str:
    return f"{index:05d}"


def shard_record_path(root: Path, index: int) -> Path:
    return root / SHARD_DIR / f"{shard_stem(index)}.json"


def field_path(root: Path, index: int, field: str) -> Path:
    return root / SHARD_DIR / f"{shard_stem(index)}.{field}.npy"


def index_dtype_for(num_classes: int) -> str:
    """The smallest signed integer dtype that holds every class index (int16 up to 32,767 classes)."""
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"
