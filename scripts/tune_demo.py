"""Choose the demo's distillation hyper-parameters on the VALIDATION split (never on test).

Trains the demo teacher once per seed, then each candidate (method, params, weights) for each seed, and
prints mean ± std of the last-epoch validation accuracy (test accuracy is recorded but not used to choose).
Usage: python scripts/tune_demo.py OUT_DIR [--seeds 0 1 2]
"""

import argparse
import json
import statistics
from pathlib import Path

from featdistill.demo import demo_configs
from featdistill.run import run_experiment

CANDIDATES = {
    "none": {"name": "none"},
    "kd_T4_0.1": {"name": "kd", "params": {"temperature": 4.0}, "ce_weight": 0.1, "weights": {"kd": 0.9}},
    "kd_T4_1.0": {"name": "kd", "params": {"temperature": 4.0}, "ce_weight": 1.0, "weights": {"kd": 1.0}},
    "kd_T2_0.5": {"name": "kd", "params": {"temperature": 2.0}, "ce_weight": 0.5, "weights": {"kd": 0.5}},
    "kd_T1_0.5": {"name": "kd", "params": {"temperature": 1.0}, "ce_weight": 0.5, "weights": {"kd": 0.5}},
    "at_10": {"name": "at", "weights": {"at": 10.0}},
    "at_100": {"name": "at", "weights": {"at": 100.0}},
    "at_1000": {"name": "at", "weights": {"at": 1000.0}},
    "fitnet_1": {"name": "fitnet", "weights": {"hint": 1.0}},
    "fitnet_10": {"name": "fitnet", "weights": {"hint": 10.0}},
    "dist_1": {"name": "dist"},
}

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--only", nargs="*", default=None)
ap.add_argument("--teacher-width", type=int, default=64)
ap.add_argument("--student-width", type=int, default=8)
ap.add_argument("--subset", type=int, default=None)
ap.add_argument("--epochs", type=int, nargs=2, default=[6, 8])
args = ap.parse_args()
out = Path(args.out)
results: dict[str, list[tuple[float, float]]] = {}
for seed in args.seeds:
    cfgs = demo_configs(
        out / f"s{seed}",
        "mnist5k",
        seed,
        teacher_width=args.teacher_width,
        student_width=args.student_width,
        subset=args.subset,
        epochs=tuple(args.epochs),
    )
    run_experiment(cfgs["teacher"], progress=False)
    base = cfgs["kd"]
    for name, m in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        raw = base.model_dump(mode="json")
        raw["method"] = m
        raw["run_dir"] = str(out / f"s{seed}" / name)
        if m["name"] == "none":
            raw.pop("teacher")
        from featdistill.config import parse_config

        r = run_experiment(parse_config(raw), progress=False)
        results.setdefault(name, []).append((float(r.val_top1), r.test_top1))
rows = []
for name, v in results.items():
    val = [a for a, _ in v]
    test = [b for _, b in v]
    sd = statistics.stdev(val) if len(val) > 1 else 0.0
    rows.append(
        {"candidate": name, "val_mean": statistics.mean(val), "val_std": sd, "test_mean": statistics.mean(test)}
    )
    print(f"{name:12s} val {statistics.mean(val):.4f} ± {sd:.4f}   (test {statistics.mean(test):.4f})")
(out / "tune.json").write_text(json.dumps(rows, indent=2))
