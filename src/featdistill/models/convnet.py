"""ConvNet-D, the dataset-distillation backbone (DC / DSA / DM / MTT ``ConvNet``), default depth 3, width 128.

Each of ``depth`` blocks is conv 3×3 (bias) → norm → activation → 2×2 pooling; the final map is **flattened,
not globally pooled**, and fed to one linear classifier — that flattened map is the embedding DM matches, and
its size (width × h × w) is what fixes the parameter count.

Padding. The DC-family repos pad the *first* conv by 3 when the input has one channel (so 28×28 MNIST becomes
32×32: final map 4×4, 2048-d feature, 0.318 M params for 10 classes). Here every conv pads 1 by default
(``first_padding=1``: 28 → 14 → 7 → 3, a 3×3 final map, 1152-d feature, **0.309 M params** for width 128 and
10 classes — benchmarks.md §6.3); pass ``first_padding=3`` to reproduce the DC-family MNIST network exactly.

Options: ``norm`` is ``"instancenorm"`` (``GroupNorm(C, C)`` with affine, as DC), ``"batchnorm"`` or
``"none"``;
``act`` is ``"relu"``, ``"leakyrelu"`` (slope 0.01) or ``"sigmoid"``; ``pooling`` is ``"avgpooling"``,
``"maxpooling"`` or ``"none"``. Layers sit in one flat ``features`` Sequential, as in DC, so parameter order
and ``state_dict`` keys (``features.{k}``, ``classifier``) match those repos (MTT expert trajectories are flat
parameter vectors).

Taps: ``stage_paths`` are the outputs of each block (after pooling), e.g. ``features.3``, ``features.7``,
``features.11`` with a norm; ``flatten`` is the embedding, ``classifier`` the logits.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model

_NORMS = ("instancenorm", "batchnorm", "none")
_ACTS = ("relu", "leakyrelu", "sigmoid")
_POOLS = ("avgpooling", "maxpooling", "none")


def _choice(kind: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"convnet {kind}={value!r} is not supported; choose one of {list(options)}")
    return value


def _activation(act: str) -> nn.Module:
    if act == "relu":
        return nn.ReLU(inplace=False)
    if act == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=False)
    return nn.Sigmoid()


class ConvNet(nn.Module):
    """DC-style ConvNet; see the module docstring for the options."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        act: str = "relu",
        pooling: str = "avgpooling",
        first_padding: int = 1,
    ):
        super().__init__()
        _choice("norm", norm, _NORMS)
        _choice("act", act, _ACTS)
        _choice("pooling", pooling, _POOLS)
        if depth < 1:
            raise ValueError(f"convnet depth must be ≥ 1, got {depth}")
        layers: list[nn.Module] = []
        stage_paths: list[str] = []
        channels, size = in_channels, image_size
        for d in range(depth):
            pad = first_padding if d == 0 else 1
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=pad))
            size = size + 2 * pad - 2
            if norm == "instancenorm":
                layers.append(nn.GroupNorm(width, width, affine=True))
            elif norm == "batchnorm":
                layers.append(nn.BatchNorm2d(width))
            layers.append(_activation(act))
            if pooling != "none":
                layers.append(nn.AvgPool2d(2, 2) if pooling == "avgpooling" else nn.MaxPool2d(2, 2))
                size //= 2
            if size < 1:
                raise ValueError(
                    f"convnet depth={depth} shrinks a {image_size}×{image_size} input below 1 px at block "
                    f"{d + 1}; use a smaller depth, pooling='none' or a larger image_size"
                )
            stage_paths.append(f"features.{len(layers) - 1}")
            channels = width
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten(1)
        self.feature_shape: tuple[int, int, int] = (width, size, size)
        self.classifier = nn.Linear(width * size * size, num_classes)

        self.stage_paths: list[str] = stage_paths
        self.embedding_path: str = "flatten"
        self.classifier_path: str = "classifier"

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.features(x)))


@register_model("convnet")
def convnet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    width: int = 128,
    depth: int = 3,
    norm: str = "instancenorm",
    act: str = "relu",
    pooling: str = "avgpooling",
    first_padding: int = 1,
) -> nn.Module:
    """ConvNet-3 (width 128, instance norm, ReLU, avg pooling) unless overridden."""
    return ConvNet(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        width=width,
        depth=depth,
        norm=norm,
        act=act,
        pooling=pooling,
        first_padding=first_padding,
    )
