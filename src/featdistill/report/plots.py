"""Curves of a run from its ``metrics.jsonl``: per-term training losses and evaluation accuracy.

matplotlib runs with the non-interactive Agg backend: runs happen on headless machines.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

__all__ = ["read_metrics", "plot_run"]


def read_metrics(path: str | Path) -> list[dict]:
    """All JSON records of a metrics file (a truncated last line, from a killed run, is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_run(run_dir: str | Path, metric: str = "top1") -> list[Path]:
    """Write ``loss.png`` and ``accuracy.png`` (the task's primary ``metric`` per epoch; for classification
    every top-1) into ``run_dir``; return the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    written: list[Path] = []

    losses: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r.get("type") != "step":
            continue
        x = float(r.get("epoch", r.get("step", 0)))
        for k, v in (r.get("losses") or {}).items():
            losses[k].append((x, float(v)))
        if "total" in r:  # the weighted sum the optimiser minimised
            losses["total"].append((x, float(r["total"])))
    if losses:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, pts in sorted(losses.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, lw=1.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (weighted)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title("training loss by term")
        fig.tight_layout()
        path = run_dir / "loss.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    evals = [r for r in records if r.get("type") == "eval"]
    if evals:
        fig, ax = plt.subplots(figsize=(6, 4))
        wanted = (lambda k: "top1" in k or k == "accuracy") if metric == "top1" else (lambda k: k == metric)
        keys = sorted({k for r in evals for k in (r.get("metrics") or r) if wanted(k)})
        for k in keys:
            pts = [(r.get("epoch", 0), (r.get("metrics") or r)[k]) for r in evals if k in (r.get("metrics") or r)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy on the evaluation split" if metric == "top1" else f"{metric} on the evaluation split")
        ax.legend(fontsize=8)
        ax.set_title(f"validation {'accuracy' if metric == 'top1' else metric} per epoch (reports use the last epoch)")
        fig.tight_layout()
        path = run_dir / "accuracy.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
