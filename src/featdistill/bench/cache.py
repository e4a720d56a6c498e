"""``featdistill bench cache``: what the teacher store buys (speed), what it costs (accuracy, bytes).

Three tables, every row tagged with ``table``:

- ``speed`` — wall time per epoch of student-only training, online KD and cached KD, measured **side by
  side in one run**: every round trains each configuration for a few epochs through the library's
  :class:`~featdistill.train.Trainer`, one after the other, the order rotated every round (round ``r`` starts
  with configuration ``r mod 3``); each run's first epoch (allocator, oneDNN kernel selection) is dropped and
  the median of the rest is reported, so machine drift hits all three alike.  Ratios ``cached_over_student``
  (goal ≤ 1.10; 1.0 is the physical limit) and ``online_over_student``, next to the FLOP model's prediction
  ``1 + r/3`` (r = teacher/student forward MACs).  Pairs: resnet32x4 → resnet8x4 on synthetic 32×32 images
  (100 classes) and ConvNet-3 w64 → ConvNet-3 w8 on mnist5k.
- ``accuracy`` — mnist5k held-out accuracy, mean ± std over seeds, same budget for every configuration:
  student alone, online KD (a fresh view every epoch), store KD with V = 1 (a fixed teacher) and with
  V = 8.  The store is built once per V and reused by every seed (its build time is reported once).
- ``storage`` — bytes per sample-view for top-5, top-10 and full logits at 10 and 100 classes, with a pooled
  256-d fp16 embedding (resnet32x4's), computed from the same field table the builder writes.

The speed rows train a ``Distiller`` with the ``Trainer`` (SGD lr 0.05, cosine; fp32, or bf16 autocast +
channels_last with ``FEATDISTILL_BENCH_BF16=1`` on CPUs with native bf16; on the CPU, which is what
``docs/benchmarks.md`` §3 reports) and read the per-epoch ``time_s`` from ``TrainResult.history`` — the
optimiser loop users run, not a private one, so the ratios are those of ``featdistill train``; the
configurations share the data pipeline, so the only difference between them is where the teacher's outputs
come from.  The accuracy rows go through ``run_experiment`` (the user path).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from featdistill.bench import markdown_table, register_suite, write_atomic
from featdistill.cache.builder import _logits_fields, build_store
from featdistill.cache.info import bytes_per_entry, store_info
from featdistill.cache.store import TeacherStore
from featdistill.cache.teacher import CachedTeacher, store_loader

__all__ = ["cache_suite", "storage_rows"]


# -- training ---------------------------------------------------------------------------------------------
def _use_bf16() -> bool:
    """bf16 autocast + channels_last only when asked (``FEATDISTILL_BENCH_BF16=1``).

    On CPUs with AMX/AVX512-BF16 it is ~2.5× faster (efficiency.md §10.1); on CPUs without native bf16
    (e.g. AVX2-only AMD EPYC) it is emulated and was measured ~20× *slower* than fp32, so fp32 is the default.
    """
    return os.environ.get("FEATDISTILL_BENCH_BF16", "0") == "1"


def _epoch_times(distiller: Any, loader: Any, epochs: int, fast: bool, run_dir: Path) -> list[float]:
    """Train ``distiller`` for ``epochs`` with the library's Trainer; return each epoch's training seconds.

    ``time_s`` covers the optimiser steps only (no evaluation, no checkpointing), so it is what the three
    configurations differ in.  One checkpoint at the end (not one per epoch) keeps disk writes out of the
    gaps between timed epochs.  The device is pinned to the CPU: §3 compares CPU costs."""
    from featdistill.train import TrainConfig, Trainer

    cfg = TrainConfig(
        epochs=epochs,
        lr=0.05,
        progress=False,
        precision="bf16" if fast else "fp32",
        channels_last=fast,
        device="cpu",
        checkpoint_every=epochs,
    )
    result = Trainer(distiller, loader, None, cfg, run_dir).fit()
    return [float(h["time_s"]) for h in result.history]


def _build(name: str, num_classes: int, in_channels: int, size: int, seed: int, **kw: Any) -> torch.nn.Module:
    from featdistill.models import build_model
    from featdistill.seeding import seeded

    with seeded(seed, "bench-model", name):
        return build_model(name, num_classes=num_classes, in_channels=in_channels, image_size=size, **kw)


def _macs(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    from featdistill.models import count_macs

    return int(count_macs(model, shape))


# -- speed -----------------------------------------------------------------------------------------------
def _speed(
    pair: str,
    data_desc: str,
    train: Any,
    teacher: torch.nn.Module,
    make_student: Any,
    rounds: int,
    epochs: int,
    batch_size: int,
    workdir: Path,
    fast: bool,
) -> dict[str, Any]:
    """One speed row: ``rounds`` rounds, each training the three configurations ``epochs`` epochs apiece (a fresh
    student with the same initialisation every time), rotated so that none always runs first or last."""
    from featdistill.data.loaders import ViewLoader
    from featdistill.data.views import Augmenter, ViewConfig
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method

    aug = Augmenter(ViewConfig(pad_crop=4 if train.images.shape[-1] >= 32 else 2), seed=0)
    store_dir = workdir / f"store-{pair.replace('→', '-')}"
    t0 = time.perf_counter()
    res = build_store(
        teacher,
        train,
        aug,
        1,
        store_dir,
        batch_size=256,
        autocast=fast,
        channels_last=fast,
        model_name=pair.split("→")[0],
    )
    build_s = time.perf_counter() - t0
    store = TeacherStore.open(store_dir, expect={"teacher": teacher, "dataset": train, "augmentation": aug})

    def loader() -> Any:  # identical data pipeline for all three: cycle over the V=1 stored views
        return ViewLoader(train, batch_size, aug, shuffle=True, seed=0, policy="cycle", num_views=1, drop_last=True)

    def configuration(name: str) -> tuple[Any, Any]:
        """A fresh ``(distiller, loader)`` of configuration ``name``."""
        if name == "student":
            return Distiller(make_student(), None), loader()
        if name == "online":  # a copy: no run may leave state (memory format, hooks) on the next run's teacher
            return Distiller(make_student(), build_method("kd"), teacher=copy.deepcopy(teacher)), loader()
        cached = Distiller(make_student(), build_method("kd"), teacher=CachedTeacher(store))
        return cached, store_loader(store, train, batch_size, policy="cycle", seed=0, drop_last=True)

    names = ["student", "online", "cached"]
    times: dict[str, list[list[float]]] = {name: [] for name in names}
    slug = pair.replace("→", "-")
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            distiller, data = configuration(name)
            times[name].append(_epoch_times(distiller, data, epochs, fast, workdir / f"run-{slug}-{name}-{r}"))
    # each run's first epoch pays for allocation and kernel selection: drop it, pool the rest over rounds
    med = {name: statistics.median(t for run in times[name] for t in run[1:]) for name in names}
    shape = tuple(train.images.shape[1:])
    r_flops = _macs(teacher, shape) / max(1, _macs(make_student(), shape))
    info = store_info(store_dir)
    return {
        "table": "speed",
        "pair": pair,
        "data": data_desc,
        "precision": "bf16 autocast + channels_last" if fast else "fp32",
        "batch": batch_size,
        "steps_per_epoch": len(loader()),
        "rounds": rounds,
        "student_s_per_epoch": round(med["student"], 3),
        "online_s_per_epoch": round(med["online"], 3),
        "cached_s_per_epoch": round(med["cached"], 3),
        "online_over_student": round(med["online"] / med["student"], 3),
        "cached_over_student": round(med["cached"] / med["student"], 3),
        "flop_model_online_over_student": round(1 + r_flops / 3, 2),
        "store_build_s": round(build_s, 2),
        "store_teacher_forwards": res.teacher_forwards,
        "store_bytes_per_view": info["bytes_per_view"],
        "all_times_s": {name: [[round(t, 3) for t in run] for run in times[name]] for name in names},
    }


# -- accuracy --------------------------------------------------------------------------------------------
def _accuracy_rows(quick: bool, workdir: Path, fast: bool) -> list[dict[str, Any]]:
    """MNIST-5k accuracy through the user path: ``featdistill train`` / ``featdistill cache`` configs.

    The demo's protocol (:func:`featdistill.demo.demo_configs`: teacher convnet w64 6 epochs, student convnet
    w4 8 epochs, cosine lr, KD T = 4 with CE 1 + KD 1 chosen on validation), per seed: train the teacher, build
    stores with V = 1 and V = 8, then train the student alone, with online KD (a fresh view each epoch: views
    0…7) and with store KD (``teacher.source: store``, ``data.views: cycle``).  With V = 8 and 8 epochs the
    cycle replays exactly the views online KD saw, so the two differ only by the stored fp16 logits.
    """
    import yaml

    from featdistill.cache.config import build_store_from_config
    from featdistill.config import parse_config
    from featdistill.demo import demo_configs
    from featdistill.run import run_experiment

    seeds = [0, 1, 2] if quick else [0, 1, 2, 3, 4]
    views = 8
    configs = ["student alone", "online KD", "store KD V=1", f"store KD V={views}"]
    acc: dict[str, list[float]] = {c: [] for c in configs}
    secs: dict[str, list[float]] = {c: [] for c in configs}
    build_s: dict[int, list[float]] = {1: [], views: []}
    teacher_acc: list[float] = []
    for seed in seeds:
        cfgs = demo_configs(workdir / f"seed{seed}", "mnist5k", seed)
        teacher_acc.append(run_experiment(cfgs["teacher"], progress=False).test_top1)
        kd = cfgs["kd"].model_dump(mode="json")
        runs = {"student alone": cfgs["student-alone"], "online KD": cfgs["kd"]}
        for v in (1, views):
            store = workdir / f"seed{seed}" / f"store-V{v}"
            raw = {**kd, "teacher": {**kd["teacher"], "source": "store", "store": str(store)}}
            raw["data"] = {**kd["data"], "views": "cycle"}
            raw["run_dir"] = str(workdir / f"seed{seed}" / f"store-kd-V{v}")
            cache_cfg = workdir / f"seed{seed}" / f"cache-V{v}.yaml"
            cache_cfg.write_text(yaml.safe_dump({**raw, "cache": {"num_views": v, "batch_size": 500}}))
            t0 = time.perf_counter()
            build_store_from_config(cache_cfg)
            build_s[v].append(time.perf_counter() - t0)
            runs[f"store KD V={v}"] = parse_config(raw)
        for name, cfg in runs.items():
            t0 = time.perf_counter()
            res = run_experiment(cfg, progress=False)
            secs[name].append(time.perf_counter() - t0)
            acc[name].append(res.test_top1)
    rows: list[dict[str, Any]] = []
    for name in configs:
        a = acc[name]
        v = 1 if name.endswith("V=1") else (views if name.startswith("store") else None)
        rows.append(
            {
                "table": "accuracy",
                "dataset": "mnist5k (3600 train / 400 val / 1000 held out)",
                "pair": "convnet w64 (bn) → convnet w4 (bn), the demo protocol",
                "config": name,
                "V": v,
                "epochs": 8,
                "seeds": len(seeds),
                "acc_mean": round(statistics.mean(a), 4),
                "acc_std": round(statistics.stdev(a), 4) if len(a) > 1 else 0.0,
                "accs": [round(x, 4) for x in a],
                "train_s_per_run": round(statistics.mean(secs[name]), 2),
                "store_build_s": round(statistics.mean(build_s[v]), 2) if v else None,
                "teacher_acc": round(statistics.mean(teacher_acc), 4),
            }
        )
    online = rows[1]
    for row in rows[2:]:
        within = abs(row["acc_mean"] - online["acc_mean"]) <= online["acc_std"]
        above = row["acc_mean"] > rows[0]["acc_mean"]
        row["within_1std_of_online"] = within
        row["above_student_alone"] = above
    return rows


# -- storage ---------------------------------------------------------------------------------------------
def storage_rows(embedding_dim: int = 256) -> list[dict[str, Any]]:
    """Bytes per stored (sample, view), from the builder's own field table (fp16 values)."""
    rows = []
    emb = 2 * embedding_dim
    for c in (10, 100):
        for label, k in (("top-5", 5), ("top-10", 10), ("full", None)):
            fields = _logits_fields("topk" if k else "full", k, c, "float16")
            logit_bytes = sum(bytes_per_entry(fields).values())
            rows.append(
                {
                    "table": "storage",
                    "classes": c,
                    "logits": label,
                    "logit_fields": ", ".join(f"{f} {m['dtype']}{m['shape']}" for f, m in fields.items()),
                    "logit_bytes": logit_bytes,
                    f"embedding_{embedding_dim}d_fp16_bytes": emb,
                    "total_bytes_per_view": logit_bytes + emb,
                    "per_50k_samples_x_V1_MB": round((logit_bytes + emb) * 50_000 / 1e6, 2),
                }
            )
    return rows


