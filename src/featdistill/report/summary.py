"""``report.md``: what a user needs to decide whether the student ships — accuracy, size, cost, speed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from featdistill.models.profile import count_macs, count_parameters, latency_per_image

__all__ = ["ModelSummary", "summarize_model", "write_report"]


@dataclass
class ModelSummary:
    role: str
    model: str
    accuracy: float | None
    params: int
    macs: int
    latency_ms: float
    metric: str = "top1"

    def row(self) -> str:
        acc = "–" if self.accuracy is None else f"{self.accuracy:.4f}"
        return (
            f"| {self.role} | {self.model} | {acc} | {self.params / 1e6:.3f} M | {self.macs / 1e6:.2f} M "
            f"| {self.latency_ms:.3f} ms |"
        )


def summarize_model(
    role: str,
    name: str,
    model: nn.Module,
    input_shape: Any,
    accuracy: float | None,
    latency_input: Any = None,
    metric: str = "top1",
) -> ModelSummary:
    """Parameters, MACs (``torch.utils.flop_counter``) and CPU latency per sample for one model.

    ``input_shape`` is one sample's shape or an example call ``(args, kwargs)`` of one sample; ``latency_input``
    an example call of a batch (default: 64 random samples of ``input_shape``); ``accuracy`` is the value of the
    task's primary ``metric``.
    """
    return ModelSummary(
        role=role,
        model=name,
        accuracy=accuracy,
        params=count_parameters(model),
        macs=count_macs(model, input_shape),
        latency_ms=1e3 * latency_per_image(model, latency_input if latency_input is not None else input_shape),
        metric=metric,
    )


def write_report(
    run_dir: str | Path,
    title: str,
    summaries: list[ModelSummary],
    extra: dict[str, Any] | None = None,
    plots: list[Path] | None = None,
    metric: str = "top1",
) -> Path:
    """Write ``run_dir/report.md`` (atomically); the table shows the task's primary ``metric``."""
    from featdistill.bench import write_atomic

    run_dir = Path(run_dir)
    label = "top-1" if metric == "top1" else metric
    lines = [
        f"# {title}",
        "",
        f"| role | model | test {label} (last epoch) | params | MACs / sample | CPU latency / sample |",
        "|---|---|---|---|---|---|",
        *[s.row() for s in summaries],
        "",
    ]
    if len(summaries) >= 2 and summaries[0].params and summaries[-1].params:
        t, s = summaries[0], summaries[-1]
        lines.append(
            f"The {s.role} has {t.params / max(s.params, 1):.1f}× fewer parameters and "
            f"{t.macs / max(s.macs, 1):.1f}× fewer MACs than the {t.role}."
        )
        lines.append("")
    for k, v in (extra or {}).items():
        lines.append(f"- **{k}**: {v}")
    if plots:
        lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    lines.append("")
    lines.append("Latency: batch-1 CPU forward, median of repeats, this machine; compare ratios, not absolutes.")
    path = run_dir / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    (run_dir / "summary.json").write_text(__import__("json").dumps([asdict(s) for s in summaries], indent=2))
    return path
