"""Small helpers shared by the method recipes (not a public API).

* :func:`collect_features` — run a model (or a teacher source) over a loader and gather named taps, used to
  compute offline statistics before training (ND class means, LELP subclass directions);
* :func:`unregistered` — keep a reference to a module without registering it as a submodule (a method must
  never own the student's or the teacher's parameters twice);
* :func:`infer_embedding_dim` — the input width of a zoo model's classifier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from featdistill.taps import Taps, TapSpec, resolve_module

__all__ = [
    "collect_features",
    "dense_image_task",
    "unregistered",
    "infer_embedding_dim",
    "model_device",
    "valid_tokens",
    "pool_tokens",
]


def _fits(feat: torch.Tensor, mask: torch.Tensor | None) -> bool:
    return mask is not None and feat.ndim == 3 and tuple(feat.shape[:2]) == tuple(mask.shape)


def valid_tokens(feat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A ``(B, L, D)`` sequence feature at its non-padding positions ``(N, D)``; other features unchanged.

    ``mask`` is the task's position mask (``batch["position_mask"]``, e.g. the attention mask); padding tokens
    carry no information the student should imitate.
    """
    return feat[mask.bool()] if _fits(feat, mask) else feat  # type: ignore[union-attr]


def pool_tokens(feat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of a ``(B, L, D)`` sequence feature over its non-padding positions → ``(B, D)``; others unchanged."""
    if not _fits(feat, mask):
        return feat
    m = mask.to(feat.dtype)[..., None]  # type: ignore[union-attr]
    return (feat * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def collect_features(
    source: nn.Module | Any,
    loader: Iterable[Mapping[str, torch.Tensor]],
    taps: Mapping[str, TapSpec | str],
    max_batches: int | None = None,
    keep_targets: bool = True,
) -> dict[str, torch.Tensor]:
    """Gather ``{tap: (N, ...)}`` (+ ``"target"``) over ``loader`` in eval mode, without gradient.

    ``source`` is an ``nn.Module`` (run with :class:`~featdistill.taps.Taps`, stopping after the last tap) or a
    teacher source (``source(batch) -> dict``, e.g. a ``CachedTeacher`` that provides the taps by name).
    Tensors are returned on the CPU in float32.
    """
    out: dict[str, list[torch.Tensor]] = {k: [] for k in taps}
    targets: list[torch.Tensor] = []
    if isinstance(source, nn.Module):
        was_training = source.training
        source.eval()
        device = model_device(source)
        only_logits = all((TapSpec(s) if isinstance(s, str) else s).path == "" for s in taps.values())
        with Taps(source, taps, stop_early=not only_logits) as t, torch.no_grad():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                _, feats = t(batch["input"].to(device))
                for k in taps:
                    out[k].append(feats[k].detach().float().cpu())
                if keep_targets:
                    targets.append(batch["target"].cpu())
        source.train(was_training)
    else:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            with torch.no_grad():
                feats = source(batch)
            missing = [k for k in taps if k not in feats]
            if missing:
                raise KeyError(
                    f"collect_features: the teacher source gives {sorted(feats)} but {missing} are needed; "
                    "rebuild the teacher store with those taps, or pass the live teacher model"
                )
            for k in taps:
                out[k].append(feats[k].detach().float().cpu())
            if keep_targets:
                targets.append(batch["target"].cpu())
    if not any(out.values()) and taps:
        raise ValueError("collect_features: the loader yielded no batch")
    result = {k: torch.cat(v) for k, v in out.items()}
    if keep_targets:
        result["target"] = torch.cat(targets).long()
    return result


class _Ref:
    """Holds a module without registering it (not an ``nn.Module``, so ``__setattr__`` ignores it)."""

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module

    def __call__(self) -> nn.Module:
        if self.module is None:
            raise RuntimeError("the method is not bound to a model yet (Distiller(...) binds it)")
        return self.module


def unregistered(module: nn.Module | None) -> _Ref:
    """A callable reference to ``module`` that keeps it out of ``state_dict`` and ``parameters()``."""
    return _Ref(module)


def infer_embedding_dim(model: nn.Module | None) -> int | None:
    """``in_features`` of the model's classifier (``classifier_path``), or ``None`` if unknown."""
    if model is None or not getattr(model, "classifier_path", None):
        return None
    fc = resolve_module(model, model.classifier_path)
    return getattr(fc, "in_features", None)


def dense_image_task(task: Any) -> bool:
    """Whether ``task`` (instance or class) predicts spatial maps of an image — segmentation, image-to-image —
    the tasks whose predictions dense recipes (CWD, pair-wise) can read as ``(N, C, H, W)`` maps."""
    task_cls = task if isinstance(task, type) else type(task)
    return task_cls.modality == "image" and (bool(task_cls.per_position) or task_cls.family == "output")
