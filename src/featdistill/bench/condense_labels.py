"""``featdistill bench condense-labels``: what teacher soft labels add to a synthetic set, static vs per view.

For digits and MNIST-5k at IPC 1 and 10, a random coreset and a DM set are evaluated three ways under one
protocol and seeds: hard labels (DSA), static soft labels ``softmax(teacher(x) / T)`` of the un-augmented
images (DSA), and per-view soft labels from a teacher store of ``V`` pad-and-crop views (FKD/SRe2L style; the
networks train on exactly the stored views, no DSA on top, no teacher at evaluation). The teacher is a wider
ConvNet trained here on the real training set; ``T = 4`` is fixed in advance (the demo's KD temperature), not
tuned. Rows record the teacher's test accuracy, the store's build time and size, and evaluation wall time.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from featdistill.bench import register_suite, torch_threads
from featdistill.bench.condense import PeakRSS
from featdistill.condense.augment import DSA, default_strategy
from featdistill.condense.core import condense, with_teacher_labels
from featdistill.condense.evaluate import EvalProtocol, evaluate, test_accuracy, train_on
from featdistill.condense.nets import make_backbone_factory
from featdistill.condense.real import as_real_data
from featdistill.condense.relabel import build_label_store, default_label_views, open_view_labels

__all__ = ["run_label_bench", "LABEL_SETTINGS"]

TEMPERATURE = 4.0


def _settings(quick: bool) -> dict[str, Any]:
    width = 16 if quick else 32
    return {
        "datasets": ["digits"] if quick else ["digits", "mnist5k"],
        "ipcs": [1, 10],
        "depth": {"digits": 2, "mnist5k": 3},
        "width": width,
        "teacher": {"width": 64, "epochs": 30},  # 5 epochs gave a flat teacher (max prob 0.35)
        "eval": {"num_nets": 2 if quick else 3, "epochs": 50 if quick else 300, "robust_scores": False},
        "dm": {"iterations": 50 if quick else 500, "lr_img": 1.0, "batch_real": 32 if quick else 64},
        "sets": ["random", "dm"],
        "references": ["hard", "hard, store views", "static soft"],
        # label store variants: name → (V, view-config overrides of default_label_views)
        "stores": {"per-view store": (8, {})},
    }


def _view_settings(quick: bool) -> dict[str, Any]:
    """The view ablation: DM sets only, static soft labels as the bar, four ways to draw the stored views."""
    rrc = {"resized_crop": (0.5, 1.0)}
    return {
        **_settings(quick),
        "sets": ["dm"],
        "references": ["static soft"],
        "stores": {
            "pad-crop, V=8": (8, {}),
            "pad-crop, V=32": (32, {}),
            "resized crop 0.5–1 + pad-crop, V=8": (8, rrc),
            "resized crop 0.5–1 + pad-crop, V=32": (32, rrc),
        },
    }


LABEL_SETTINGS = {"quick": _settings(True), "full": _settings(False)}


def _train_teacher(real: Any, test: Any, depth: int, cfg: dict[str, Any], name: str) -> tuple[torch.nn.Module, float]:
    """A wider ConvNet trained on the real training set (SGD 0.01, DSA, lr × 0.1 at half), seed 0."""
    c, h, w = real.shape
    factory = make_backbone_factory("convnet", real.num_classes, c, max(h, w), {"width": cfg["width"], "depth": depth})
    proto = EvalProtocol(epochs=cfg["epochs"], batch_size=128)
    dsa = DSA(default_strategy(name, c))
    net = train_on(real.images, real.targets, factory, 0, cfg["epochs"], 0.01, proto, dsa).eval()
    held_out = as_real_data(test)
    return net, test_accuracy(net, held_out.images, held_out.targets)


def run_label_bench(
    out_dir: str | Path, quick: bool = False, threads: int | None = 1, suite: str = "condense-labels"
) -> list[dict[str, Any]]:
    """Run the table; write ``out_dir/SUITE.json`` and ``.md``; stores go to ``out_dir/label_stores``.

    ``suite``: ``condense-labels`` (hard / static / per-view labels on random and DM sets) or
    ``condense-label-views`` (DM sets, per-view stores drawn four ways, static soft labels as the bar).
    """
    from featdistill.data.datasets import load_dataset

    cfg = _view_settings(quick) if suite == "condense-label-views" else _settings(quick)
    with torch_threads(threads):
        return _run(Path(out_dir), quick, cfg, suite, load_dataset)


def _run(out: Path, quick: bool, cfg: dict[str, Any], suite: str, load_dataset: Any) -> list[dict[str, Any]]:
    stores = out / "label_stores"
    rows: list[dict[str, Any]] = []
    for ds_name in cfg["datasets"]:
        train, test = load_dataset(ds_name)
        real = as_real_data(train)
        depth = cfg["depth"][ds_name]
        bk = {"width": cfg["width"], "depth": depth}
        t0 = time.perf_counter()
        teacher, teacher_acc = _train_teacher(real, test, depth, cfg["teacher"], train.name)
        teacher_s = time.perf_counter() - t0
        cache: dict[Any, Any] = {}
        proto = EvalProtocol(backbone_kwargs=bk, **cfg["eval"])
        for ipc in cfg["ipcs"]:
            for method in cfg["sets"]:
                kw = cfg["dm"] if method == "dm" else {}
                syn = condense(real, ipc, method, "convnet", seed=0, backbone_kwargs=bk, **kw)
                syn.metadata["dataset"] = train.name
                # label variant → (set, label store or None, store build seconds, store bytes)
                variants: dict[str, tuple[Any, Any, float | None, int | None]] = {}
                for k, (name, (num_views, overrides)) in enumerate(cfg["stores"].items()):
                    sdir = stores / f"{ds_name}_ipc{ipc}_{method}_{k}"
                    shutil.rmtree(sdir, ignore_errors=True)
                    views = replace(default_label_views(syn), **overrides)
                    t1 = time.perf_counter()
                    build_label_store(syn, teacher, sdir, num_views=num_views, views=views, seed=0)
                    build_s = time.perf_counter() - t1
                    labels = open_view_labels(sdir, syn, temperature=TEMPERATURE)
                    size = sum(f.stat().st_size for f in sdir.rglob("*") if f.is_file())
                    variants[name] = (syn, labels, build_s, size)
                first = next(iter(variants.values()))[1]
                refs = {
                    "hard": (syn, None, None, None),
                    "hard, store views": (syn, replace(first, hard=True), None, None),
                    "static soft": (with_teacher_labels(syn, teacher, TEMPERATURE), None, None, None),
                }
                ordered = {**{r: refs[r] for r in cfg["references"]}, **variants}
                for label_name, (s_set, v, build_s, size) in ordered.items():
                    t2 = time.perf_counter()
                    with PeakRSS() as mem:
                        rep = evaluate(s_set, test, proto, train_set=train, cache=cache, label_store=v)
                    acc, rnd = rep["synthetic"], rep["baselines"]["random"]
                    rows.append(
                        {
                            "dataset": ds_name,
                            "ipc": ipc,
                            "set": method,
                            "labels": label_name,
                            "acc_mean": acc["mean"],
                            "acc_std": acc["std"],
                            "accs": acc["accs"],
                            "random_hard_mean": rnd["mean"],
                            "random_hard_std": rnd["std"],
                            "teacher_acc": teacher_acc,
                            "teacher_train_s": teacher_s,
                            "temperature": rep["label_temperature"] if rep["soft_labels"] else None,
                            "num_views": v.num_views if v is not None else None,
                            "views": v.describe()["augmentation"] if v is not None else None,
                            "dsa": rep["dsa_strategy"],
                            "store_build_s": build_s,
                            "store_bytes": size,
                            "eval_s": time.perf_counter() - t2,
                            "peak_rss_mb_eval": mem.peak_mb,
                            "num_nets": proto.num_nets,
                            "eval_epochs": proto.epochs,
                            "backbone": {"name": "convnet", **bk},
                            "teacher": {"name": "convnet", "width": cfg["teacher"]["width"], "depth": depth},
                            "dm": cfg["dm"] if method == "dm" else None,
                            "quick": quick,
                        }
                    )
                    _write(out, rows, quick, suite)
    return rows


def _write(out: Path, rows: list[dict[str, Any]], quick: bool, suite: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{suite}.json").write_text(json.dumps({"suite": suite, "quick": quick, "rows": rows}, indent=2))
    r0 = rows[0]
    lines = [
        f"# Soft labels for synthetic sets (featdistill bench {suite})",
        "",
        f"Mode: {'quick' if quick else 'full'}. Student ConvNet width {r0['backbone']['width']} (instance norm), "
        f"teacher ConvNet width {r0['teacher']['width']} trained on the real training set. Last-epoch test "
        f"accuracy (%) mean ± std over {r0['num_nets']} fresh networks, {r0['eval_epochs']} epochs, SGD 0.01 / "
        f"momentum 0.9 / wd 5e-4. hard and static soft: DSA at evaluation; store rows: the stored views only "
        f"(pad-and-crop, or as named, V views) with their teacher labels, teacher never run; 'hard, store "
        f"views': the first store's views with class labels (the augmentation alone). T = {TEMPERATURE} fixed.",
        "",
        "| dataset | IPC | set | labels | acc % | random (hard) % | teacher % | store build s | store KiB | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        build = "–" if r["store_build_s"] is None else f"{r['store_build_s']:.2f}"
        kib = "–" if r["store_bytes"] is None else f"{r['store_bytes'] / 1024:.0f}"
        lines.append(
            f"| {r['dataset']} | {r['ipc']} | {r['set']} | {r['labels']} "
            f"| {100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} "
            f"| {100 * r['random_hard_mean']:.1f} ± {100 * r['random_hard_std']:.1f} "
            f"| {100 * r['teacher_acc']:.1f} | {build} | {kib} | {r['eval_s']:.1f} |"
        )
    (out / f"{suite}.md").write_text("\n".join(lines) + "\n")


@register_suite("condense-labels", threads=1)
def condense_labels_suite(out_dir: Path, quick: bool) -> list[dict[str, Any]]:
    """``featdistill bench condense-labels``: hard vs static soft vs per-view stored soft labels."""
    return run_label_bench(out_dir, quick=quick, threads=None)


@register_suite("condense-label-views", threads=1)
def condense_label_views_suite(out_dir: Path, quick: bool) -> list[dict[str, Any]]:
    """``featdistill bench condense-label-views``: how the stored views are drawn (V, resized crops)."""
    return run_label_bench(out_dir, quick=quick, threads=None, suite="condense-label-views")
