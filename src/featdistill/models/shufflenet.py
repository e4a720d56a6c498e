"""ShuffleNet V1 (groups 3) and V2 (1×) for small images, CRD style (RepDistiller / mdistiller).

Both use a 1×1 stem with 24 channels and no stem pooling, three stride-2 stages, global average pooling and a
``linear`` classifier. Parameter names equal the reference's (``conv1``, ``bn1``, ``layer{i}.{j}…``,
``linear``) so its checkpoints load. Changes that do not touch parameters: activations are separate
non-in-place modules (hooks capture clean tensors), blocks expose their pre-ReLU output as ``preact`` (the
reference's ``preact_feats``), and pooling is adaptive (the reference's ``avg_pool2d(·, 4)`` equals it at
32×32).

Taps: ``layer1``–``layer3`` (stage outputs), ``flatten`` (pooled embedding: 960-d V1, 1024-d V2), ``linear``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import register_model


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` channel groups: (N, g·c, H, W) → view (N, g, c) → transpose → (N, c·g, H, W)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


# --------------------------------------------------------------------------------------------------- V1
class ShuffleV1Block(nn.Module):
    """Grouped 1×1 → shuffle → dw 3×3 (stride) → grouped 1×1; stride 2 concats an avg-pooled input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=False)
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.preact = nn.Identity()
        self.relu3 = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return self.relu3(self.preact(out))


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1: ``out_planes`` and ``num_blocks`` per stage, ``groups`` for the grouped 1×1 convs."""

    def __init__(
        self,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU(inplace=False)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups, first_stage=True)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

        self.stage_channels: list[int] = [24, *out_planes]
        self.stage_paths: list[str] = ["layer1", "layer2", "layer3"]
        self.embedding_path: str = "flatten"
        self.classifier_path: str = "linear"

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int, first_stage: bool = False) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self.in_planes if i == 0 else 0  # stride-2 blocks concatenate the pooled input
            # The 24-channel stem output is not divisible into groups: the very first 1×1 conv is ungrouped.
            first_groups = 1 if (first_stage and i == 0) else groups
            layers.append(ShuffleV1Block(self.in_planes, out_planes - cat_planes, stride, groups, first_groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.avgpool(x)))


# --------------------------------------------------------------------------------------------------- V2
class SplitBlock(nn.Module):
    """Split channels into the first ``ratio`` part and the rest."""

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class ShuffleV2Block(nn.Module):
    """Stride-1 unit: half the channels pass, half go 1×1 → dw 3×3 → 1×1; then concat and shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu3 = nn.ReLU(inplace=False)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.split(x)
        out = self.relu1(self.bn1(self.conv1(x2)))
        out = self.relu3(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return self.shuffle(torch.cat([x1, out], 1))


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 unit: both branches downsample (dw 3×3 stride 2), each gives half the output channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=False)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU(inplace=False)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu5 = nn.ReLU(inplace=False)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu3(self.bn3(self.conv3(x)))
        right = self.relu5(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


SHUFFLEV2_CONFIGS: dict[float, dict[str, tuple[int, ...]]] = {
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1.0: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2.0: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 at ``net_size`` ∈ {0.5, 1, 1.5, 2}; each stage = one down unit + ``num_blocks`` units."""

    def __init__(self, net_size: float = 1.0, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if float(net_size) not in SHUFFLEV2_CONFIGS:
            raise ValueError(f"ShuffleNetV2 net_size must be one of {sorted(SHUFFLEV2_CONFIGS)}, got {net_size}")
        cfg = SHUFFLEV2_CONFIGS[float(net_size)]
        out_channels, num_blocks = cfg["out_channels"], cfg["num_blocks"]
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU(inplace=False)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

        self.stage_channels: list[int] = [24, *out_channels[:3]]
        self.stage_paths: list[str] = ["layer1", "layer2", "layer3"]
        self.embedding_path: str = "flatten"
        self.classifier_path: str = "linear"

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2DownBlock(self.in_channels, out_channels)]
        layers += [ShuffleV2Block(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(self.flatten(self.avgpool(x)))


@register_model("shufflev1")
def shufflev1(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """CRD ``ShuffleV1``: groups 3, stage widths 240/480/960, blocks 4/8/4."""
    del image_size
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)


@register_model("shufflev2")
def shufflev2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, net_size: float = 1.0) -> nn.Module:
    """CRD ``ShuffleV2`` (1×): stage widths 116/232/464, head 1024."""
    del image_size
    return ShuffleNetV2(net_size=net_size, num_classes=num_classes, in_channels=in_channels)
