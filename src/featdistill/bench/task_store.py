"""``featdistill bench task-store``: what training from the teacher store costs, per task, next to the student alone.

For every task's smallest pair the suite trains a teacher, builds its store with ``featdistill cache``'s code
(:func:`featdistill.cache.build_store_from_config`) and times, through ``run_experiment`` (the user path), the
student alone and the student with KD (``output`` matching for value tasks) served from the store. The two
configurations alternate over rounds (A B, B A, …); each round's ratio is the median epoch time (after the
first epoch) of B over A, and the suite reports the median of the rounds' ratios — a ratio measured side by
side, robust to the machine's load changing between rounds (this is a noisy 2-core machine). For the causal
LM it also records the store's bytes per token at top-k 8 / 32 / 64 and the KD loss each k gives against the
full teacher distribution, and for every task how far the stored values move between a teacher run in fp32
and at the builder's ``autocast: auto``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from featdistill.bench import markdown_table, register_suite, write_atomic

__all__ = ["task_store_suite", "PAIRS"]

_TRAIN = {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "progress": False, "log_every": 50}

#: task → (data section, teacher model, student model, distillation method); the smallest pair of each task
PAIRS: dict[str, dict[str, Any]] = {
    "classification": {
        "data": {"name": "mnist5k", "batch_size": 128},
        "teacher": {"model": "convnet", "kwargs": {"width": 32, "depth": 3}},
        "student": {"model": "convnet", "kwargs": {"width": 4, "depth": 3}},
        "method": {"name": "kd"},
        "topk": None,
    },
    "segmentation": {
        "data": {"name": "shapes-seg", "kwargs": {"n": 1024, "size": 32}, "batch_size": 64},
        "teacher": {"model": "segnet", "kwargs": {"width": 16}},
        "student": {"model": "segnet", "kwargs": {"width": 4}},
        "method": {"name": "kd"},
        "topk": None,
    },
    "causal-lm": {
        "data": {
            "name": "pystdlib-lm",
            "kwargs": {"seq_len": 64, "max_chars": 400_000, "vocab_size": 2048},
            "batch_size": 16,
            "subset": 1024,
        },
        "teacher": {
            "hf": {"config": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 64}}
        },
        "student": {
            "hf": {"config": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}}
        },
        "method": {"name": "kd", "params": {"temperature": 1.0}},
        "topk": 32,
    },
    "regression": {
        "data": {"name": "macrodata", "batch_size": 32},
        "teacher": {"model": "forecaster", "kwargs": {"hidden": [128, 128]}},
        "student": {"model": "forecaster", "kwargs": {"hidden": [16]}},
        "method": {"name": "output"},
        "topk": None,
        "epochs": 30,  # ~5 steps of ~1 ms per epoch: time enough of them to see past the noise
    },
    "image-to-image": {
        "data": {"name": "mnist5k-sr", "batch_size": 64, "subset": 2048},
        "teacher": {"model": "srnet", "kwargs": {"width": 32, "depth": 3}},
        "student": {"model": "srnet", "kwargs": {"width": 8, "depth": 2}},
        "method": {"name": "output"},
        "topk": None,
    },
}


def _run(cfg: dict[str, Any]) -> Any:
    from featdistill.config import parse_config
    from featdistill.run import run_experiment

    return run_experiment(parse_config(cfg), progress=False)


def _epoch_times(result: Any) -> list[float]:
    lines = (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r["time_s"] for r in map(json.loads, lines) if r.get("type") == "epoch"]


def _pair_rows(task: str, spec: dict[str, Any], work: Path, quick: bool) -> list[dict[str, Any]]:
    from featdistill.cache import build_store_from_config, store_info

    data = {**spec["data"], "val_fraction": 0.1}
    epochs, rounds = (2, 1) if quick else (int(spec.get("epochs", 3)), 7)
    if quick and "subset" not in data:
        data["subset"] = 256
    teacher_run = _run(
        {"run_dir": str(work / "teacher"), "data": data, "student": spec["teacher"], "train": {**_TRAIN, "epochs": 1}}
    )
    teacher = {**spec["teacher"], "checkpoint": str(teacher_run.run_dir / "student.safetensors")}
    store_dir = work / "store"
    data_store = {**data, "views": "cycle"}
    build_store_from_config(
        {
            "data": data_store,
            "teacher": {**teacher, "source": "store", "store": str(store_dir)},
            "method": spec["method"],
            "student": spec["student"],
            "cache": {"num_views": 1, "topk": spec["topk"], "taps": {}, "autocast": "auto"},
        }
    )
    info = store_info(store_dir)
    configs = {
        "student alone": {"data": data, "student": spec["student"]},  # identity views: the same batches
        "store KD": {
            "data": data_store,
            "student": spec["student"],
            "teacher": {**teacher, "source": "store", "store": str(store_dir)},
            "method": spec["method"],
        },
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    round_ratios: list[float] = []  # store ÷ alone within each round: robust to the machine's load drifting
    names = list(configs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            cfg = {
                **configs[name],
                "run_dir": str(work / f"{name.replace(' ', '-')}-{r}"),
                "train": {**_TRAIN, "epochs": epochs},
            }
            times[name] += _epoch_times(_run(cfg))[1:]  # the first epoch pays for allocation and kernel choice
        per = epochs - 1
        round_ratios.append(
            statistics.median(times["store KD"][-per:]) / statistics.median(times["student alone"][-per:])
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    precision = _precision_row(task, spec, data, teacher, work)
    return [
        precision,
        {
            "task": task,
            "data": spec["data"]["name"],
            "pair": f"{_name(spec['teacher'])} → {_name(spec['student'])}",
            "method": spec["method"]["name"],
            "student_s_per_epoch": round(med["student alone"], 4),
            "store_s_per_epoch": round(med["store KD"], 4),
            "store_over_student": round(statistics.median(round_ratios), 3),
            "round_ratios": [round(r, 3) for r in round_ratios],
            "epochs_timed": len(times["store KD"]),
            "store_bytes_per_view": info.get("bytes_per_view"),
            "bytes_per_position": info.get("prediction_bytes_per_position"),
            "precision": info.get("teacher_precision"),
            "all_times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        },
    ]


def _precision_row(
    task: str, spec: dict[str, Any], data: dict[str, Any], teacher: dict[str, Any], work: Path
) -> dict[str, Any]:
    """The store built with the teacher in fp32 and at ``autocast: auto``: build time per view and how far the
    stored predictions move (float32 storage on both sides, so only the teacher's precision differs)."""
    import torch

    from featdistill.cache import TeacherStore, build_store_from_config, store_info

    stores, seconds, precision = {}, {}, {}
    for name, autocast in (("fp32", False), ("auto", "auto")):
        path = work / f"precision-{name}"
        build_store_from_config(
            {
                "data": {**data, "views": "cycle"},
                "teacher": {**teacher, "source": "store", "store": str(path)},
                "method": spec["method"],
                "student": spec["student"],
                "cache": {"num_views": 1, "topk": None, "taps": {}, "dtype": "float32", "autocast": autocast},
            }
        )
        info = store_info(path)
        stores[name] = TeacherStore.open(path)
        seconds[name] = float(info["build_seconds"]) / max(int(info["coverage"]["views"][0]), 1)
        precision[name] = info.get("teacher_precision")
    ids = stores["fp32"].sample_ids()[:512]
    views = torch.zeros_like(ids)
    a = stores["fp32"].teacher_outputs(ids, views, {"logits"})["logits"]
    b = stores["auto"].teacher_outputs(ids, views, {"logits"})["logits"]
    row: dict[str, Any] = {
        "task": task,
        "auto_precision": precision["auto"],
        "fp32_ms_per_view": round(1e3 * seconds["fp32"], 3),
        "auto_ms_per_view": round(1e3 * seconds["auto"], 3),
        "max_abs_diff": round(float((a - b).abs().max()), 5),
        "mean_abs_diff": round(float((a - b).abs().mean()), 6),
        "value_std": round(float(a.std()), 4),
    }
    if a.shape[-1] > 1 and task in ("classification", "segmentation", "causal-lm"):
        c = a.shape[-1]
        pa, pb = torch.log_softmax(a.reshape(-1, c), 1), torch.log_softmax(b.reshape(-1, c), 1)
        row["argmax_agreement"] = round(float((pa.argmax(1) == pb.argmax(1)).double().mean()), 5)
        row["kl_fp32_to_auto"] = float(f"{float((pa.exp() * (pa - pb)).sum(1).mean()):.3g}")
    return row


def _name(model: dict[str, Any]) -> str:
    if "model" in model:
        return f"{model['model']} {model.get('kwargs', {})}"
    cfg = dict(model["hf"]["config"])
    return f"hf:{cfg.pop('model_type')} " + ",".join(f"{k}={v}" for k, v in cfg.items())


def _lm_topk_rows(work: Path, quick: bool) -> list[dict[str, Any]]:
    """Bytes per token and the KD loss error of top-k 8 / 32 / 64 against the full distribution (fp16 values)."""
    import torch

    from featdistill.cache import TeacherStore, build_store_from_config, store_info
    from featdistill.losses.logits import kd_loss

    spec = PAIRS["causal-lm"]
    data = {**spec["data"], "val_fraction": 0.1, "views": "cycle", "subset": 128 if quick else 512}
    teacher_data = {**data, "views": "fresh"}
    teacher_run = _run(
        {
            "run_dir": str(work / "lm-teacher"),
            "data": teacher_data,
            "student": spec["teacher"],
            "train": {**_TRAIN, "epochs": 1},
        }
    )
    teacher = {**spec["teacher"], "checkpoint": str(teacher_run.run_dir / "student.safetensors")}
    stores: dict[Any, TeacherStore] = {}
    for k in (None, 8, 32, 64):
        path = work / f"lm-store-{k or 'full'}"
        build_store_from_config(
            {
                "data": data,
                "teacher": {**teacher, "source": "store", "store": str(path)},
                "method": spec["method"],
                "student": spec["student"],
                "cache": {"num_views": 1, "topk": k, "taps": {}, "dtype": "float16"},
            }
        )
        stores[k] = TeacherStore.open(path)
    ids = stores[None].sample_ids()[:256]
    views = torch.zeros_like(ids)
    full = stores[None].teacher_outputs(ids, views, {"logits"})["logits"]
    student = torch.randn(full.shape, generator=torch.Generator().manual_seed(0))  # a student far from the teacher
    rows = []
    ref = kd_loss(student.flatten(0, 1), full.flatten(0, 1), 1.0).item()
    for k, store in stores.items():
        z = store.teacher_outputs(ids, views, {"logits"})["logits"]
        kd = kd_loss(student.flatten(0, 1), z.flatten(0, 1), 1.0).item()
        info = store_info(store.root)
        rows.append(
            {
                "task": "causal-lm",
                "store": "full logits" if k is None else f"top-{k}",
                "vocab": int(full.shape[-1]),
                "bytes_per_token": info.get("prediction_bytes_per_position"),
                "kd_loss_T1": round(kd, 5),
                "kd_rel_error_vs_full": round(abs(kd - ref) / abs(ref), 5),
            }
        )
    return rows


@register_suite("task-store", threads=1)
def task_store_suite(out_dir: Path, quick: bool) -> list[dict[str, Any]]:
    """See the module docstring."""
    rows: list[dict[str, Any]] = []
    precision: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for task, spec in PAIRS.items():
            prec, *speed = _pair_rows(task, spec, work / task, quick)
            rows += speed
            precision.append(prec)
        sizes = _lm_topk_rows(work / "lm-sizes", quick)
    speed_cols = [
        "task",
        "data",
        "pair",
        "method",
        "student_s_per_epoch",
        "store_s_per_epoch",
        "store_over_student",
        "epochs_timed",
        "bytes_per_position",
        "precision",
    ]
    md = [
        "# Teacher store per task: store-backed distillation ÷ student alone (epoch time)",
        "",
        markdown_table(rows, speed_cols),
        "## Causal-LM store size and top-k error (fp16 values, int16 indices)",
        "",
        markdown_table(sizes),
        "## The builder's teacher precision: fp32 vs `autocast: auto` (float32 storage on both sides)",
        "",
        markdown_table(precision),
    ]
    write_atomic(out_dir / "task-store.md", "\n".join(md))
    return rows + [{"table": "lm-topk", **r} for r in sizes] + [{"table": "precision", **r} for r in precision]
