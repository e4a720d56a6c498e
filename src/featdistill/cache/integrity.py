"""Integrity of a teacher store: what is checked when, and the full check behind ``featdistill cache verify``.

What a store serves is checked at three moments (the lookup itself stays a gather — nothing here runs per batch):

1. **open** (:meth:`TeacherStore.open`, default ``verify="size"``): the manifest's own digest (the header the
   shards were built for, :func:`manifest_problems`: an edited teacher sha, dataset fingerprint, V, k … is
   refused), every shard record's header digest, every file's existence, size and ``.npy`` header (shape,
   dtype) — a truncated, deleted, zeroed or header-damaged file is refused before training starts;
2. **first use of a shard file** (:meth:`TeacherStore._open_array`, once per file per process): its sha256
   against the record, before it is mapped — a same-size byte flip or two same-shape shards swapped is
   refused (:class:`StoreCorruptError` naming the file) before a single value of it is served;
3. **on demand**: :func:`verify_store` (``featdistill cache verify STORE``) hashes everything and lists every
   problem instead of stopping at the first; ``featdistill cache info`` runs the cheap checks of (1) and
   reports damage; a rerun of the build re-hashes every shard it would skip and redoes bad ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from featdistill.cache.format import (
    FORMAT_NAME,
    INDEX_FILE,
    MANIFEST,
    SHARD_DIR,
    StoreError,
    file_sha256,
    read_json,
    shard_record_path,
)

__all__ = ["HEADER_EXCLUDE", "manifest_problems", "index_problems", "file_problems", "verify_store", "format_verify"]

#: manifest keys that are not part of the header the shards were built for (added by the build / finalise)
HEADER_EXCLUDE = ("header_sha256", "complete", "shards", "bytes", "build_seconds")


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """Whether the manifest still is what the build wrote: its header digest, and every shard record's."""
    from featdistill.cache.builder import _header_sha

    header = {k: v for k, v in manifest.items() if k not in HEADER_EXCLUDE}
    want = manifest.get("header_sha256")
    problems = []
    if _header_sha(header) != want:
        problems.append(
            f"{MANIFEST} was edited: its header no longer matches its header_sha256 (teacher, dataset, "
            "augmentation, V, k or taps changed after the build); rebuild the store"
        )
    for r in manifest.get("shards") or []:
        if r.get("header_sha256") != want:
            problems.append(f"{MANIFEST}: the record of shard {r.get('index')} belongs to another build")
    return problems


