"""Forecasters for multi-step time-series regression: ``(B, window, D)`` → ``(B, horizon, D)``.

Why in the zoo: the regression task needs a teacher/student family that differs only in width and trains in
seconds on a CPU. ``forecaster`` is the strong simple baseline of the forecasting literature (a linear/MLP map
from the flattened window to the flattened horizon, cf. DLinear/N-BEATS-style MLPs): ``input_flatten`` →
``body.{i}`` (Linear → ReLU) → ``flatten`` (the embedding) → ``head`` (Linear to ``horizon·D``) → reshape. The
sizes come from the dataset (``window``, ``num_features``, ``horizon`` in its ``info``) unless given.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .registry import register_model

__all__ = ["Forecaster"]


class Forecaster(nn.Module):
    """Flattened window → hidden layers → ``horizon × num_features`` values."""

    def __init__(self, window: int, num_features: int, horizon: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        if window < 1 or num_features < 1 or horizon < 1:
            raise ValueError(
                f"forecaster: window, num_features, horizon must be >= 1, got {window}, {num_features}, {horizon}"
            )
        self.horizon, self.num_features = int(horizon), int(num_features)
        self.input_flatten = nn.Flatten(1)
        layers: list[nn.Module] = []
        prev = window * num_features
        for h in hidden:
            layers += [nn.Sequential(nn.Linear(prev, int(h)), nn.ReLU())]
            prev = int(h)
        self.body = nn.Sequential(*layers)
        self.flatten = nn.Identity()
        self.head = nn.Linear(prev, horizon * num_features)
        self.stage_paths = [f"body.{i}" for i in range(len(layers))]
        self.embedding_path = "flatten"
        self.classifier_path = "head"
        self.task = "regression"

    def forward(self, x: Tensor) -> Tensor:
        z = self.flatten(self.body(self.input_flatten(x)))
        return self.head(z).reshape(x.shape[0], self.horizon, self.num_features)


@register_model("forecaster")
def forecaster(
    num_classes: int = 0,
    in_channels: int = 1,
    image_size: int = 1,
    window: int | None = None,
    num_features: int | None = None,
    horizon: int = 1,
    hidden: Sequence[int] = (64,),
) -> Forecaster:
    """``num_classes``/``in_channels``/``image_size`` are unused (series data gives ``window``, ``num_features``
    and ``horizon``); outside a run pass them explicitly."""
    if window is None or num_features is None:
        raise ValueError("forecaster needs window and num_features (a series dataset provides them)")
    return Forecaster(window, num_features, horizon, hidden)
