"""Benchmark suites: each writes ``DIR/SUITE.json`` (``{"suite", "rows", "meta"}``) and ``DIR/SUITE.md``.

Speed is measured here, never asserted in tests: the machine is noisy, so suites measure the
configurations they compare side by side in one run and report ratios.  A suite is a function
``(out_dir: Path, quick: bool) -> list[dict]`` registered in :data:`SUITES` under its name; modules that
define suites are imported lazily by name in :data:`SUITE_MODULES` so that ``featdistill bench`` stays fast.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from featdistill.io import atomic_write_text

__all__ = [
    "SUITES",
    "SUITE_MODULES",
    "SUITE_THREADS",
    "register_suite",
    "run_suite",
    "markdown_table",
    "write_atomic",
    "torch_threads",
]

Suite = Callable[[Path, bool], list[dict[str, Any]]]
SUITES: dict[str, Suite] = {}
#: suite name → intra-op thread count it runs with (absent: torch's default)
SUITE_THREADS: dict[str, int] = {}
#: suite name → module that registers it (imported on demand)
SUITE_MODULES: dict[str, str] = {
    "core": "featdistill.bench.core",
    "demo": "featdistill.bench.core",
    "cache": "featdistill.bench.cache",
    "methods": "featdistill.bench.methods",
    "condense": "featdistill.bench.condense",
    "condense-labels": "featdistill.bench.condense_labels",
    "condense-label-views": "featdistill.bench.condense_labels",
    "task-store": "featdistill.bench.task_store",
    "tasks": "featdistill.bench.tasks",
}


def register_suite(name: str, threads: int | None = None) -> Callable[[Suite], Suite]:
    """Register ``fn`` as suite ``name``; ``threads`` pins ``torch.set_num_threads`` while it runs (tiny
    networks on a shared 2-core machine run several times faster with 1 thread than with 2 spinning ones)."""

    def deco(fn: Suite) -> Suite:
        if name in SUITES and SUITES[name] is not fn:
            raise ValueError(f"benchmark suite {name!r} is already registered")
        SUITES[name] = fn
        if threads is not None:
            SUITE_THREADS[name] = int(threads)
        return fn

    return deco


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` intra-op threads (``None``: unchanged); restores the old count; yields
    the count in effect."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


write_atomic = atomic_write_text  # kept for suites: one implementation, in featdistill.io


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (columns: the union of keys in first-seen order)."""
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine_meta() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run_suite(name: str, out_dir: str | Path, quick: bool = False) -> Path:
    """Run suite ``name`` and write ``out_dir/name.json`` and ``out_dir/name.md``; return the JSON path."""
    if name not in SUITES and name in SUITE_MODULES:
        importlib.import_module(SUITE_MODULES[name])
    if name not in SUITES:
        raise KeyError(f"unknown benchmark suite {name!r}; known: {sorted(set(SUITE_MODULES) | set(SUITES))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path = out / f"{name}.md"
    md_path.unlink(missing_ok=True)  # a suite may write its own richer table; a stale one must not survive
    t0 = time.perf_counter()
    with torch_threads(SUITE_THREADS.get(name)) as threads:
        rows = SUITES[name](out, quick)
    meta = {**machine_meta(), "threads": threads, "quick": quick, "seconds": round(time.perf_counter() - t0, 2)}
    payload = {"suite": name, "rows": rows, "meta": meta}
    json_path = out / f"{name}.json"
    write_atomic(json_path, json.dumps(payload, indent=2, default=str))
    machine = (
        f"Machine: {meta['processor']}, torch {meta['torch']}, {meta['threads']} threads"
        + (f", {meta['cuda']}" if meta["cuda"] else "")
        + f"; {meta['seconds']} s; `featdistill bench {name}{' --quick' if quick else ''}`.\n"
    )
    own = md_path.read_text() if md_path.is_file() else None
    body = own if own is not None else f"# Benchmark suite `{name}`\n\n{markdown_table(rows)}"
    write_atomic(md_path, body.rstrip("\n") + "\n\n" + machine)
    return json_path
