"""Core-engine benchmarks, measured side by side in one run (the machine is noisy: compare ratios).

Suite ``core``:
- ``precision``: resnet8x4 train step (batch 64, 32×32, 100 classes) in fp32 vs bf16 autocast +
  channels_last → ``bf16_cl_over_fp32``;
- ``partial_teacher``: resnet32x4 forward under ``inference_mode`` up to ``layer2`` (the middle stage, via
  taps with ``stop_early``) vs the full forward → ``partial_over_full``; MACs of both from the flop counter.
Configurations are interleaved round-robin and the median step is reported.

Suite ``demo``: ``featdistill demo`` for seeds 0, 1, 2 → test accuracy mean ± std per step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featdistill.bench import register_suite
from featdistill.models import build_model
from featdistill.seeding import seeded
from featdistill.taps import Taps

__all__ = ["interleaved_medians", "bench_core", "bench_demo"]


def interleaved_medians(
    fns: dict[str, Callable[[], None]], rounds: int, reps: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin so drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, channels_last: bool):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    device_type = x.device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device_type == "cuda":
            torch.cuda.synchronize()

    return step


@register_suite("core")
def bench_core(out_dir: Path, quick: bool) -> list[dict[str, Any]]:
    from featdistill.models.profile import count_macs

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = 16 if quick else 64
    rounds, reps = (2, 1) if quick else (4, 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 100, (batch,), generator=g).to(device)
    rows: list[dict[str, Any]] = []

    # 1. precision × memory format, student train step
    from featdistill.train.config import cpu_supports_bf16

    native_bf16 = device.type == "cuda" or cpu_supports_bf16()
    with seeded(0, "bench"):
        models = {k: build_model("resnet8x4", num_classes=100).to(device) for k in ("fp32", "fp32_cl", "bf16_cl")}
    fns = {
        "fp32": _train_step_fn(models["fp32"], x, y, False, False),
        "fp32_cl": _train_step_fn(models["fp32_cl"], x, y, False, True),
    }
    bf16_fn = _train_step_fn(models["bf16_cl"], x, y, True, True)
    if native_bf16:
        fns["bf16_cl"] = bf16_fn
    med = interleaved_medians(fns, rounds, reps)
    if not native_bf16:
        # Emulated bf16 is an order of magnitude slower: time two steps once, outside the interleaving.
        med["bf16_cl"] = interleaved_medians({"bf16_cl": bf16_fn}, 1, 2, warmup=1)["bf16_cl"]
    rows.append(
        {
            "benchmark": "precision",
            "model": "resnet8x4 train step",
            "batch": batch,
            "device": str(device),
            "bf16": "native" if native_bf16 else "emulated (no AVX512-BF16/AMX: precision=auto picks fp32)",
            "fp32_ms": round(1e3 * med["fp32"], 1),
            "fp32_cl_ms": round(1e3 * med["fp32_cl"], 1),
            "bf16_cl_ms": round(1e3 * med["bf16_cl"], 1),
            "fp32_cl_over_fp32": round(med["fp32_cl"] / med["fp32"], 3),
            "bf16_cl_over_fp32": round(med["bf16_cl"] / med["fp32"], 3),
        }
    )

    # 2. partial teacher execution
    with seeded(0, "bench-teacher"):
        teacher = build_model("resnet32x4", num_classes=100).to(device).eval()
    taps_full = Taps(teacher, {"logits": ""})
    taps_mid = Taps(teacher, {"mid": "layer2"}, stop_early=True)

    def full() -> None:
        with torch.inference_mode():
            taps_full(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def partial() -> None:
        with torch.inference_mode():
            taps_mid(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    med = interleaved_medians({"full": full, "partial": partial}, rounds, reps)
    taps_full.close()
    taps_mid.close()
    macs_full = count_macs(teacher, (3, 32, 32))
    with Taps(teacher, {"mid": "layer2"}, stop_early=True) as t:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc, torch.no_grad():
            t(torch.zeros(1, 3, 32, 32, device=device))
        macs_partial = fc.get_total_flops() // 2
    rows.append(
        {
            "benchmark": "partial_teacher",
            "model": "resnet32x4 forward, taps at layer2",
            "batch": batch,
            "device": str(device),
            "full_ms": round(1e3 * med["full"], 1),
            "partial_ms": round(1e3 * med["partial"], 1),
            "partial_over_full": round(med["partial"] / med["full"], 3),
            "macs_full_M": round(macs_full / 1e6, 1),
            "macs_partial_M": round(macs_partial / 1e6, 1),
            "macs_ratio": round(macs_partial / macs_full, 3),
        }
    )
    return rows


@register_suite("demo")
def bench_demo(out_dir: Path, quick: bool) -> list[dict[str, Any]]:
    """The demo over seeds 0, 1, 2: test accuracy mean ± std for each step (last epoch, same protocol)."""
    from featdistill.demo import run_demo

    seeds = [0, 1] if quick else [0, 1, 2]
    per_step: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for row in run_demo(out_dir / f"seed{seed}", seed=seed, quick=quick, print_table=False):
            per_step.setdefault(row["step"], []).append(row)
    rows = []
    for step, rs in per_step.items():
        accs = [r["test_top1"] for r in rs]
        rows.append(
            {
                "step": step,
                "method": rs[0]["method"],
                "model": rs[0]["model"],
                "seeds": len(rs),
                "test_top1_mean": round(statistics.mean(accs), 4),
                "test_top1_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
                "params": rs[0]["params"],
                "macs_M": round(rs[0]["macs"] / 1e6, 2),
                "seconds_mean": round(statistics.mean(r["seconds"] for r in rs), 1),
            }
        )
    return rows
