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


def describe_modules(model: nn.Module, x: Any, depth: int | None = None) -> list[ModuleRow]:
    """One row per submodule (in execution order where it ran) with its output shape for input ``x``
    (a tensor, or an example call ``(args, kwargs)`` — e.g. ``((), {"input_ids": …})`` for a token model)."""
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
    args, kwargs = x if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], dict) else ((x,), {})
    try:
        with torch.no_grad():
            model(*args, **kwargs)
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


def example_call(model: nn.Module, input_shape: tuple[int, ...] | None, tokens: int | None) -> Any:
    """One sample's input: a zero tensor of ``input_shape``, or ``tokens`` token ids (+ attention mask)."""
    if tokens is None:
        return ((torch.zeros(1, *(input_shape or (3, 32, 32))),), {})
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, tokens), generator=g)
    return ((), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def build_inspected(
    name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    init_args: dict[str, Any] | None = None,
    hf: dict[str, Any] | None = None,
    task: str | None = None,
) -> nn.Module:
    """A zoo name, a ``class_path`` (``pkg.mod:Name`` + ``init_args``) or an ``hf`` config, seeded."""
    from pydantic import ValidationError

    from featdistill.components import build_model_from_config
    from featdistill.config import ConfigError, ModelConfig
    from featdistill.validation import format_validation_error

    try:
        if hf is not None:
            mc = ModelConfig(hf={"config": hf})
        elif ":" in name:
            mc = ModelConfig(class_path=name, init_args=init_args or {})
        else:
            mc = ModelConfig(model=name)
    except ValidationError as err:  # an unknown zoo name, a bad class_path: one message with the nearest names
        raise ConfigError(format_validation_error(err, ModelConfig, title=f"model {name!r}")) from None
    return build_model_from_config(mc, num_classes, input_shape, 0, "inspect", task=task)


def inspect_model(
    name: str | nn.Module,
    num_classes: int = 100,
    input_shape: tuple[int, ...] = (3, 32, 32),
    depth: int | None = None,
    *,
    tokens: int | None = None,
    init_args: dict[str, Any] | None = None,
    hf: dict[str, Any] | None = None,
    task: str | None = None,
) -> tuple[list[ModuleRow], dict[str, Any]]:
    """Module paths, output shapes, parameters and MACs of a zoo model, a user's ``class_path`` model or a
    Hugging Face model built from a config; the input is an image of ``input_shape`` or ``tokens`` token ids."""
    from featdistill.models.profile import count_macs, count_parameters

    model = (
        name if isinstance(name, nn.Module) else build_inspected(name, num_classes, input_shape, init_args, hf, task)
    )
    call = example_call(model, input_shape, tokens)
    rows = describe_modules(model, call, depth)
    totals = {
        "params": count_parameters(model),
        "macs": count_macs(model, call),
        "stage_paths": getattr(model, "stage_paths", None),
        "embedding_path": getattr(model, "embedding_path", None),
        "classifier_path": getattr(model, "classifier_path", None),
        "input_shape": (tokens,) if tokens is not None else input_shape,
        "input": f"{tokens} token ids" if tokens is not None else "×".join(map(str, input_shape)),
        "num_classes": num_classes,
    }
    return rows, totals


def print_inspection(name: str, rows: list[ModuleRow], totals: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}  input 1×{totals.get('input', '×'.join(map(str, totals['input_shape'])))}")
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
        f"{totals['macs'] / 1e6:.2f} M MACs per sample"
    )
    console.print(
        f"stage_paths={totals['stage_paths']}  embedding_path={totals['embedding_path']!r}  "
        f"classifier_path={totals['classifier_path']!r}"
    )


def run_cka_cli(args: argparse.Namespace, input_shape: tuple[int, ...]) -> int:
    """``featdistill inspect TEACHER --cka STUDENT``: layer-similarity matrix on one batch (+ heatmap PNG)."""
    from featdistill.methods.cka import cka_cli

    return cka_cli(args.model, args.cka, input_shape, args.num_classes, args.out)