def index_problems(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Whether ``index.npy`` (position → sample id) is the one the manifest records (its length and sha256)."""
    from featdistill.cache.builder import _hash_index

    index_path = root / INDEX_FILE
    if not index_path.is_file():
        return [f"{index_path} is missing (it maps positions to sample ids); rerun the build"]
    try:
        idx = np.load(index_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        return [f"{index_path} cannot be read ({err}); rerun the build"]
    if idx.shape != (int(manifest["covered"]["num_samples"]),):
        return [f"{index_path}: {idx.shape} ids, the manifest covers {manifest['covered']['num_samples']}"]
    if _hash_index(idx) != manifest["covered"].get("sha256"):
        return [f"{index_path} does not match the manifest's sha256 of the covered sample ids; rerun the build"]
    return []


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    return tuple(shape), np.dtype(dtype), bool(fortran)


def file_problems(
    root: Path, manifest: dict[str, Any], records: dict[int, dict[str, Any]], sha256: bool
) -> tuple[list[str], int]:
    """Every problem of the shard files (missing, size, ``.npy`` header, and with ``sha256`` the digest);
    returns ``(problems, bytes checked)``."""
    problems: list[str] = []
    checked = 0
    num_views = int(manifest["num_views"])
    for s, rec in sorted(records.items()):
        redo = f"rerun the build (`featdistill cache CONFIG.yaml`) to redo shard {s:05d}"
        for field, meta in rec["files"].items():
            p = root / SHARD_DIR / meta["file"]
            if not p.is_file():
                problems.append(f"shard file {p} is missing; {redo}")
                continue
            size = p.stat().st_size
            if size != meta["bytes"]:
                problems.append(f"shard file {p} has {size} bytes, {meta['bytes']} recorded (truncated?); {redo}")
                continue
            try:
                shape, dtype, fortran = _npy_header(p)
            except (ValueError, OSError) as err:
                problems.append(f"shard file {p} has no valid .npy header ({err}); {redo}")
                continue
            spec = manifest["fields"].get(field, {})
            want = (int(rec["rows"]), num_views, *spec.get("shape", []))
            if fortran or shape != want or dtype != np.dtype(spec.get("dtype", dtype)):
                problems.append(f"shard file {p}: array {dtype}{shape}, the manifest says {spec.get('dtype')}{want}")
                continue
            if sha256:
                checked += size
                if file_sha256(p) != meta["sha256"]:
                    problems.append(f"shard file {p} does not match its recorded sha256 (corrupt); {redo}")
    return problems, checked


def verify_store(path: str | Path, sha256: bool = True) -> dict[str, Any]:
    """Check the whole store at ``path`` and return ``{"path", "ok", "problems", "shards", "files", "bytes",
    "seconds", "complete"}``; every problem is listed (nothing stops at the first).  Raises
    :class:`StoreError` only when ``path`` is not a store at all."""
    from featdistill.cache.builder import _shard_done

    t0 = time.perf_counter()
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise StoreError(f"{root} is not a teacher store: no {MANIFEST}")
    try:
        manifest = read_json(mpath)
    except ValueError as err:
        raise StoreError(f"{mpath}: unreadable manifest ({err}); rebuild the store") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{mpath} is not a featdistill teacher store manifest")
    problems = manifest_problems(manifest)
    try:
        num = int(manifest["num_shards"])
        if manifest.get("complete"):
            records = {int(r["index"]): r for r in manifest["shards"]}
        else:
            size, covered = int(manifest["shard_size"]), int(manifest["covered"]["num_samples"])
            records = {}
            for s in range(num):
                start, stop = s * size, min((s + 1) * size, covered)
                if _shard_done(root, s, start, stop, manifest["header_sha256"]):
                    records[s] = read_json(shard_record_path(root, s))
        missing = [s for s in range(num) if s not in records]
        if missing and manifest.get("complete"):
            problems.append(f"{MANIFEST} says complete but lists {num - len(missing)} of {num} shards")
        for s, rec in records.items():  # the record files beside the shards must agree with the manifest
            rp = shard_record_path(root, s)
            if manifest.get("complete") and rp.is_file():
                disk = {k: v for k, v in read_json(rp).items() if k not in ("seconds", "rank")}
                if disk != rec:
                    problems.append(f"{rp.name} differs from the manifest's record of shard {s:05d}")
        problems += index_problems(root, manifest)
        more, checked = file_problems(root, manifest, records, sha256)
        problems += more
    except (KeyError, TypeError, ValueError) as err:
        problems.append(f"{MANIFEST} is malformed ({type(err).__name__}: {err}); rebuild the store")
        records, checked, missing = {}, 0, []
    return {
        "path": str(root),
        "ok": not problems,
        "complete": bool(manifest.get("complete")) and not missing,
        "problems": problems,
        "shards": [len(records), int(manifest.get("num_shards") or 0)],
        "files": sum(len(r.get("files", {})) for r in records.values()),
        "bytes": checked,
        "sha256": sha256,
        "seconds": round(time.perf_counter() - t0, 4),
    }


def format_verify(report: dict[str, Any]) -> str:
    """Terminal text for :func:`verify_store`."""
    if report["ok"]:
        what = "sha256 of" if report["sha256"] else "sizes and headers of"
        state = "complete" if report["complete"] else "INCOMPLETE (the built shards are sound)"
        return (
            f"teacher store {report['path']}: OK — {what} {report['files']} files in "
            f"{report['shards'][0]}/{report['shards'][1]} shards checked ({report['bytes'] / 2**20:.1f} MiB hashed "
            f"in {report['seconds']:.2f} s); {state}"
        )
    lines = [f"teacher store {report['path']}: DAMAGED — {len(report['problems'])} problem(s):"]
    lines += [f"  {p}" for p in report["problems"][:50]]
    if len(report["problems"]) > 50:
        lines.append(f"  … and {len(report['problems']) - 50} more")
    return "\n".join(lines)
