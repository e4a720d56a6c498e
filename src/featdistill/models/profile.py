"""Model size and cost: parameters, multiply-accumulates, latency per image.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (which counts matmuls, convolutions and attention,
not element-wise ops, pooling or normalisation) divided by 2, so they match the "conv and linear layers only"
convention of the KD literature (benchmarks.md §6.1).

Shapes: ``input_shape`` is the shape of **one sample, without the batch dimension** (``(3, 32, 32)``, or
``(D,)`` for vector data); results are per image.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared ones counted once); only ``requires_grad`` ones if asked."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then restore each submodule's own flag (BN stats must not be updated)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def _example(model: nn.Module, input_shape: Sequence[int], batch: int) -> torch.Tensor:
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.randn(batch, *input_shape, device=device, dtype=dtype)


#: an example call ``(args, kwargs)`` for models that do not take one image tensor (token ids, several inputs)
ExampleCall = tuple[tuple[Any, ...], dict[str, Any]]


def _call_of(model: nn.Module, input_shape: Sequence[int] | ExampleCall, batch: int) -> ExampleCall:
    if isinstance(input_shape, tuple) and len(input_shape) == 2 and isinstance(input_shape[1], dict):
        return input_shape  # type: ignore[return-value]
    return (_example(model, input_shape, batch),), {}  # type: ignore[arg-type]


def count_macs(model: nn.Module, input_shape: Sequence[int] | ExampleCall) -> int:
    """Multiply-accumulates of one forward pass on one sample of ``input_shape`` (eval mode, no grad).

    ``input_shape`` may instead be an example call ``(args, kwargs)`` of one sample (a Hugging Face batch).
    """
    args, kwargs = _call_of(model, input_shape, 1)
    with _eval_mode(model), torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(*args, **kwargs)
    return int(counter.get_total_flops()) // 2


def latency_per_image(
    model: nn.Module, input_shape: Sequence[int] | ExampleCall, batch: int = 64, repeats: int = 10, warmup: int = 2
) -> float:
    """Median wall-clock seconds per image of an inference forward pass on batches of ``batch``.

    Median over ``repeats`` timed passes after ``warmup`` untimed ones (first calls pay for allocation and
    kernel selection); CUDA is synchronised around each pass so the time covers the kernels, not just
    their launch.
    """
    if batch < 1 or repeats < 1:
        raise ValueError(f"batch and repeats must be ≥ 1, got batch={batch}, repeats={repeats}")
    args, kwargs = _call_of(model, input_shape, batch)
    first = next((a for a in [*args, *kwargs.values()] if torch.is_tensor(a)), None)
    if first is not None:
        batch = int(first.shape[0])
    sync = torch.cuda.synchronize if first is not None and first.is_cuda else (lambda: None)
    times: list[float] = []
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(*args, **kwargs)
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            model(*args, **kwargs)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times) / batch
