"""``featdistill cache info STORE``: what a store holds, what it cost on disk, what it was built from.

Reads only the manifest, the shard records, file sizes and ``.npy`` headers (no shard contents), so it is
instant and works on an incomplete store (that is when you most want to know its coverage).  Damage those
checks can see (a deleted or truncated file, a broken header, an edited manifest) is reported under
``problems`` (status DAMAGED; the CLI then exits non-zero); ``featdistill cache verify STORE`` also hashes
every file (:mod:`featdistill.cache.integrity`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featdistill.cache.format import FORMAT_NAME, MANIFEST, StoreError, read_json

__all__ = ["store_info", "format_info", "bytes_per_entry"]


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def bytes_per_entry(fields: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Payload bytes of one (sample, view) entry per field (dtype size × elements)."""
    import numpy as np

    return {f: int(np.dtype(m["dtype"]).itemsize * int(np.prod(m["shape"], dtype=np.int64))) for f, m in fields.items()}


def store_info(path: str | Path) -> dict[str, Any]:
    """A JSON-able summary of the store at ``path`` (complete or not).

    Keys: ``path``, ``complete``, ``format_version``, ``teacher`` (model, weights sha256, precision),
    ``dataset`` (name, fingerprint, samples), ``augmentation`` (config, hash, seed), ``num_views``,
    ``logits`` (mode, k, classes), ``taps`` (shapes, projection), ``fields`` (dtype, shape, bytes per entry),
    ``bytes_per_view`` (payload), ``disk_bytes`` (everything in the directory), ``disk_bytes_per_view``,
    ``coverage`` (shards, samples and views built vs planned), ``build_seconds``, ``problems`` (damage found
    by the cheap checks: missing/truncated files, bad headers, an edited manifest; empty when sound).
    """
    from featdistill.cache.builder import _shard_done
    from featdistill.cache.format import shard_record_path
    from featdistill.cache.integrity import file_problems, index_problems, manifest_problems

    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.exists():
        raise StoreError(f"{root} is not a teacher store: no {MANIFEST}")
    m = read_json(mpath)
    if m.get("format") != FORMAT_NAME:
        raise StoreError(f"{mpath} is not a featdistill teacher store manifest")
    size = int(m["shard_size"])
    covered = int(m["covered"]["num_samples"])
    if m.get("complete"):
        rows_done = sum(int(r["rows"]) for r in m["shards"])
        shards_done = len(m["shards"])
        records = {int(r["index"]): r for r in m["shards"]}
    else:
        rows_done = shards_done = 0
        records = {}
        for s in range(int(m["num_shards"])):
            start, stop = s * size, min((s + 1) * size, covered)
            if _shard_done(root, s, start, stop, m["header_sha256"]):
                shards_done += 1
                records[s] = read_json(shard_record_path(root, s))
                rows_done += int(records[s]["rows"])
    problems = manifest_problems(m) + index_problems(root, m) + file_problems(root, m, records, sha256=False)[0]
    per_field = bytes_per_entry(m["fields"])
    disk = _disk_bytes(root)
    views_done = rows_done * int(m["num_views"])
    return {
        "path": str(root),
        "complete": bool(m.get("complete")),
        "format_version": m["format_version"],
        "teacher": m["teacher"],
        "dataset": {k: m["dataset"][k] for k in ("name", "fingerprint", "num_samples", "image_shape", "num_classes")},
        "augmentation": {
            "config": m["augmentation"]["config"],
            "hash": m["augmentation"]["hash"],
            "seed": m["seed"],
        },
        "num_views": int(m["num_views"]),
        "logits": {
            **{k: m["logits"][k] for k in ("mode", "k", "num_classes", "value_dtype", "index_dtype")},
            **{k: m["logits"][k] for k in ("task", "family", "positions") if k in m["logits"]},
        },
        # per token / per pixel for position-wise predictions (the whole prediction for one per sample)
        "prediction_bytes_per_position": m.get("prediction_bytes_per_position"),
        "teacher_precision": m["teacher"].get("precision"),
        "taps": {
            n: {
                "path": t["path"],
                "shape": t["shape"],
                "stored_shape": t["stored_shape"],
                "projection": (t["projection"] or {}).get("out_dim"),
            }
            for n, t in m["taps"].items()
        },
        "fields": {f: {**m["fields"][f], "bytes": per_field[f]} for f in m["fields"]},
        "bytes_per_view": sum(per_field.values()),
        "disk_bytes": disk,
        "disk_bytes_per_view": disk / views_done if views_done else None,
        "coverage": {
            "shards": [shards_done, int(m["num_shards"])],
            "samples": [rows_done, covered],
            "views": [views_done, covered * int(m["num_views"])],
            "fraction": rows_done / covered if covered else 0.0,
            "dataset_fraction": rows_done / int(m["dataset"]["num_samples"]) if m["dataset"]["num_samples"] else 0.0,
        },
        "build_seconds": m.get("build_seconds"),
        "problems": problems,
    }


