"""Read a teacher store: validation with exact refusals, then zero-copy random access by (sample_id, view_id).

Opening a store checks, in this order, and refuses with the reason (never serves outputs silently):

1. it is a featdistill teacher store of a format version this code reads;
2. it was built for the teacher / dataset / augmentation / seed / k / taps the caller expects (``expect=``);
3. it is complete (unless ``allow_incomplete=True``, which serves the shards that exist);
4. the manifest still matches its own header digest (an edited teacher sha, fingerprint, V, k … is refused);
5. every shard file exists with its recorded size and ``.npy`` header (``verify="size"``, the default and
   cheap), or also its recorded sha256 (``verify="sha256"``, or later :meth:`TeacherStore.verify`);
6. unless ``verify="none"``, each shard file's sha256 is checked against its record the first time a lookup
   touches it, before it is mapped (once per file: the per-batch gather is unchanged), so a same-size byte flip
   or two swapped shards are refused before any of their values is served (:mod:`featdistill.cache.integrity`).

Arrays are opened with ``np.load(mmap_mode="r")``: nothing is read until a lookup touches it, and a lookup
of one view (:meth:`TeacherStore.get`) returns views into the mapped files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from featdistill.cache.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST,
    SHARD_DIR,
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
    file_sha256,
    read_json,
    shard_record_path,
    shard_stem,
    teacher_sha256,
)

__all__ = ["TeacherStore", "LOGP_FLOOR", "reconstruct_logp"]

#: log-probability given to classes whose stored mass underflowed to 0 (finite, so no loss can produce NaN)
LOGP_FLOOR = -1.0e4


def reconstruct_logp(
    topk_logp: torch.Tensor, topk_idx: torch.Tensor, rest_logp: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Full ``(…, C)`` log-probabilities from a top-k record ``(…, k)`` (FKD's "marginal smoothing"); the
    leading dims are the batch and the stored positions (pixels, tokens).

    The ``k`` stored classes keep their probabilities; the remaining mass ``exp(rest_logp)`` is spread
    uniformly over the other ``C − k`` classes; the row is renormalised in float32 (fp16 rounding of the
    stored values would otherwise leave it off 1 by ~1e-3).  Because ``softmax`` is shift invariant,
    ``softmax(log p / T)`` equals ``softmax(z / T)`` exactly when ``p`` is the full softmax of ``z``, so these
    log-probabilities stand in for logits at any temperature; with top-k the only error is the uniform tail.
    """
    lead, k = tuple(topk_logp.shape[:-1]), topk_logp.shape[-1]
    logp = topk_logp.float().reshape(-1, k)
    b = logp.shape[0]
    out = torch.empty(b, num_classes, dtype=torch.float32, device=logp.device)
    if num_classes > k:
        out[:] = (rest_logp.float().reshape(b) - math.log(num_classes - k)).reshape(b, 1)
    out.scatter_(1, topk_idx.long().reshape(b, k), logp)
    out = torch.nan_to_num(out, neginf=LOGP_FLOOR).clamp_min(LOGP_FLOOR)
    return (out - torch.logsumexp(out, dim=1, keepdim=True)).reshape(*lead, num_classes)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from a ``.npy`` header without mapping the file (keeps file descriptors free)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
    except (ValueError, OSError) as err:
        raise StoreCorruptError(f"shard file {path} has no valid .npy header: {err}") from err
    if fortran:
        raise StoreCorruptError(f"shard file {path} is Fortran-ordered; the store writes C order")
    return tuple(shape), np.dtype(dtype)


def _describe(v: Any) -> str:
    s = str(v)
    return s[:16] + "…" if len(s) > 20 else s


def _expected_teacher_sha(v: Any) -> str:
    if isinstance(v, torch.nn.Module):
        return teacher_sha256(v)
    return str(v)


def _expected_dataset_fp(v: Any) -> str:
    return str(v.fingerprint()) if hasattr(v, "fingerprint") else str(v)


