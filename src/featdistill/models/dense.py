"""Small zoo models for dense tasks: ``segnet`` (U-Net-lite segmentation) and ``srnet`` (ESPCN super-resolution).

Why these two: dense distillation needs a teacher/student pair that differs only in width, trains in seconds on a
CPU and exposes multi-scale feature maps at stable module paths. Both follow the zoo contract
(``fn(num_classes, in_channels, image_size, **kwargs)``; ``stage_paths``, ``embedding_path``,
``classifier_path``), but their outputs are maps, not ``(B, num_classes)`` logits: ``segnet`` gives per-pixel
logits ``(B, num_classes, H, W)`` and ``srnet`` an image ``(B, C, s·H, s·W)``. ``classifier_path`` names the
final conv (there is no linear classifier) and ``embedding_path`` the deepest feature map (there is no pooled
vector); :attr:`task` says which task a model is built for.

``segnet`` (``width`` w, ``depth`` D): ``stem`` (two conv-BN-ReLU at full resolution, w channels), then
``stage1`` … ``stageD`` (a stride-2 conv-BN-ReLU and a conv-BN-ReLU; w·2^i channels at 1/2^i resolution),
``bottleneck`` (two conv-BN-ReLU at the deepest resolution), then ``dec{D-1}`` … ``dec0`` (bilinear upsample
to the skip's size, concatenate the skip — ``stage{i}`` or ``stem`` — and two conv-BN-ReLU), and ``head``, a 1×1
conv to ``num_classes`` at full resolution. Upsampling to the skip's *size* (not a fixed ×2) lets any input
size work (28 → 14 → 7 → 4 and back).

``srnet`` (ESPCN, Shi et al. 2016): ``body.0`` (5×5 conv + ReLU), ``body.1`` … (3×3 conv + ReLU), ``head`` (3×3
conv to C·s² channels) and ``shuffle`` (``nn.PixelShuffle(s)``), plus a bilinear ×s upsample of the input, so the
net only learns the residual detail.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model

__all__ = ["SegNet", "SRNet", "segnet", "srnet"]


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    """conv 3×3 (no bias: BN follows) → BN → ReLU (not in place: forward hooks keep the tensors they capture)."""
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class _UpBlock(nn.Module):
    """Upsample ``x`` to the skip's size, concatenate the skip, two conv-BN-ReLU (one module, so one tap)."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(*_cbr(cin + cskip, cout), *_cbr(cout, cout))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class SegNet(nn.Module):
    """U-Net-lite encoder-decoder with skips; ``forward`` gives full-resolution logits ``(B, K, H, W)``."""

    task = "segmentation"

    def __init__(
        self, num_classes: int = 4, in_channels: int = 3, image_size: int = 32, width: int = 16, depth: int = 2
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"segnet: width and depth must be >= 1, got width={width}, depth={depth}")
        if image_size < 2**depth:
            raise ValueError(
                f"segnet: depth={depth} halves a {image_size}×{image_size} input {depth} times, below 1 px; "
                f"use depth <= {max(1, image_size.bit_length() - 1)} or a larger image_size"
            )
        chans = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.stem = nn.Sequential(*_cbr(in_channels, chans[0]), *_cbr(chans[0], chans[0]))
        for i in range(1, depth + 1):
            self.add_module(f"stage{i}", nn.Sequential(*_cbr(chans[i - 1], chans[i], 2), *_cbr(chans[i], chans[i])))
        self.bottleneck = nn.Sequential(*_cbr(chans[depth], chans[depth]), *_cbr(chans[depth], chans[depth]))
        for i in reversed(range(depth)):
            self.add_module(f"dec{i}", _UpBlock(chans[i + 1], chans[i], chans[i]))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

        enc = [f"stage{i}" for i in range(1, depth + 1)]
        self.stage_paths: list[str] = enc + [f"dec{i}" for i in reversed(range(depth))]
        self.embedding_path: str = "bottleneck"
        self.classifier_path: str = "head"

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.stem(x)]
        for i in range(1, self.depth + 1):
            skips.append(self.get_submodule(f"stage{i}")(skips[-1]))
        y = self.bottleneck(skips.pop())
        for i in reversed(range(self.depth)):
            y = self.get_submodule(f"dec{i}")(y, skips[i])
        return self.head(y)


def _per_channel(value: float | Sequence[float], c: int, what: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise ValueError(f"srnet: {what} needs 1 or in_channels={c} values, got {t.numel()}")
    return t.clone().reshape(1, c, 1, 1)


class SRNet(nn.Module):
    """ESPCN with a bilinear input skip; ``forward`` maps ``(B, C, H, W)`` to ``(B, C, s·H, s·W)`` in [0, 1] space.

    ``mean``/``std`` are the dataset's input statistics (buffers, so they move with the model and are saved in
    its ``state_dict``). The loader hands the net *normalised* inputs while the target image is in [0, 1] pixel
    space, so the skip path first undoes the normalisation (``x · std + mean``); without it the residual body
    would have to learn the de-normalisation too. The defaults (0, 1) are right for un-normalised inputs.
    """

    task = "image-to-image"

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        depth: int = 3,
        scale: int = 2,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"srnet: width and depth must be >= 1, got width={width}, depth={depth}")
        if isinstance(scale, bool) or int(scale) != scale or scale < 1:
            raise ValueError(f"srnet: scale must be a positive integer (the upscaling factor), got {scale!r}")
        self.scale = int(scale)
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, width, 5, padding=2), nn.ReLU())]
        layers += [nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()) for _ in range(depth - 1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, in_channels * self.scale**2, 3, padding=1)
        # start near the bilinear baseline rather than at random residual noise: faster, steadier first steps
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
        self.shuffle = nn.PixelShuffle(self.scale)
        std_t = _per_channel(std, in_channels, "std")
        if bool((std_t <= 0).any()):
            raise ValueError(f"srnet: std must be positive, got {std!r}")
        self.register_buffer("mean", _per_channel(mean, in_channels, "mean"))
        self.register_buffer("std", std_t)

        self.stage_paths: list[str] = [f"body.{i}" for i in range(depth)]
        self.embedding_path: str = f"body.{depth - 1}"
        self.classifier_path: str = "head"

    def forward(self, x: Tensor) -> Tensor:
        pixels = x * self.std + self.mean
        base = F.interpolate(pixels, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return base + self.shuffle(self.head(self.body(x)))


@register_model("segnet")
def segnet(
    num_classes: int = 4, in_channels: int = 3, image_size: int = 32, width: int = 16, depth: int = 2
) -> nn.Module:
    """U-Net-lite segmentation net (e.g. ``width=32`` teacher, ``width=8`` student); logits ``(B, K, H, W)``."""
    return SegNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width, depth=depth)


@register_model("srnet")
def srnet(
    num_classes: int = 1,
    in_channels: int = 1,
    image_size: int = 14,
    width: int = 32,
    depth: int = 3,
    scale: int = 2,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
) -> nn.Module:
    """ESPCN ×``scale`` super-resolution net; output ``(B, in_channels, scale·H, scale·W)``.

    ``num_classes`` and ``image_size`` are accepted for the zoo signature and ignored: the output has the
    input's channel count, and the net is fully convolutional (any input size). Pass the dataset's ``mean`` /
    ``std`` so the input skip is de-normalised back to [0, 1] (see :class:`SRNet`).
    """
    del num_classes, image_size
    return SRNet(in_channels=in_channels, width=width, depth=depth, scale=scale, mean=mean, std=std)
