"""A multilayer perceptron on flattened inputs: the smallest student, and the model for vector data.

The input ``(B, C, H, W)`` (or ``(B, D)``) is flattened by ``input_flatten``; ``in_channels · image_size²``
fixes the input width unless ``input_dim`` is given (vector data). Each hidden layer is ``body.{i}`` =
Linear → (BatchNorm1d) → ReLU (→ Dropout); ``flatten`` (a no-op on the 2-D last hidden output, kept so every
zoo model has its embedding at ``flatten``) is the embedding, ``classifier`` the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .registry import register_model


class MLP(nn.Module):
    """Flatten → hidden layers → linear classifier."""

    def __init__(
        self,
        input_dim: int,
        num_classes: int = 10,
        hidden: Sequence[int] = (256, 256),
        batchnorm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(hidden) == 0:
            raise ValueError("mlp needs at least one hidden layer (hidden=(256, 256) for example)")
        self.input_flatten = nn.Flatten(1)
        blocks: list[nn.Module] = []
        prev = input_dim
        for h in hidden:
            layers: list[nn.Module] = [nn.Linear(prev, h)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=False))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            prev = h
        self.input_dim = input_dim
        self.body = nn.Sequential(*blocks)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(prev, num_classes)

        self.stage_paths: list[str] = [f"body.{i}" for i in range(len(hidden))]
        self.embedding_path: str = "flatten"
        self.classifier_path: str = "classifier"

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_flatten(x)
        if x.shape[1] != self.input_dim:
            raise ValueError(
                f"mlp built for {self.input_dim} input features got {x.shape[1]}; "
                "set in_channels/image_size (or input_dim) to match the data"
            )
        return self.classifier(self.flatten(self.body(x)))


@register_model("mlp")
def mlp(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    hidden: Sequence[int] = (256, 256),
    input_dim: int | None = None,
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """MLP with ``hidden`` layer widths on ``input_dim`` (default ``in_channels · image_size²``) features."""
    dim = input_dim if input_dim is not None else in_channels * image_size * image_size
    return MLP(dim, num_classes=num_classes, hidden=tuple(hidden), batchnorm=batchnorm, dropout=dropout)
