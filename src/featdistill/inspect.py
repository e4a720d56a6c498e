"""``featdistill inspect``: every module path of a model with its output shape and parameters.

What a user needs to choose taps: the valid dotted paths, what shape each produces for their input size,
where the parameters and the MACs are.  Shapes come from one real forward pass with hooks on every module.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ModuleRow", "inspect_model", "print_inspection", "describe_modules"]


@dataclass
class ModuleRow:
    path: str
    kind: str
    shape: str
    params: int


def _shape_of(out: Any) -> str:
    if torch.is_tensor(out):
        return "×".join(str(d) for d in out.shape)
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_shape_of(o) for o in out) + ")"
    if isinstance(out, dict):
        return "{" + ", ".join(f"{k}: {_shape_of(v)}" for k, v in out.items()) + "}"
    return type(out).__name__


def describe_modules(model: nn.Module, x: torch.Tensor, depth: int | None = None) -> list[ModuleRow]:
    """One row per submodule (in execution order where it ran) with its output shape for input ``x``."""
    shapes: dict[str, str] = {}
    order: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        if not name or (depth is not None and name.count(".") >= depth):
            continue

        def hook(m, a, out, name=name):
            if name not in shapes:
                order.append(name)
            shapes[name] = _shape_of(out)

        handles.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    mods = dict(model.named_modules())
    names = order + [n for n in mods if n and n not in shapes and (depth is None or n.count(".") < depth)]
    return [
        ModuleRow(
            path=n,
            kind=type(mods[n]).__name__,
            shape=shapes.get(n, "(not called)"),
            params=sum(p.numel() for p in mods[n].parameters()),
        )
        for n in names
    ]


def inspect_model(
    name: str, num_classes: int = 100, input_shape: tuple[int, ...] = (3, 32, 32), depth: int | None = None
) -> tuple[list[ModuleRow], dict[str, Any]]:
    from featdistill.models import build_model
    from featdistill.models.profile import count_macs, count_parameters
    from featdistill.seeding import seeded

    c, h = input_shape[0], input_shape[-1]
    with seeded(0, "inspect"):
        model = build_model(name, num_classes=num_classes, in_channels=c, image_size=h)
    x = torch.zeros(1, *input_shape)
    rows = describe_modules(model, x, depth)
    totals = {
        "params": count_parameters(model),
        "macs": count_macs(model, input_shape),
        "stage_paths": getattr(model, "stage_paths", None),
        "embedding_path": getattr(model, "embedding_path", None),
        "classifier_path": getattr(model, "classifier_path", None),
        "input_shape": input_shape,
        "num_classes": num_classes,
    }
    return rows, totals


def print_inspection(name: str, rows: list[ModuleRow], totals: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}  input 1×{'×'.join(map(str, totals['input_shape']))}")
    table.add_column("module path")
    table.add_column("type")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    for r in rows:
        table.add_row(r.path, r.kind, r.shape, f"{r.params:,}")
    console = Console()
    console.print(table)
    console.print(
        f"total: {totals['params']:,} parameters ({totals['params'] / 1e6:.3f} M), "
        f"{totals['macs'] / 1e6:.2f} M MACs per image"
    )
    console.print(
        f"stage_paths={totals['stage_paths']}  embedding_path={totals['embedding_path']!r}  "
        f"classifier_path={totals['classifier_path']!r}"
    )


def run_cka_cli(args: argparse.Namespace, input_shape: tuple[int, ...]) -> int:
    """``featdistill inspect TEACHER --cka STUDENT``: layer-similarity matrix on one batch (+ heatmap PNG)."""
    from featdistill.methods.cka import cka_cli

    return cka_cli(args.model, args.cka, input_shape, args.num_classes, args.out)
