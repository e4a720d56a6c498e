"""Wide ResNets (RepDistiller / mdistiller ``models/wrn.py``): pre-activation blocks, depth ``6n + 4``.

Parameter names equal the reference's (``conv1``, ``block{i}.layer.{j}.bn1`` …, ``convShortcut``, ``bn1``,
``fc``) so its checkpoints load; activations are separate non-in-place modules so hooks capture clean
tensors; the final pooling is adaptive (equal to the reference's ``avg_pool2d(·, 8)`` at 32×32).

Taps: stage outputs ``block1``–``block3`` (pre-activation, as the reference's ``feats``); the post-BN-ReLU
map at ``relu``; pooled embedding at ``flatten``; logits at ``fc``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from .registry import register_model


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv-BN-ReLU-(dropout)-conv plus shortcut.

    When the width changes, the shortcut is a 1×1 conv applied to the *activated* input, as in the reference.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        out = self.conv2(self.dropout(out))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` blocks; the ``layer`` attribute keeps the reference's parameter names."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for small images."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 with n ≥ 1 (10, 16, 22, 28, 40, …), got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(ch[3], num_classes)

        self.stage_channels: list[int] = ch
        self.stage_paths: list[str] = ["block1", "block2", "block3"]
        self.embedding_path: str = "flatten"
        self.classifier_path: str = "fc"

        for m in self.modules():  # reference initialisation
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.flatten(self.avgpool(x)))


def _wrn(depth: int, widen: int):
    def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, drop_rate: float = 0.0) -> nn.Module:
        del image_size  # adaptive pooling
        return WideResNet(depth, widen, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)

    build.__doc__ = f"WRN-{depth}-{widen} (``drop_rate``: dropout between the two convs of a block)."
    return build


for _name, _depth, _widen in [
    ("wrn_16_1", 16, 1),
    ("wrn_16_2", 16, 2),
    ("wrn_40_1", 40, 1),
    ("wrn_40_2", 40, 2),
]:
    register_model(_name)(_wrn(_depth, _widen))
