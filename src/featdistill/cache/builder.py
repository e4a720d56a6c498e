"""Build a teacher store: run the frozen teacher once over ``V`` replayable views of every sample.

The builder renders view ``(sample_id, view_id)`` with the same code the training loader uses
(:func:`featdistill.data.loaders.render_views`), runs the teacher only as far as its deepest tap
(:class:`featdistill.teacher.LiveTeacher`), compresses the outputs (top-k logits, fp16, optional random
projection) and streams them into memory-mapped shards.  See :mod:`featdistill.cache.format` for the layout.

Robustness:

- **Resume.** A shard counts as done when its record file exists and its arrays have the recorded sizes
  and sha256 (a rerun re-verifies every shard it skips, so a damaged shard is redone, never kept); a
  killed build redoes only the shard it was in.  The partial manifest written at the start pins what is
  being built: resuming with another teacher, dataset, augmentation, V, k or taps is refused.
- **Ranks.** Shard ``i`` belongs to rank ``i % world_size``; every rank writes only its shards.  The last
  rank to finish (rank 0 after a barrier when ``torch.distributed`` is initialised) sees every shard record
  and finalises the manifest.  Shard contents do not depend on the split, so a 2-rank build is
  byte-identical to a 1-rank build.
- **Lock.** Rank 0 of a build holds the store directory's lock (:mod:`featdistill.locks`) for the whole
  build: a second build into the same folder waits for it (``lock_timeout``), then resumes — and finds the
  store complete and verified — so two concurrent builds leave one store.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featdistill.cache.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST,
    StoreIncompleteError,
    StoreMismatchError,
    atomic_save_npy,
    atomic_write_json,
    field_path,
    file_sha256,
    index_dtype_for,
    read_json,
    shard_record_path,
    shard_stem,
    teacher_sha256,
)
from featdistill.taps import LOGITS, TapSpec, as_tap_spec

__all__ = ["build_store", "BuildResult", "finalize_store", "augmentation_identity", "render", "header_diff"]

#: stored dtype of floating fields (values); fp32 is allowed for exactness checks and tiny stores
FLOAT_DTYPES = ("float16", "float32")
#: shards aim at this many bytes when ``shard_size`` is not given (fits comfortably in page cache)
TARGET_SHARD_BYTES = 64 << 20

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BuildResult:
    """What one call of :func:`build_store` did (per rank)."""

    path: Path
    complete: bool
    shards_built: list[int]
    shards_skipped: list[int]
    teacher_forwards: int
    seconds: float


# -- augmentation identity ------------------------------------------------------------------------------
def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"cannot record augmentation config of type {type(config).__name__}")


def augmentation_identity(augmenter: Any, seed: int | None = None) -> tuple[Any, str, dict[str, Any], int]:
    """``(augmenter, config hash, config dict, seed)`` from an ``Augmenter`` or a ``ViewConfig`` + seed.

    The hash, config and seed are what a store is valid for: the same ``(sample_id, view_id)`` under another
    config or seed gives other pixels, so other teacher outputs.
    """
    from featdistill.data.views import Augmenter, ViewConfig

    if isinstance(augmenter, Mapping):
        augmenter = ViewConfig.from_dict(dict(augmenter))
    if isinstance(augmenter, ViewConfig):
        if seed is None:
            raise ValueError("building from a ViewConfig needs seed= (the views are a function of the seed)")
        augmenter = Augmenter(augmenter, seed)
    if not isinstance(augmenter, Augmenter):
        raise TypeError(f"augmenter must be an Augmenter or a ViewConfig, got {type(augmenter).__name__}")
    aug_seed = int(augmenter.seed)
    if seed is not None and int(seed) != aug_seed:
        raise ValueError(f"seed={seed} disagrees with the augmenter's seed {aug_seed}; pass one of them")
    config = augmenter.config
    return augmenter, str(config.config_hash()), _config_dict(config), aug_seed


def render(dataset: Any, augmenter: Any, sample_ids: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
    """The exact input the training loader yields for these views (one code path for both)."""
    from featdistill.data.loaders import render_views

    return render_views(dataset, sample_ids, view_ids, augmenter)


# -- header ------------------------------------------------------------------------------
def _dataset_identity(dataset: Any) -> dict[str, Any]:
    return {
        "name": str(getattr(dataset, "name", "dataset")),
        "fingerprint": str(dataset.fingerprint()),
        "num_samples": len(dataset),
        "image_shape": list(dataset.image_shape),
        "num_classes": int(getattr(dataset, "num_classes", 0)),
        # the loader normalises with these after augmentation: other statistics = other teacher inputs
        "mean": [float(v) for v in getattr(dataset, "mean", None) or []],
        "std": [float(v) for v in getattr(dataset, "std", None) or []],
    }


def _feature_axis(ndim_per_entry: int) -> int:
    """Projection axis within one entry: channels of a ``(C, H, W)`` map, else the last axis."""
    return 0 if ndim_per_entry == 3 else ndim_per_entry - 1


def _projection_matrix(seed: int, name: str, in_dim: int, out_dim: int) -> np.ndarray:
    """Gaussian random projection ``(in_dim, out_dim) / sqrt(out_dim)`` (Johnson–Lindenstrauss scaling).

    Seeded from ``(seed, "projection", tap)`` only, so every rank and every rebuild draws the same matrix; it
    is also saved next to the manifest so a reader never needs to regenerate it.
    """
    from featdistill.seeding import generator

    g = generator(seed, "projection", name)
    m = torch.randn(in_dim, out_dim, generator=g, dtype=torch.float64) / math.sqrt(out_dim)
    return m.to(torch.float32).numpy()


def _project(x: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """Apply ``matrix`` along entry axis ``axis`` of a batched tensor ``x`` (batch axis excluded)."""
    moved = x.movedim(axis + 1, -1)
    return (moved @ matrix).movedim(-1, axis + 1)


def header_diff(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Human reasons why a store header ``stored`` does not match ``wanted`` (empty list = same inputs)."""

    def short(v: Any) -> str:
        s = str(v)
        return s[:16] + "…" if len(s) > 20 else s

    import json

    wanted = json.loads(json.dumps(wanted, default=str))  # compare as stored (tuples → lists)
    reasons: list[str] = []
    checks: list[tuple[str, Any, Any]] = [
        ("format version", stored.get("format_version"), wanted.get("format_version")),
        ("teacher (weights sha256)", stored["teacher"]["sha256"], wanted["teacher"]["sha256"]),
        ("dataset (fingerprint)", stored["dataset"]["fingerprint"], wanted["dataset"]["fingerprint"]),
        ("augmentation (config hash)", stored["augmentation"]["hash"], wanted["augmentation"]["hash"]),
        (
            "dataset normalisation (mean, std)",
            (stored["dataset"].get("mean"), stored["dataset"].get("std")),
            (wanted["dataset"].get("mean"), wanted["dataset"].get("std")),
        ),
        ("augmentation seed", stored["seed"], wanted["seed"]),
        ("number of views V", stored["num_views"], wanted["num_views"]),
        ("top-k k", stored["logits"].get("k"), wanted["logits"].get("k")),
        ("logits mode", stored["logits"].get("mode"), wanted["logits"].get("mode")),
        ("taps", sorted(stored["taps"]), sorted(wanted["taps"])),
        ("covered samples (index sha256)", stored["covered"]["sha256"], wanted["covered"]["sha256"]),
        ("shard size", stored["shard_size"], wanted["shard_size"]),
    ]
    for what, a, b in checks:
        if a != b:
            reasons.append(f"{what}: store has {short(a)}, this build has {short(b)}")
    if not reasons:  # anything else the shard contents depend on (tap paths, precision, …)
        skip = {"header_sha256", "complete", "shards", "bytes", "build_seconds"}
        for key, a, b in _flat_diff(stored, wanted, skip):
            reasons.append(f"{key}: store has {short(a)}, this build has {short(b)}")
    return reasons


