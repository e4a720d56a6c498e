"""VGG with BatchNorm for small images, CRD style (RepDistiller / mdistiller ``models/vgg.py``, ``*_bn``).

Five conv blocks, max-pooling between them, global average pooling and one ``Linear(512, num_classes)``.
Every zoo VGG has BatchNorm (CRD's ``vgg8``/``vgg13`` are ``vgg8_bn``/``vgg13_bn``).

Differences from the reference, none of which changes parameters or ``state_dict`` keys:
- each ``block{i}`` ends with its own ReLU module (the reference drops it and calls ``F.relu`` in
  ``forward``), so the stage output *is* the block output; the pre-ReLU map is the block's last BatchNorm
  (``block{i}.{k}``);
- the reference applies ``pool3`` only when the input is 64 px high; here that decision is made at
  construction from ``image_size``: ``pool3`` pools only if the map entering it is ≥ 8 px (true at 64, false
  at 32, so both reference cases are kept), and any pool that would shrink a map below 1 px becomes
  ``nn.Identity`` (8×8 digits).

Taps: ``block0``–``block4`` (post-ReLU stage outputs), ``flatten`` (pooled 512-d embedding), ``classifier``.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from .registry import register_model

CFGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _make_block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [
            nn.Conv2d(in_channels, w, kernel_size=3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=False),
        ]
        in_channels = w
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """CRD-style VGG-BN; ``cfg`` lists the conv widths of the five blocks."""

    def __init__(self, cfg: list[list[int]], num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        self.block0 = _make_block(cfg[0], in_channels)
        self.block1 = _make_block(cfg[1], cfg[0][-1])
        self.block2 = _make_block(cfg[2], cfg[1][-1])
        self.block3 = _make_block(cfg[3], cfg[2][-1])
        self.block4 = _make_block(cfg[4], cfg[3][-1])

        size = image_size
        pools: list[nn.Module] = []
        for i in range(4):
            # pool3 only for large inputs (reference: only at 64 px); never pool a 1-px map.
            wanted = size >= 8 if i == 3 else size >= 2
            pools.append(nn.MaxPool2d(kernel_size=2, stride=2) if wanted else nn.Identity())
            size = size // 2 if wanted else size
        self.pool0, self.pool1, self.pool2, self.pool3 = pools
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)

        self.stage_channels: list[int] = [c[-1] for c in cfg]
        self.stage_paths: list[str] = [f"block{i}" for i in range(5)]
        self.embedding_path: str = "flatten"
        self.classifier_path: str = "classifier"
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """Reference initialisation (He-normal convs, N(0, 0.01) classifier)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.pool3(self.block3(x))
        x = self.pool4(self.block4(x))
        return self.classifier(self.flatten(x))


def _vgg(name: str):
    def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return VGG(CFGS[name], num_classes=num_classes, in_channels=in_channels, image_size=image_size)

    build.__doc__ = f"{name} with BatchNorm (CRD ``{name}_bn``), block widths {CFGS[name]}."
    return build


# Only the two CRD-zoo members are registered; the other depths stay reachable as ``VGG(CFGS["vgg16"])``.
for _name in ("vgg8", "vgg13"):
    register_model(_name)(_vgg(_name))