# -- the suite -------------------------------------------------------------------------------------------
@register_suite("cache")
def cache_suite(out_dir: Path, quick: bool) -> list[dict[str, Any]]:
    """Speed (two pairs), mnist5k accuracy over seeds, storage; also writes ``cache-tables.md``."""
    from featdistill.data import datasets
    from featdistill.data.base import ImageDataset

    fast = _use_bf16()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="featdistill-bench-cache-") as tmp:
        work = Path(tmp)
        # resnet32x4 → resnet8x4, synthetic 32×32 pixels, 100 classes
        n = 128 if quick else 2048
        imgs, labels = datasets.make_synthetic(n, num_classes=100, channels=3, size=32, seed=0)
        syn = ImageDataset(imgs, labels, [str(i) for i in range(100)], name=f"synthetic32-{n}")
        t = _build("resnet32x4", 100, 3, 32, 0)
        rows.append(
            _speed(
                "resnet32x4→resnet8x4",
                f"synthetic 32×32×3, {n} images, 100 classes",
                syn,
                t,
                lambda: _build("resnet8x4", 100, 3, 32, 1),
                3,
                2 if quick else 3,
                64,
                work,
                fast,
            )
        )
        # mnist5k pair (timing with an untrained teacher: the cost does not depend on the weights)
        train, _ = datasets.load_mnist5k()
        if quick:
            train = train.subset(range(1024), name="mnist5k-train-1024")
        t = _build("convnet", 10, 1, 28, 0, width=64, norm="batchnorm")
        rows.append(
            _speed(
                "convnet-w64→convnet-w8",
                f"mnist5k 28×28×1, {len(train)} images",
                train,
                t,
                lambda: _build("convnet", 10, 1, 28, 1, width=8, norm="batchnorm"),
                3,
                2 if quick else 3,
                64,
                work,
                fast,
            )
        )
        rows += _accuracy_rows(quick, work, fast)
    rows += storage_rows()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "cache-tables.md", tables_markdown(rows, quick))
    return rows