def _human(n: float | int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def format_info(info: dict[str, Any]) -> str:
    """Plain-text rendering of :func:`store_info` for the terminal (the CLI prints this)."""
    t, d, a, lg, cov = (
        info["teacher"],
        info["dataset"],
        info["augmentation"],
        info["logits"],
        info["coverage"],
    )
    logits = {
        "topk": f"top-{lg['k']} log-probs ({lg['value_dtype']}) + {lg['index_dtype']} indices + rest mass",
        "full": f"full logits ({lg['value_dtype']})",
        "none": "none",
    }[lg["mode"]]
    status = "complete" if info["complete"] else "INCOMPLETE"
    if info.get("problems"):
        status = f"DAMAGED ({len(info['problems'])} problem(s) below; `featdistill cache verify` hashes every file)"
    lines = [
        f"teacher store   {info['path']}",
        f"status          {status} (format v{info['format_version']})",
        f"teacher         {t['model_name']}  weights sha256 {t['sha256'][:16]}…  ({t['precision']})",
        f"dataset         {d['name']}  {d['num_samples']} samples {tuple(d['image_shape'])}  "
        f"fingerprint {d['fingerprint'][:16]}…",
        f"augmentation    {a['config']}  hash {a['hash'][:16]}…  seed {a['seed']}",
        f"views per sample V = {info['num_views']}",
        f"logits          {logits} over {lg['num_classes']} classes",
    ]
    if lg.get("positions"):
        lines.append(
            f"positions       {'×'.join(map(str, lg['positions']))} per sample ({lg.get('task')}): "
            f"{info['prediction_bytes_per_position']:.1f} B of prediction per position"
        )
    for n, tp in info["taps"].items():
        proj = f" → projected to {tp['stored_shape']}" if tp["projection"] else ""
        lines.append(f"tap             {n} = {tp['path'] or '(output)'} {tp['shape']}{proj}")
    lines += [
        f"coverage        {cov['samples'][0]}/{cov['samples'][1]} samples, "
        f"{cov['views'][0]}/{cov['views'][1]} "
        f"views, {cov['shards'][0]}/{cov['shards'][1]} shards ({100 * cov['fraction']:.1f}%; "
        f"{100 * cov['dataset_fraction']:.1f}% of the dataset)",
        f"size on disk    {_human(info['disk_bytes'])}  "
        f"({_human(info['disk_bytes_per_view'])} per sample-view "
        f"incl. headers; payload {info['bytes_per_view']} B)",
        "per view        " + ", ".join(f"{f} {m['bytes']} B" for f, m in info["fields"].items()),
    ]
    if info.get("build_seconds") is not None:
        lines.append(f"build time      {info['build_seconds']:.1f} s (sum over shards)")
    lines += [f"DAMAGE          {p}" for p in info.get("problems", [])[:20]]
    return "\n".join(lines)