def _flat_diff(a: Any, b: Any, skip: set[str], prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in skip and not prefix:
                continue
            out += _flat_diff(a.get(k), b.get(k), skip, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [(prefix, a, b)]


def _hash_index(index: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(index, dtype=np.int64).tobytes()).hexdigest()


# -- the build ------------------------------------------------------------------------------
def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    r = r if rank is None else int(rank)
    w = w if world_size is None else int(world_size)
    if not 0 <= r < w:
        raise ValueError(f"rank must be in [0, world_size={w}), got {r}")
    return r, w


def _logits_fields(
    mode: str, k: int | None, num_classes: int, dtype: str, positions: Sequence[int] = ()
) -> dict[str, dict[str, Any]]:
    """Stored fields of the prediction: ``(*positions, C)`` full values or ``(*positions, k)`` top-k records.

    ``positions`` is ``()`` for one prediction per sample, ``(H, W)`` per pixel, ``(L,)`` per token; the class
    (or value) dimension is stored last."""
    pos = [int(p) for p in positions]
    if mode == "full":
        return {"logits": {"dtype": dtype, "shape": [*pos, num_classes]}}
    if mode == "topk":
        assert k is not None
        return {
            "logits_topk_logp": {"dtype": dtype, "shape": [*pos, k]},
            "logits_topk_idx": {"dtype": index_dtype_for(num_classes), "shape": [*pos, k]},
            "logits_rest_logp": {"dtype": dtype, "shape": pos},
        }
    return {}


def _compress_logits(z: torch.Tensor, mode: str, k: int | None) -> dict[str, torch.Tensor]:
    """Full logits, or top-k log-probabilities + indices + the log of the remaining mass, over the LAST dim.

    The remaining mass is ``logsumexp`` over the non-top-k logits minus ``logsumexp`` over all of them,
    computed in float32 from the logits (not as ``1 − Σ top-k``, which cancels to 0 for a confident teacher).
    """
    z = z.float()
    if mode == "full":
        return {"logits": z}
    assert k is not None
    logp = F.log_softmax(z, dim=-1)
    vals, idx = logp.topk(k, dim=-1)
    rest = logp.scatter(-1, idx, float("-inf"))
    rest_logp = torch.logsumexp(rest, dim=-1) if k < z.shape[-1] else torch.full_like(z[..., 0], float("-inf"))
    return {"logits_topk_logp": vals, "logits_topk_idx": idx, "logits_rest_logp": rest_logp}


def prediction_layout(task: Any, pred: torch.Tensor) -> dict[str, Any]:
    """How a task's prediction ``(B, …)`` is stored: class dim moved last, the positions before it.

    Classification ``(B, C)`` → positions ``()``; segmentation ``(B, C, H, W)`` → ``(H, W)``, class dim 1 moved
    last; token tasks ``(B, L, V)`` → ``(L,)``; value outputs (regression, image-to-image) are stored as they
    are (``family: output``, no class dim)."""
    family = getattr(task, "family", "class")
    shape = list(pred.shape[1:])
    if family != "class":
        return {"family": family, "class_dim": None, "positions": [], "classes": 0, "value_shape": shape}
    cd = int(getattr(task, "class_dim", 1)) % pred.ndim
    classes = int(pred.shape[cd])
    positions = [d for i, d in enumerate(pred.shape) if i not in (0, cd)]
    return {"family": "class", "class_dim": cd, "positions": positions, "classes": classes, "value_shape": shape}


def _to_stored(pred: torch.Tensor, layout: Mapping[str, Any], size: Sequence[int] | None) -> torch.Tensor:
    """``pred`` in stored layout: optionally area-resized per pixel (``size``), class dim last."""
    cd = layout["class_dim"]
    if cd is None:
        return pred
    if size is not None and pred.ndim == 4:
        pred = F.interpolate(pred.float(), size=tuple(size), mode="area")
    return pred.movedim(cd, -1) if cd != pred.ndim - 1 else pred


def _locked_build(fn: Callable[..., BuildResult]) -> Callable[..., BuildResult]:
    """Run ``build_store`` holding its ``out_dir``'s lock (rank 0 of the build; other ranks share it)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> BuildResult:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        rank, _ = _resolve_rank(a["rank"], a["world_size"])
        if rank != 0:
            return fn(*args, **kwargs)
        from featdistill.locks import directory_lock

        with directory_lock(a["out_dir"], "teacher store build", timeout=a["lock_timeout"], on_wait=log.warning):
            return fn(*args, **kwargs)

    return wrapper


def _check_disk_space(root: Path, planned: int, num_views: int, samples: int) -> None:
    """Refuse a build that cannot fit on the disk before anything is allocated or written.

    Why: ``cache.num_views: 1e7`` (≈ 600 GB for MNIST-5k) used to start and then exhaust memory or disk; the
    planned size is exact (``entry_bytes × V × samples``), so it can be checked up front. Bytes an earlier
    partial build already wrote under ``root`` count as available (a resume rewrites nothing it keeps)."""
    import shutil

    from featdistill.cache.format import StoreError

    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    existing = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0
    if planned > free + existing:
        raise StoreError(
            f"the teacher store at {root} would take {planned / 2**30:,.1f} GiB ({samples:,} samples × "
            f"{num_views:,} views) but {probe} has {free / 2**30:,.1f} GiB free; lower cache.num_views, store "
            "top-k logits (cache.topk) or fewer taps, or choose another cache directory"
        )


@_locked_build
def build_store(
    teacher: nn.Module,
    dataset: Any,
    augmenter: Any,
    num_views: int,
    out_dir: str | Path,
    *,
    seed: int | None = None,
    taps: Mapping[str, TapSpec | str | Mapping[str, Any]] | None = None,
    topk: int | None = None,
    logits: bool = True,
    project_dim: int | Mapping[str, int] | None = None,
    batch_size: int = 256,
    shard_size: int | None = None,
    indices: Sequence[int] | torch.Tensor | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    resume: bool = True,
    model_name: str | None = None,
    dtype: str = "float16",
    device: str | torch.device | None = None,
    autocast: bool | str = False,
    channels_last: bool = False,
    store_view_params: bool = False,
    on_shard: Callable[[int], None] | None = None,
    task: Any = None,
    logits_size: Sequence[int] | None = None,
    lock_timeout: float | None = None,
) -> BuildResult:
    """Run the frozen ``teacher`` over ``num_views`` views of every covered sample and write a store.

    Args:
        teacher: the teacher network (frozen and put in ``eval()`` here).
        dataset: an ``ImageDataset``; ``sample_id`` = index in it.
        augmenter: an ``Augmenter`` or a ``ViewConfig`` (then ``seed`` is required). View ``(s, v)`` is
            rendered from ``(seed, s, v)``, exactly as the training loader renders it.
        num_views: ``V``, stored views per sample; training may use view ids ``0..V-1`` only.
        out_dir: the store directory (created).
        taps: extra teacher outputs to store, ``{name: module path | TapSpec}``.  ``None`` stores the pooled
            embedding (``embedding`` at the model's ``embedding_path``) when the model declares one.  The
            logits are stored under ``"logits"`` unless ``logits=False``.
        topk: store the top-``k`` log-probabilities, their class indices and the remaining mass instead of
            full logits (``None`` = full logits).
        project_dim: project taps to this many dimensions with a seeded Gaussian random projection (an int for
            every tap larger than it, or ``{tap: dim}``); the matrix is saved in the store.
        batch_size: teacher batch size (views per forward).
        shard_size: samples per shard (all their views); default targets ~64 MB shards.
        indices: the sample ids to cover (default: all); ids keep their meaning in the full dataset.
        rank, world_size: this process's share (default: ``torch.distributed``, else ``RANK``/``WORLD_SIZE``).
        resume: skip shards already complete; ``False`` rebuilds this rank's shards and accepts an
            ``out_dir`` that held a store built from other inputs.
        model_name: recorded in the manifest (e.g. the zoo name).
        dtype: ``"float16"`` (default) or ``"float32"`` for stored floating values.
        device: where the teacher runs (default: where its parameters are).
        autocast: run the teacher under bf16 autocast on CPU / fp16 on CUDA (faster, recorded); ``"auto"`` =
            where the hardware runs bf16 natively (:func:`featdistill.train.config.resolve_precision`).
        channels_last: run the teacher in channels_last memory format.
        store_view_params: also store the sampled augmentation parameters per view (for audit only; the
            views are replayed from the seed).
        on_shard: called with each shard index after it is written (progress; a test kills the build here).
        task: the :class:`~featdistill.tasks.Task` (default classification): how a batch calls the teacher and
            how its prediction is laid out — per-pixel and per-token logits are stored per position (top-k per
            position with its remaining mass), value outputs (regression, image-to-image) in full.
        logits_size: store per-pixel logits at this ``(h, w)`` (area-resized) instead of the teacher's output
            size — the segmentation task upsamples them to the mask when it reads them.
        lock_timeout: seconds to wait for another build holding ``out_dir``'s lock (``None``: as long as it
            takes; 0: refuse at once with :class:`~featdistill.locks.DirectoryLockedError`).
    """
    from featdistill.tasks.classification import Classification
    from featdistill.teacher import LiveTeacher, freeze

    t_start = time.perf_counter()
    if num_views < 1:
        raise ValueError(f"num_views must be ≥ 1, got {num_views}")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
    root = Path(out_dir)
    rank, world_size = _resolve_rank(rank, world_size)
    augmenter, aug_hash, aug_config, aug_seed = augmentation_identity(augmenter, seed)
    freeze(teacher)
    if device is None:
        p = next(iter(teacher.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if autocast == "auto":
        from featdistill.train.config import resolve_precision

        autocast = resolve_precision("auto", device) is not None
    elif not isinstance(autocast, bool):
        raise ValueError(f"autocast must be true, false or 'auto', got {autocast!r}")

    # --- what to capture ----------------------------------------------------------------------------------
    if taps is None:
        emb = getattr(teacher, "embedding_path", None)
        taps = {"embedding": emb} if emb else {}
    specs: dict[str, TapSpec] = {name: as_tap_spec(s) for name, s in taps.items()}
    if "logits" in specs and specs["logits"].path != LOGITS:
        raise ValueError("the tap name 'logits' is reserved for the teacher's logits; rename the tap")
    specs.pop("logits", None)
    if logits:
        specs = {"logits": TapSpec(LOGITS), **specs}
    if not specs:
        raise ValueError("nothing to store: logits=False and no taps")
    live = LiveTeacher(teacher, specs)
    if channels_last:
        live.configure(channels_last=True)

    n_total = len(dataset)
    index = (
        np.arange(n_total, dtype=np.int64)
        if indices is None
        else np.unique(np.asarray(torch.as_tensor(indices).cpu().numpy(), dtype=np.int64))
    )
    if index.size == 0:
        raise ValueError("indices is empty: nothing to build")
    if index[0] < 0 or index[-1] >= n_total:
        raise ValueError(f"indices must be in [0, {n_total}), got range [{index[0]}, {index[-1]}]")

    task = task if task is not None else Classification()
    live.task = task

    def run_teacher(sids: torch.Tensor, vids: torch.Tensor) -> dict[str, torch.Tensor]:
        # the training loader's exact views, inputs (and targets) rendered by the dataset itself
        batch = dict(dataset.batch(sids, vids, augmenter, augmenter.config.normalize, device))
        batch.update(sample_id=sids, view_id=vids)
        if autocast:
            dev_type = device.type
            amp_dtype = torch.bfloat16 if dev_type == "cpu" else torch.float16
            with torch.autocast(dev_type, dtype=amp_dtype):
                return live(batch)
        return live(batch)

    # --- probe shapes (one view) ---------------------------------------------------------------------------
    probe_ids = torch.as_tensor(index[:1])
    probe = run_teacher(probe_ids, torch.zeros(1, dtype=torch.long))
    view_params: dict[str, np.ndarray] = {}
    if store_view_params and hasattr(augmenter, "params"):
        view_params = _params_numpy(augmenter, probe_ids, torch.zeros(1, dtype=torch.long), dataset)
    layout = prediction_layout(task, probe["logits"]) if logits else {"family": "none", "positions": []}
    if logits and layout["family"] == "class" and logits_size is not None:
        if len(layout["positions"]) != 2:
            raise ValueError("logits_size applies to per-pixel logits (B, C, H, W); this prediction has none")
        layout["positions"] = [int(v) for v in logits_size]
    num_classes = int(layout.get("classes", 0)) if logits else 0
    if topk is not None:
        if not logits:
            raise ValueError("topk needs logits=True")
        if layout["family"] != "class":
            raise ValueError(
                f"topk compresses class distributions; task {task.name!r} predicts values — store them in full "
                "(topk: null)"
            )
        if not 1 <= topk <= num_classes:
            raise ValueError(f"topk must be in [1, {num_classes}] (the teacher's classes), got {topk}")
    mode = "none" if not logits else ("topk" if topk is not None else "full")
    if mode == "full" and layout["family"] != "class":
        fields = {"logits": {"dtype": dtype, "shape": list(layout["value_shape"])}}
    else:
        fields = _logits_fields(mode, topk, num_classes, dtype, layout["positions"])
    tap_meta: dict[str, dict[str, Any]] = {}
    projections: dict[str, torch.Tensor] = {}
    for name, spec in specs.items():
        if name == "logits":
            continue
        shape = list(probe[name].shape[1:])
        axis = _feature_axis(len(shape))
        want = project_dim.get(name) if isinstance(project_dim, Mapping) else project_dim
        proj = None
        stored = list(shape)
        if want is not None and shape and shape[axis] > int(want):
            in_dim, out_dim = shape[axis], int(want)
            matrix = _projection_matrix(aug_seed, name, in_dim, out_dim)
            projections[name] = torch.from_numpy(matrix).to(device)
            stored[axis] = out_dim
            proj = {
                "method": "gaussian",
                "scale": "1/sqrt(out_dim)",
                "seed_parts": [aug_seed, "projection", name],
                "in_dim": in_dim,
                "out_dim": out_dim,
                "axis": axis,
                "file": f"projection.{name}.npy",
            }
        tap_meta[name] = {
            "path": spec.path,
            "kind": spec.kind,
            "select": spec.select,
            "shape": shape,
            "stored_shape": stored,
            "projection": proj,
        }
        fields[name] = {"dtype": dtype, "shape": stored}
    for pname, arr in view_params.items():
        fields[f"param.{pname}"] = {"dtype": "int16", "shape": list(arr.shape[1:])}

    entry_bytes = sum(
        int(np.dtype(f["dtype"]).itemsize * int(np.prod(f["shape"], dtype=np.int64))) for f in fields.values()
    )
    if shard_size is None:
        shard_size = max(1, min(len(index), TARGET_SHARD_BYTES // max(1, entry_bytes * num_views)))
    num_shards = math.ceil(len(index) / shard_size)
    _check_disk_space(root, entry_bytes * num_views * len(index), num_views, len(index))
    header: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "teacher": {
            "model_name": model_name or type(teacher).__name__,
            "sha256": teacher_sha256(teacher),
            "precision": ("bfloat16" if device.type == "cpu" else "float16") if autocast else "float32",
            "channels_last": bool(channels_last),
        },
        "dataset": _dataset_identity(dataset),
        "augmentation": {
            "hash": aug_hash,
            "config": aug_config,
            # no random operation: every view id renders the same pixels, so any view id maps to view 0
            "identity": bool(getattr(augmenter.config, "is_identity", False)),
            "renderer": "featdistill.data.loaders.render_views",
        },
        "seed": aug_seed,
        "num_views": int(num_views),
        "covered": {
            "num_samples": int(len(index)),
            "all": bool(len(index) == n_total),
            "sha256": _hash_index(index),
            "file": INDEX_FILE,
        },
        "logits": {
            "mode": mode,
            "k": topk,
            "task": task.name,
            "family": layout["family"],
            # the prediction's class dim (moved last when stored) and the positions stored per sample
            "class_dim": layout.get("class_dim"),
            "positions": list(layout.get("positions", [])),
            "source_shape": list(probe["logits"].shape[1:]) if logits else [],
            "num_classes": num_classes,
            "value_dtype": dtype,
            "index_dtype": index_dtype_for(num_classes) if mode == "topk" else None,
            "reconstruction": (
                "log p: top-k log-probabilities kept, the remaining mass spread uniformly over the other "
                "classes, renormalised in float32"
                if mode == "topk"
                else ("raw logits" if mode == "full" else None)
            ),
        },
        "taps": tap_meta,
        "view_params": sorted(view_params),
        "fields": fields,
        "entry_bytes": entry_bytes,
        # bytes per stored position (per token / per pixel) of the prediction fields alone
        "prediction_bytes_per_position": (
            sum(
                int(np.dtype(f["dtype"]).itemsize * int(np.prod(f["shape"], dtype=np.int64)))
                for name, f in fields.items()
                if name.startswith("logits")
            )
            / max(1, int(np.prod(layout.get("positions") or [1])))
        ),
        "entries": int(len(index) * num_views),
        "shard_size": int(shard_size),
        "num_shards": int(num_shards),
    }

    header["header_sha256"] = _header_sha(header)

    # --- the partial manifest pins what is being built ----------------------------------------------------
    manifest_path = root / MANIFEST
    root.mkdir(parents=True, exist_ok=True)
    if manifest_path.exists():
        old = read_json(manifest_path)
        reasons = header_diff(old, header) if old.get("format") == FORMAT_NAME else ["not a teacher store"]
        if reasons and resume:
            raise StoreMismatchError(
                f"{root} already holds a teacher store built from other inputs — "
                + "; ".join(reasons)
                + ". Pass resume=False to overwrite it, or choose another out_dir."
            )
        if reasons or old.get("complete") and not resume:
            atomic_write_json(manifest_path, {**header, "complete": False, "shards": []})
    else:
        atomic_write_json(manifest_path, {**header, "complete": False, "shards": []})
    if not (root / INDEX_FILE).exists() or not resume or not _index_intact(root, header["covered"]["sha256"]):
        atomic_save_npy(root / INDEX_FILE, index)
    for name, m in projections.items():
        atomic_save_npy(root / f"projection.{name}.npy", m.cpu().numpy())

    # --- this rank's shards -------------------------------------------------------------------------------
    built: list[int] = []
    skipped: list[int] = []
    forwards = 0
    for s in range(rank, num_shards, world_size):
        start, stop = s * shard_size, min((s + 1) * shard_size, len(index))
        if resume and _shard_done(root, s, start, stop, header["header_sha256"], sha256=True):
            skipped.append(s)
            continue
        t0 = time.perf_counter()
        rows = stop - start
        # sample-major (row, view) pairs; batches cut across rows freely
        sids_all = torch.as_tensor(index[start:stop]).repeat_interleave(num_views)
        vids_all = torch.arange(num_views, dtype=torch.long).repeat(rows)
        arrays = {
            f: np.empty((rows, num_views, *meta["shape"]), dtype=np.dtype(meta["dtype"])) for f, meta in fields.items()
        }
        flat = {f: a.reshape(rows * num_views, *a.shape[2:]) for f, a in arrays.items()}
        for b0 in range(0, rows * num_views, batch_size):
            sids, vids = sids_all[b0 : b0 + batch_size], vids_all[b0 : b0 + batch_size]
            out = run_teacher(sids, vids)
            forwards += int(sids.numel())
            b1 = b0 + int(sids.numel())
            if logits:
                stored = _to_stored(out["logits"], layout, logits_size)
                for f, t in _compress_logits(stored, mode, topk).items():
                    flat[f][b0:b1] = t.cpu().numpy().astype(fields[f]["dtype"], copy=False)
            for name in tap_meta:
                t = out[name].float()
                if name in projections:
                    t = _project(t, projections[name], tap_meta[name]["projection"]["axis"])
                flat[name][b0:b1] = t.cpu().numpy().astype(dtype, copy=False)
            if view_params:
                for pname, arr in _params_numpy(augmenter, sids, vids, dataset).items():
                    flat[f"param.{pname}"][b0:b1] = arr
        files: dict[str, dict[str, Any]] = {}
        for f, a in arrays.items():
            path = field_path(root, s, f)
            size, digest = atomic_save_npy(path, a)
            files[f] = {"file": path.name, "bytes": size, "sha256": digest}
        record = {
            "index": s,
            "start": start,
            "stop": stop,
            "rows": rows,
            "first_sample_id": int(index[start]),
            "last_sample_id": int(index[stop - 1]),
            "files": files,
            "header_sha256": header["header_sha256"],
            "seconds": round(time.perf_counter() - t0, 3),
            "rank": rank,
        }
        atomic_write_json(shard_record_path(root, s), record)
        built.append(s)
        if on_shard is not None:
            on_shard(s)
    live.close()

    # --- finalise -----------------------------------------------------------------------------------------
    complete = False
    if torch.distributed.is_available() and torch.distributed.is_initialized() and world_size > 1:
        torch.distributed.barrier()
        if rank == 0:
            complete = finalize_store(root, strict=False)
        torch.distributed.barrier()
        complete = bool(read_json(manifest_path).get("complete"))
    else:
        complete = finalize_store(root, strict=False)
    return BuildResult(root, complete, built, skipped, forwards, round(time.perf_counter() - t_start, 3))


def _params_numpy(augmenter: Any, sids: torch.Tensor, vids: torch.Tensor, dataset: Any) -> dict[str, np.ndarray]:
    """The augmenter's sampled parameters (crop offsets, flip, resized-crop box) as int16, batch-first.

    Audit only: views are replayed from ``(seed, sample_id, view_id)``; these let a reader check what a view
    was without re-rendering it.  Pixel coordinates fit int16 for images up to 32,767 pixels a side.
    """
    params = augmenter.params(sids, vids, tuple(dataset.image_shape))
    out: dict[str, np.ndarray] = {}
    for k, v in params.items():
        if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == sids.numel():
            out[str(k)] = v.detach().cpu().to(torch.int16).numpy()
    return out


def _index_intact(root: Path, sha: str) -> bool:
    """Whether ``index.npy`` holds the covered ids this build records (a damaged one is rewritten on resume)."""
    try:
        return _hash_index(np.load(root / INDEX_FILE, allow_pickle=False)) == sha
    except (OSError, ValueError):
        return False


def _header_sha(header: Mapping[str, Any]) -> str:
    """Digest of everything a shard's contents depend on; a shard record from another build never counts."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(header, sort_keys=True, default=str).encode()).hexdigest()


def _shard_done(root: Path, s: int, start: int, stop: int, header_sha: str, sha256: bool = False) -> bool:
    """Whether shard ``s`` is built for this header: record present, sizes as recorded (and, with ``sha256``,
    every file's digest as recorded — what a resumed build checks before it skips a shard)."""
    rec_path = shard_record_path(root, s)
    if not rec_path.exists():
        return False
    try:
        rec = read_json(rec_path)
    except (OSError, ValueError):
        return False
    if rec.get("start") != start or rec.get("stop") != stop or rec.get("header_sha256") != header_sha:
        return False
    for meta in rec.get("files", {}).values():
        p = root / "shards" / meta["file"]
        if not p.exists() or p.stat().st_size != meta["bytes"]:
            return False
        if sha256 and file_sha256(p) != meta.get("sha256"):
            log.warning("shard file %s does not match its recorded sha256; rebuilding shard %s", p, shard_stem(s))
            return False
    return True


def finalize_store(path: str | Path, strict: bool = True) -> bool:
    """Collect the shard records into the manifest and mark the store complete when every shard exists.

    Safe to call from several ranks (identical content, atomic replace).  Returns whether the store is
    complete; with ``strict=True`` a missing shard raises :class:`StoreIncompleteError` naming it.
    """
    root = Path(path)
    manifest = read_json(root / MANIFEST)
    records = []
    missing = []
    seconds = 0.0
    for s in range(int(manifest["num_shards"])):
        shard_size = int(manifest["shard_size"])
        start = s * shard_size
        stop = min(start + shard_size, int(manifest["covered"]["num_samples"]))
        if _shard_done(root, s, start, stop, manifest["header_sha256"]):
            rec = read_json(shard_record_path(root, s))
            seconds += float(rec.get("seconds", 0.0))
            rec.pop("seconds", None)
            rec.pop("rank", None)
            records.append(rec)
        else:
            missing.append(shard_stem(s))
    if missing:
        if strict:
            raise StoreIncompleteError(
                f"{root}: {len(missing)} of {manifest['num_shards']} shards not built yet "
                f"({', '.join(missing[:8])}{'…' if len(missing) > 8 else ''}); rerun the build (it resumes)"
            )
        return False
    if manifest.get("complete") and manifest.get("shards") == records:
        return True
    manifest["shards"] = records
    manifest["build_seconds"] = round(seconds, 3)
    manifest["bytes"] = int(sum(f["bytes"] for r in records for f in r["files"].values()))
    manifest["complete"] = True
    atomic_write_json(root / MANIFEST, manifest)
    return True
