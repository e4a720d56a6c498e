"""CIFAR ResNets (RepDistiller / mdistiller ``models/resnet.py``): 3×3 stem, three BasicBlock stages.

Why rewritten rather than copied: the reference returns ``(logits, feats)`` and uses in-place ReLU/add, which
breaks forward-hook taps (a hook would capture a tensor later overwritten). Here ``forward`` returns logits
only, every activation is a separate non-in-place module, and the parameter names equal the reference's, so
``state_dict`` keys match RepDistiller/mdistiller checkpoints (``conv1``, ``bn1``, ``layer{i}.{j}.conv1`` …,
``fc``). The final pooling is adaptive, so any input size works (the reference's ``AvgPool2d(8)`` equals it at
32×32).

Taps: stage outputs ``layer1``–``layer3``; pre-ReLU block sums at ``layer{i}.{j}.preact`` (what the reference
returns as ``preact_feats``); pooled embedding at ``flatten``; logits at ``fc``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1, no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1-conv) shortcut; ``preact`` exposes the sum before the ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.preact = nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(self.preact(out + residual))


class CifarResNet(nn.Module):
    """ResNet of depth ``6n + 2`` with stem width ``widths[0]`` and stage widths ``widths[1:]``."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n ≥ 1 (8, 14, 20, 32, …), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(widths[1], n, stride=1)
        self.layer2 = self._make_layer(widths[2], n, stride=2)
        self.layer3 = self._make_layer(widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[3], num_classes)

        self.stage_channels: list[int] = list(widths)
        self.stage_paths: list[str] = ["layer1", "layer2", "layer3"]
        self.embedding_path: str = "flatten"
        self.classifier_path: str = "fc"

        # Same initialisation as the reference, so freshly built students train the same way.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _resnet(depth: int, widths: tuple[int, int, int, int]):
    def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        del image_size  # adaptive pooling: any size ≥ 4 works (two stride-2 stages).
        return CifarResNet(depth, widths, num_classes=num_classes, in_channels=in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth}, widths {widths} (stem, stage1, stage2, stage3)."
    return build


for _name, _depth, _widths in [
    ("resnet8", 8, _SMALL),
    ("resnet14", 14, _SMALL),
    ("resnet20", 20, _SMALL),
    ("resnet32", 32, _SMALL),
    ("resnet44", 44, _SMALL),
    ("resnet56", 56, _SMALL),
    ("resnet110", 110, _SMALL),
    ("resnet8x4", 8, _X4),
    ("resnet32x4", 32, _X4),
]:
    register_model(_name)(_resnet(_depth, _widths))

__all__ = ["BasicBlock", "CifarResNet", "conv3x3"]
