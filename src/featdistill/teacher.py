"""Teacher sources: where the teacher's outputs come from.

The Distiller asks a teacher source for a dict of named tensors for a batch and does not care whether a
live network computed them or a store replayed them.  That one seam is what lets cached distillation
cost what training the student alone costs.

- :class:`LiveTeacher` runs the frozen teacher in ``eval()`` under ``torch.inference_mode`` and stops
  after its last tap (partial execution).
- ``featdistill.cache.CachedTeacher`` reads the same dict from a teacher store by ``(sample_id, view_id)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from featdistill.taps import LOGITS, Taps, TapSpec, as_tap_spec

__all__ = ["TeacherSource", "LiveTeacher", "freeze"]


@runtime_checkable
class TeacherSource(Protocol):
    """Anything that maps a batch dict to ``{tap name: tensor}``."""

    tap_names: set[str]

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with gradients off (the teacher is never trained by default)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class LiveTeacher:
    """Runs a frozen teacher on each batch, only as far as its deepest tap.

    ``channels_last`` and ``autocast`` follow the trainer's settings through :meth:`configure`; the
    teacher's outputs are returned in float32 so that losses are computed at full precision.
    """

    def __init__(
        self,
        model: nn.Module,
        taps: Mapping[str, TapSpec | str | Mapping[str, Any]],
        task: Any = None,
    ) -> None:
        self.model = freeze(model)
        self.specs = {name: as_tap_spec(s) for name, s in taps.items()}
        #: how a batch calls the teacher (``task.model_arguments``); default: ``batch["input"]`` positionally
        self.task = task
        only_logits = all(s.path == LOGITS for s in self.specs.values())
        self._taps = Taps(self.model, self.specs, stop_early=not only_logits)
        self.channels_last = False

    @property
    def tap_names(self) -> set[str]:
        return set(self.specs)

    def to(self, *args: Any, **kwargs: Any) -> LiveTeacher:
        self.model.to(*args, **kwargs)
        return self

    def configure(self, channels_last: bool = False) -> None:
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def __call__(self, batch: Mapping[str, Any], **extra: Any) -> dict[str, torch.Tensor]:
        """The taps for ``batch``; ``extra`` keyword arguments go to the teacher's forward
        (:meth:`~featdistill.methods.base.Method.teacher_call_kwargs`)."""
        if self.task is not None:
            args, kwargs = self.task.model_arguments(batch)
        else:
            args, kwargs = (batch["input"],), {}
        if extra:
            kwargs = {**kwargs, **extra}
        if self.channels_last and args and torch.is_tensor(args[0]) and args[0].dim() == 4:
            args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        self.model.eval()
        with torch.inference_mode():
            _, feats = self._taps(*args, **kwargs)
        # Clone out of inference mode so the tensors can take part in autograd graphs as constants.
        return {k: v.float().clone() for k, v in feats.items()}

    def close(self) -> None:
        self._taps.close()