def _expected_aug(v: Any) -> tuple[str, int | None]:
    """``(config hash, seed or None)`` from an Augmenter, a ViewConfig or a hash string."""
    if hasattr(v, "config") and hasattr(v, "seed"):
        return str(v.config.config_hash()), int(v.seed)
    if hasattr(v, "config_hash"):
        return str(v.config_hash()), None
    return str(v), None


class TeacherStore:
    """A validated, memory-mapped teacher store.  Build one with :func:`featdistill.cache.build_store`."""

    def __init__(
        self, root: Path, manifest: dict[str, Any], records: dict[int, dict[str, Any]], index: np.ndarray
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.records = records
        self.index = index
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._hash_on_use = True  # sha256 of a shard file before its first use (open(verify="none") turns it off)
        self._verified: set[Path] = set()
        self.shard_size = int(manifest["shard_size"])
        self.num_views = int(manifest["num_views"])
        self.fields: dict[str, dict[str, Any]] = manifest["fields"]
        logits = manifest["logits"]
        self.logits_mode: str = logits["mode"]
        self.topk: int | None = logits.get("k")
        self.num_classes: int = int(logits.get("num_classes") or 0)
        self.views_identical = bool(manifest["augmentation"].get("identity", False))
        #: shard number → built (a lookup table: ``np.isin`` on every batch cost more than the gather itself)
        self._built = np.zeros(max(int(manifest["num_shards"]), 1), dtype=bool)
        self._built[list(records)] = True

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        expect: Mapping[str, Any] | None = None,
        *,
        allow_incomplete: bool = False,
        verify: Literal["none", "size", "sha256"] = "size",
    ) -> TeacherStore:
        """Open and validate the store at ``path``.

        ``expect`` lists what the caller is about to use it with; every key given must match the store:

        - ``teacher``: an ``nn.Module`` (its weights are hashed) or a weights sha256;
        - ``model_name``: the teacher's model name;
        - ``dataset``: an ``ImageDataset`` or its fingerprint;
        - ``augmentation``: an ``Augmenter`` (config hash and seed), a ``ViewConfig`` or a config hash;
        - ``seed``: the augmentation seed;
        - ``topk``: the ``k`` of a top-k store, or ``None`` for a full-logits store;
        - ``num_views``: the minimum number of stored views per sample the caller will use;
        - ``taps``: names of outputs the caller needs (``"logits"``, ``"embedding"``, …).

        Raises :class:`StoreMismatchError`, :class:`StoreIncompleteError` or :class:`StoreCorruptError` with
        the exact reason.
        """
        root = Path(path)
        mpath = root / MANIFEST
        if not mpath.exists():
            raise StoreError(
                f"{root} is not a teacher store: no {MANIFEST} (build one with "
                "`featdistill cache CONFIG.yaml` or featdistill.cache.build_store)"
            )
        try:
            manifest = read_json(mpath)
        except ValueError as err:
            raise StoreCorruptError(f"{mpath}: unreadable manifest ({err})") from err
        if manifest.get("format") != FORMAT_NAME:
            raise StoreError(f"{root}: {MANIFEST} is not a featdistill teacher store manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreMismatchError(
                f"{root}: store format version {manifest.get('format_version')} but this featdistill reads "
                f"version {FORMAT_VERSION}; rebuild the store with this version"
            )
        from featdistill.cache.integrity import manifest_problems

        edited = manifest_problems(manifest)
        if edited:
            raise StoreCorruptError(f"teacher store {root}: {edited[0]}")
        if expect:
            check_expectations(manifest, expect, root)
        records = _collect_records(root, manifest, allow_incomplete)
        index_path = root / INDEX_FILE
        if not index_path.exists():
            raise StoreCorruptError(f"{root}: {INDEX_FILE} is missing (it maps positions to sample ids)")
        index = np.load(index_path, mmap_mode="r", allow_pickle=False)
        if index.shape != (int(manifest["covered"]["num_samples"]),):
            raise StoreCorruptError(
                f"{index_path}: holds {index.shape} ids but the manifest covers "
                f"{manifest['covered']['num_samples']} samples"
            )
        from featdistill.cache.builder import _hash_index

        if verify != "none" and _hash_index(index) != manifest["covered"].get("sha256"):
            raise StoreCorruptError(
                f"{index_path} does not match the manifest's sha256 of the covered sample ids (edited or corrupt): "
                "positions would map to the wrong samples; rebuild the store"
            )
        store = cls(root, manifest, records, np.asarray(index))
        store._hash_on_use = verify == "size"
        if verify != "none":
            store._check_files(sha256=verify == "sha256")
        return store

    @staticmethod
    def peek_num_views(path: str | Path) -> int:
        """``V`` of the store at ``path`` from its manifest alone (to configure a loader before opening)."""
        mpath = Path(path) / MANIFEST
        if not mpath.exists():
            raise StoreError(f"{path} is not a teacher store: no {MANIFEST} (build it with `featdistill cache`)")
        return int(read_json(mpath)["num_views"])

    def _check_files(self, sha256: bool) -> None:
        for s, rec in sorted(self.records.items()):
            for field, meta in rec["files"].items():
                p = self.root / SHARD_DIR / meta["file"]
                if not p.exists():
                    raise StoreCorruptError(f"shard file {p} is missing (shard {shard_stem(s)}); rebuild that shard")
                size = p.stat().st_size
                if size != meta["bytes"]:
                    raise StoreCorruptError(
                        f"shard file {p} is truncated or overwritten: {size} bytes on disk, {meta['bytes']} "
                        f"recorded; delete {shard_record_path(self.root, s).name} and rerun the build "
                        "to redo it"
                    )
                if sha256:
                    self._check_sha(s, p, meta)
                shape, dtype = _npy_header(p)  # header only: mapping waits for the first lookup
                want = (rec["rows"], self.num_views, *self.fields[field]["shape"])
                if shape != want or dtype != np.dtype(self.fields[field]["dtype"]):
                    raise StoreCorruptError(
                        f"shard file {p}: array {dtype}{shape}, manifest says {self.fields[field]['dtype']}{want}"
                    )

    def _check_sha(self, s: int, p: Path, meta: Mapping[str, Any]) -> None:
        digest = file_sha256(p)
        if digest != meta["sha256"]:
            raise StoreCorruptError(
                f"shard file {p} is corrupt: sha256 {_describe(digest)} ≠ recorded "
                f"{_describe(meta['sha256'])}; rerun the build (`featdistill cache CONFIG.yaml`: it re-verifies "
                f"and redoes shard {shard_stem(s)}) or delete {shard_record_path(self.root, s).name} first"
            )
        self._verified.add(p)

    def verify(self) -> None:
        """Recompute the sha256 of every shard file (reads everything once); raise naming a corrupt file."""
        self._check_files(sha256=True)

    def _open_array(self, s: int, field: str, path: Path | None = None) -> np.ndarray:
        arrays = self._arrays.setdefault(s, {})
        if field not in arrays:
            meta = self.records[s]["files"][field]
            p = path or self.root / SHARD_DIR / meta["file"]
            if self._hash_on_use and p not in self._verified:  # once per file, before it is first served
                self._check_sha(s, p, meta)
            try:
                arrays[field] = np.load(p, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as err:
                raise StoreCorruptError(f"shard file {p} cannot be mapped: {err}") from err
        return arrays[field]

    # -- description ------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def tap_names(self) -> set[str]:
        """Outputs a :class:`~featdistill.cache.CachedTeacher` on this store provides."""
        names = set(self.manifest["taps"])
        if self.logits_mode != "none":
            names.add("logits")
        return names

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    def __len__(self) -> int:
        """Number of stored (sample, view) entries available (all of them when complete)."""
        return sum(int(r["rows"]) for r in self.records.values()) * self.num_views

    def projection(self, tap: str) -> torch.Tensor | None:
        """The ``(in_dim, out_dim)`` random projection applied to ``tap`` at build time, or ``None``."""
        meta = self.manifest["taps"][tap].get("projection")
        if not meta:
            return None
        return torch.from_numpy(np.load(self.root / meta["file"], allow_pickle=False))

    def augmenter(self) -> Any:
        """The :class:`~featdistill.data.views.Augmenter` that renders this store's views (config + seed)."""
        from featdistill.data.views import Augmenter, ViewConfig

        return Augmenter(ViewConfig.from_dict(self.manifest["augmentation"]["config"]), self.seed)

    def sample_ids(self) -> torch.Tensor:
        """The covered sample ids that are available (all covered ids when the store is complete)."""
        parts = [self.index[r["start"] : r["stop"]] for _, r in sorted(self.records.items())]
        return torch.from_numpy(np.concatenate(parts).astype(np.int64)) if parts else torch.zeros(0, dtype=torch.long)

    # -- lookup ------------------------------------------------------------------------------
    def _locate(self, sample_ids: Any, view_ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sid = np.asarray(torch.as_tensor(sample_ids).detach().cpu().numpy(), dtype=np.int64).reshape(-1)
        vid = np.asarray(torch.as_tensor(view_ids).detach().cpu().numpy(), dtype=np.int64).reshape(-1)
        if vid.size == 1 and sid.size != 1:
            vid = np.broadcast_to(vid, sid.shape)
        if vid.size != sid.size:
            raise ValueError(f"{sid.size} sample ids but {vid.size} view ids")
        if self.views_identical:
            vid = np.zeros_like(vid)  # no random op: every view id names the same pixels
        bad = (vid < 0) | (vid >= self.num_views)
        if bad.any():
            raise KeyError(
                f"view ids {sorted(set(vid[bad].tolist()))[:5]} are not in this store (it holds views "
                f"0..{self.num_views - 1}); train with a ViewLoader whose policy is 'cycle' or 'sample' and "
                f"num_views={self.num_views} (featdistill.cache.store_loader does this)"
            )
        pos = np.searchsorted(self.index, sid)
        pos_c = np.minimum(pos, len(self.index) - 1)
        missing = self.index[pos_c] != sid
        if missing.any():
            raise KeyError(
                f"sample ids {sorted(set(sid[missing].tolist()))[:5]} are not covered by this store "
                f"(it covers {len(self.index)} samples of {self.manifest['dataset']['name']})"
            )
        shard = pos_c // self.shard_size
        absent = ~self._built[shard]
        if absent.any():
            names = sorted({shard_stem(int(s)) for s in shard[absent]})
            raise KeyError(
                f"sample ids {sorted(set(sid[absent].tolist()))[:5]} lie in shard(s) {names} which are "
                "not built (incomplete store); finish the build or restrict training to store.sample_ids()"
            )
        return shard, pos_c - shard * self.shard_size, vid

    def get(self, sample_id: int, view_id: int) -> dict[str, np.ndarray]:
        """Raw stored values of one view: read-only NumPy views into the mapped shards (no copy)."""
        shard, row, vid = self._locate([sample_id], [view_id])
        s = int(shard[0])
        return {f: self._open_array(s, f)[int(row[0]), int(vid[0])] for f in self.fields}

    def lookup(self, sample_ids: Any, view_ids: Any, fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Raw stored values for a batch of views (one gather per shard touched), stacked along axis 0."""
        shard, row, vid = self._locate(sample_ids, view_ids)
        names = list(self.fields if fields is None else fields)
        out = {
            f: np.empty((shard.size, *self.fields[f]["shape"]), dtype=np.dtype(self.fields[f]["dtype"])) for f in names
        }
        first = int(shard[0]) if shard.size else 0
        if shard.size and (shard == first).all():  # one shard (every small store): one gather per field
            for f in names:
                out[f][...] = self._open_array(first, f)[row, vid]
            return out
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            for f in names:
                out[f][sel] = self._open_array(int(s), f)[row[sel], vid[sel]]
        return out

    @property
    def sparse_ready(self) -> bool:
        """Whether the top-k records can be served as they are (:meth:`teacher_outputs` ``sparse=True``): a top-k
        store whose positions are the teacher's own (not resized, as ``logits_size`` does)."""
        lg = self.manifest["logits"]
        if self.logits_mode != "topk":
            return False
        cd, src = lg.get("class_dim"), list(lg.get("source_shape") or [])
        if cd is None or not src:
            return cd is None  # stores written before per-position layouts: one prediction per sample
        return [d for i, d in enumerate(src) if i != int(cd) - 1] == list(lg.get("positions", []))

    def teacher_outputs(
        self,
        sample_ids: Any,
        view_ids: Any,
        names: Iterable[str] | None = None,
        device: torch.device | str | None = None,
        sparse: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Float32 teacher outputs for a batch: ``"logits"`` (full logits, or log-probabilities reconstructed
        from top-k, see :func:`reconstruct_logp`) and every stored tap.

        ``sparse=True`` on a top-k store returns the record itself instead of ``"logits"`` — ``logits_topk_logp``,
        ``logits_topk_idx`` (class dim last, ``(B, *positions, k)``) and ``logits_rest_logp`` — for losses that
        use it directly (:func:`featdistill.losses.logits.kd_loss_topk`): no ``(…, C)`` tensor is built."""
        want = self.tap_names if names is None else set(names)
        unknown = want - self.tap_names
        if unknown:
            raise KeyError(f"store has no outputs {sorted(unknown)}; it has {sorted(self.tap_names)}")
        fields: list[str] = [n for n in want if n != "logits"]
        if "logits" in want:
            fields += (
                ["logits"]
                if self.logits_mode == "full"
                else ["logits_topk_logp", "logits_topk_idx", "logits_rest_logp"]
            )
        raw = self.lookup(sample_ids, view_ids, fields)
        t = {f: torch.from_numpy(a).to(device) if device is not None else torch.from_numpy(a) for f, a in raw.items()}
        out: dict[str, torch.Tensor] = {}
        if "logits" in want and sparse and self.sparse_ready:
            out["logits_topk_logp"] = t["logits_topk_logp"].float()
            out["logits_topk_idx"] = t["logits_topk_idx"].long()
            out["logits_rest_logp"] = t["logits_rest_logp"].float()
            want = want - {"logits"}
        if "logits" in want:
            if self.logits_mode == "full":
                z = t["logits"].float()
            else:
                z = reconstruct_logp(
                    t["logits_topk_logp"], t["logits_topk_idx"], t["logits_rest_logp"], self.num_classes
                )
            cd = self.manifest["logits"].get("class_dim")
            if cd is not None and cd != z.ndim - 1:  # stored class-last: back to the task's layout
                z = z.movedim(-1, int(cd))
            out["logits"] = z
        for n in want:
            if n != "logits":
                out[n] = t[n].float()
        return out

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"TeacherStore({str(self.root)!r}, teacher={m['teacher']['model_name']}, "
            f"dataset={m['dataset']['name']}, V={self.num_views}, logits={self.logits_mode}"
            + (f"(k={self.topk})" if self.topk else "")
            + f", taps={sorted(m['taps'])}, complete={self.complete})"
        )


def check_expectations(manifest: Mapping[str, Any], expect: Mapping[str, Any], root: Path | str = "") -> None:
    """Raise :class:`StoreMismatchError` naming the first input the store was not built for."""
    where = f"teacher store {root}" if root else "teacher store"
    aliases = {
        "teacher_sha256": "teacher",
        "dataset_fingerprint": "dataset",
        "augment_hash": "augmentation",
        "augmentation_hash": "augmentation",
        "k": "topk",
    }
    expect = {aliases.get(k, k): v for k, v in expect.items()}
    known = {"teacher", "model_name", "dataset", "augmentation", "seed", "topk", "num_views", "taps"}
    unknown = set(expect) - known
    if unknown:
        raise ValueError(f"unknown expectation keys {sorted(unknown)}; known: {sorted(known)}")

    def refuse(what: str, stored: Any, wanted: Any, fix: str) -> None:
        raise StoreMismatchError(
            f"{where} was built for another {what}: the store has {_describe(stored)}, you are using "
            f"{_describe(wanted)}. {fix}"
        )

    rebuild = "Rebuild the store for these inputs (`featdistill cache CONFIG.yaml`) or point at the right store."
    if "teacher" in expect:
        got = _expected_teacher_sha(expect["teacher"])
        if got != manifest["teacher"]["sha256"]:
            refuse("teacher (weights sha256)", manifest["teacher"]["sha256"], got, rebuild)
    if "model_name" in expect and expect["model_name"] != manifest["teacher"]["model_name"]:
        refuse("teacher model", manifest["teacher"]["model_name"], expect["model_name"], rebuild)
    if "dataset" in expect:
        got = _expected_dataset_fp(expect["dataset"])
        if got != manifest["dataset"]["fingerprint"]:
            refuse("dataset (fingerprint)", manifest["dataset"]["fingerprint"], got, rebuild)
        ds = expect["dataset"]
        if hasattr(ds, "mean") and manifest["dataset"].get("mean"):
            have = (list(manifest["dataset"]["mean"]), list(manifest["dataset"]["std"]))
            using = ([float(v) for v in ds.mean], [float(v) for v in ds.std])
            if have != using:
                refuse("dataset normalisation (mean, std)", have, using, rebuild)
    seed = expect.get("seed")
    if "augmentation" in expect:
        h, aug_seed = _expected_aug(expect["augmentation"])
        if h != manifest["augmentation"]["hash"]:
            refuse("augmentation (config hash)", manifest["augmentation"]["hash"], h, rebuild)
        seed = aug_seed if seed is None else seed
    if seed is not None and int(seed) != int(manifest["seed"]):
        refuse("augmentation seed", manifest["seed"], seed, rebuild)
    if "topk" in expect:
        k = expect["topk"]
        have = manifest["logits"].get("k") if manifest["logits"]["mode"] == "topk" else None
        if k != have:
            refuse(
                "k (top-k logits)",
                f"k={have}" if have else f"{manifest['logits']['mode']} logits",
                f"k={k}" if k else "full logits",
                "Rebuild with the k you want (topk: in the cache config).",
            )
    if "num_views" in expect and int(expect["num_views"]) > int(manifest["num_views"]):
        refuse(
            "number of views",
            f"V={manifest['num_views']}",
            f"V={expect['num_views']}",
            "Use num_views ≤ the store's V or rebuild with more views.",
        )
    if "taps" in expect:
        have_taps = set(manifest["taps"]) | ({"logits"} if manifest["logits"]["mode"] != "none" else set())
        missing = set(expect["taps"]) - have_taps
        if missing:
            refuse(
                "set of taps",
                sorted(have_taps),
                sorted(set(expect["taps"])),
                f"The store lacks {sorted(missing)}; rebuild it with those taps.",
            )


def _collect_records(root: Path, manifest: dict[str, Any], allow_incomplete: bool) -> dict[int, dict[str, Any]]:
    from featdistill.cache.builder import _shard_done

    if manifest.get("complete"):
        return {int(r["index"]): r for r in manifest["shards"]}
    num = int(manifest["num_shards"])
    size = int(manifest["shard_size"])
    covered = int(manifest["covered"]["num_samples"])
    records: dict[int, dict[str, Any]] = {}
    for s in range(num):
        start, stop = s * size, min((s + 1) * size, covered)
        if _shard_done(root, s, start, stop, manifest["header_sha256"]):
            records[s] = read_json(shard_record_path(root, s))
    if not allow_incomplete:
        missing = [shard_stem(s) for s in range(num) if s not in records]
        raise StoreIncompleteError(
            f"teacher store {root} is incomplete: {len(records)} of {num} shards built (missing "
            f"{', '.join(missing[:8])}{'…' if len(missing) > 8 else ''}). Rerun the build (it resumes "
            "where it stopped) or open with allow_incomplete=True to use the covered part."
        )
    return records
