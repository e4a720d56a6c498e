"""Backbones for condensation: built from the zoo, (re-)initialised from an explicit generator, read by hooks.

The anchor code re-seeds the global RNG from the wall clock every time it builds a network. Here a network
is built once per run and its parameters are re-drawn from the run's ``torch.Generator`` whenever a method
needs a "fresh random network" — reproducible, and cheaper than rebuilding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BackboneFactory",
    "make_backbone_factory",
    "reinit_",
    "capture",
    "embed",
    "has_batchnorm",
    "stage_paths",
]

BackboneFactory = Callable[[], nn.Module]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
)


def make_backbone_factory(
    backbone: str | BackboneFactory | nn.Module,
    num_classes: int,
    in_channels: int,
    image_size: int,
    backbone_kwargs: dict[str, Any] | None = None,
) -> BackboneFactory:
    """A zero-argument callable that builds the backbone.

    ``backbone`` is a zoo name (``featdistill.models.build_model``), a factory, or a module used as a template
    (deep-copied). Construction runs inside ``torch.random.fork_rng`` so building a model never advances the
    caller's global RNG; the weights it was built with are then replaced by :func:`reinit_`.
    """
    if isinstance(backbone, nn.Module):
        import copy

        template = backbone
        return lambda: copy.deepcopy(template)
    if callable(backbone):
        fn = backbone

        def _build_callable() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                return fn()

        return _build_callable
    name = str(backbone)
    kwargs = dict(backbone_kwargs or {})
    if name == "convnet":
        kwargs.setdefault("norm", "instancenorm")  # the DC/DM/MTT reference backbone is ConvNet-3 with IN

    def _build() -> nn.Module:
        try:
            from featdistill.models import build_model
        except ImportError as exc:  # pragma: no cover - only while the zoo is being written
            raise ImportError(
                f"backbone {name!r} needs featdistill.models.build_model; pass a module or a factory instead"
            ) from exc
        with torch.random.fork_rng(devices=[]):
            return build_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)

    return _build


@torch.no_grad()
def reinit_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every parameter of ``model`` from ``generator`` with PyTorch's default scheme.

    Conv/linear weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (what ``kaiming_uniform_(a=sqrt(5))``
    gives, and what DC's ConvNet uses since it never overrides the default); norm weights 1, biases 0; any
    other parameter (tokens, positional embeddings) ~ N(0, 0.02). Norm running statistics are reset.
    Parameters are drawn on CPU and copied, so the same seed gives the same network on every device.
    """
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
            for p in module.parameters(recurse=False):
                seen.add(id(p))
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2 and id(weight) not in seen:
            fan_in = weight[0].numel()
            if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                fan_in = weight.shape[1] * weight[0][0].numel()
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            weight.copy_(torch.empty(weight.shape).uniform_(-bound, bound, generator=generator))
            seen.add(id(weight))
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.copy_(torch.empty(bias.shape).uniform_(-bound, bound, generator=generator))
                seen.add(id(bias))
    for p in model.parameters():
        if id(p) not in seen:
            if p.dim() == 1:
                p.zero_()  # stray 1-D parameters (offsets) start neutral
            else:
                p.copy_(torch.empty(p.shape).normal_(0.0, 0.02, generator=generator))
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """True when the model normalises with batch statistics (changes how DM/DC form batches)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def stage_paths(model: nn.Module) -> list[str]:
    """The zoo's ``stage_paths``, or every ReLU (what DataDAM hooks) for a foreign model."""
    paths = getattr(model, "stage_paths", None)
    if paths:
        return list(paths)
    return [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]


@contextmanager
def capture(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Forward hooks on ``paths``; yields a dict filled with each module's latest output.

    A wrong path raises ``KeyError`` listing the valid ones (names over indices — DataDAM located its
    hooks by integer position, which breaks silently when the network changes).
    """
    out: dict[str, Tensor] = {}
    handles = []
    names = dict(model.named_modules())
    try:
        for path in paths:
            if path not in names:
                valid = [n for n in names if n][:20]
                raise KeyError(f"module path {path!r} not in {type(model).__name__}; valid paths include {valid}")

            def hook(_m: nn.Module, _i: Any, o: Any, key: str = path) -> None:
                out[key] = o[0] if isinstance(o, (tuple, list)) else o

            handles.append(names[path].register_forward_hook(hook))
        yield out
    finally:
        for h in handles:
            h.remove()


def embed(model: nn.Module, x: Tensor) -> Tensor:
    """The penultimate embedding ``(B, D)``: the output of ``model.embedding_path`` (flattened), or
    ``model.embed(x)`` for DC-style networks."""
    path = getattr(model, "embedding_path", None)
    if path is None:
        if hasattr(model, "embed"):
            return model.embed(x).flatten(1)
        raise AttributeError(
            f"{type(model).__name__} has neither an `embedding_path` attribute nor an `embed` method; "
            "condensation needs the penultimate embedding"
        )
    with capture(model, [path]) as feats:
        model(x)
    return feats[path].flatten(1)
