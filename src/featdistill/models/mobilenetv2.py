"""MobileNetV2 for small images, CRD ``mobile_half`` (RepDistiller / mdistiller ``models/mobilenetv2.py``).

Width multiplier 0.5, expansion 6, stride-2 stem (so a 32×32 input ends at 1×1), ReLU (not ReLU6), and — as in
the reference — every inverted residual keeps its 1×1 expansion conv even when the expansion factor is 1.
The 1×1 head conv has 1280 channels whenever ``width_mult ≤ 1``.

Parameter names equal the reference's (``conv1``, ``blocks.{i}.{j}.conv.{k}``, ``conv2``, ``classifier.0``)
so its checkpoints load. The final pooling is adaptive (the reference's ``AvgPool2d(H, ceil_mode=True)``
equals it).

Taps: stage outputs ``blocks.1``, ``blocks.2``, ``blocks.4``, ``blocks.6`` (the reference's ``feats[1:]``),
pooled 1280-d embedding at ``flatten``, logits at ``classifier.0``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from .registry import register_model


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=False),
    )


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise (stride) → 1×1 linear projection; identity shortcut when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=False),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=False),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """CRD MobileNetV2; ``expansion`` is the ``T`` of ``mobilenetv2_T_w``, ``width_mult`` its ``W``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, expansion: int = 6, width_mult: float = 0.5):
        super().__init__()
        t = expansion
        setting = [  # t, c, n, s
            [1, 16, 1, 1],
            [t, 24, 2, 1],
            [t, 32, 3, 2],
            [t, 64, 4, 2],
            [t, 96, 3, 1],
            [t, 160, 3, 2],
            [t, 320, 1, 1],
        ]
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t_i, c, n, s in setting:
            out = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(channels, out, stride, t_i))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))

        self.stage_channels: list[int] = [int(c * width_mult) for c in (32, 24, 32, 96, 320)]
        self.stage_paths: list[str] = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
        self.embedding_path: str = "flatten"
        self.classifier_path: str = "classifier.0"

        for m in self.modules():  # reference initialisation
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        x = self.flatten(self.avgpool(self.conv2(x)))
        return self.classifier(x)


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    expansion: int = 6,
    width_mult: float = 0.5,
) -> nn.Module:
    """CRD ``mobile_half`` by default (width 0.5, expansion 6); any input size (adaptive pooling)."""
    del image_size
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, expansion=expansion, width_mult=width_mult)