def tables_markdown(rows: list[dict[str, Any]], quick: bool) -> str:
    """One markdown table per ``table`` kind (the suite's JSON rows are heterogeneous)."""
    speed = [{k: v for k, v in r.items() if k not in ("table", "all_times_s")} for r in rows if r["table"] == "speed"]
    acc = [
        {
            k: r.get(k)
            for k in (
                "config",
                "V",
                "epochs",
                "seeds",
                "acc_mean",
                "acc_std",
                "within_1std_of_online",
                "above_student_alone",
                "train_s_per_run",
                "store_build_s",
            )
        }
        for r in rows
        if r["table"] == "accuracy"
    ]
    store = [{k: v for k, v in r.items() if k != "table"} for r in rows if r["table"] == "storage"]
    head = next((r for r in rows if r["table"] == "accuracy"), {})
    parts = [
        f"# Teacher store benchmark ({'quick' if quick else 'full'} setting)\n",
        "## Wall time per epoch (interleaved, median)\n",
        markdown_table(speed),
        "## mnist5k accuracy (held-out 1000), mean ± std over seeds\n",
        f"Pair {head.get('pair', '')}; teacher held-out accuracy {head.get('teacher_acc')} (mean over seeds); "
        "every run through `featdistill train` / `featdistill cache` configs.\n",
        markdown_table(acc),
        "## Storage per sample-view\n",
        markdown_table(store),
    ]
    return "\n".join(parts)
