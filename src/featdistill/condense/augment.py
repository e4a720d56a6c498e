"""Differentiable Siamese Augmentation (DSA) and the FYI flip pairing.

DSA (Zhao & Bilen 2021, code in DatasetCondensation ``utils.py``) applies one randomly chosen
differentiable op per call ('S' mode). "Siamese" means the real and the synthetic batch get *the same*
parameters — in the reference code every image of the batch gets the parameters drawn for image 0 — so
matching compares like with like. The anchor draws its seed from the wall clock; here parameters come from
an explicit generator and are a value (:class:`DSAParams`) that can be applied to any number of batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DSA", "DSAParams", "default_strategy", "flip_pairs"]

FULL_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DIGIT_STRATEGY = "color_crop_cutout_scale_rotate"  # flipping a digit changes what it means
_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


def default_strategy(dataset_name: str | None, in_channels: int) -> str:
    """DSA's per-dataset default: no flip for digit datasets (MNIST, SVHN, sklearn digits).

    For an unknown dataset, grey (1-channel) images are treated as digit-like and get no flip — the safer
    failure (a missing augmentation costs a little accuracy; a wrong one changes labels).
    """
    from .real import is_digit_dataset

    if is_digit_dataset(dataset_name):
        return DIGIT_STRATEGY
    if dataset_name is None or dataset_name in ("tensors", "ImageDataset", "dataset"):
        return DIGIT_STRATEGY if in_channels == 1 else FULL_STRATEGY
    return FULL_STRATEGY


@dataclass
class DSAParams:
    """One draw of DSA parameters: the op and its per-image (or batch-wide, length 1) values."""

    op: str
    values: dict[str, Tensor]

    def size(self) -> int:
        """1 for batch-wide (Siamese) parameters, else the batch size they were drawn for."""
        return int(next(iter(self.values.values())).shape[0]) if self.values else 1


class DSA:
    """DSA with the reference magnitudes: brightness 1.0, saturation 2.0, contrast 0.5, crop pad 0.125,
    cutout 0.5, flip p 0.5, scale 1.2, rotate ±15°."""

    def __init__(
        self,
        strategy: str = FULL_STRATEGY,
        brightness: float = 1.0,
        saturation: float = 2.0,
        contrast: float = 0.5,
        crop_pad: float = 0.125,
        cutout: float = 0.5,
        flip_p: float = 0.5,
        scale: float = 1.2,
        rotate_deg: float = 15.0,
    ) -> None:
        ops = [op for op in strategy.split("_") if op]
        unknown = [op for op in ops if op not in _OPS]
        if unknown or not ops:
            raise ValueError(f"unknown DSA op(s) {unknown} in strategy {strategy!r}; valid ops: {_OPS}")
        self.ops = ops
        self.strategy = strategy
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast
        self.crop_pad, self.cutout, self.flip_p = crop_pad, cutout, flip_p
        self.scale, self.rotate_deg = scale, rotate_deg

    def __repr__(self) -> str:
        return f"DSA(strategy={self.strategy!r})"

    # -------------------------------------------------------------- sampling
    def sample(self, generator: torch.Generator, n: int = 1, image_size: tuple[int, int] = (32, 32)) -> DSAParams:
        """Draw one op and its parameters; ``n=1`` gives batch-wide (Siamese) parameters."""
        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=generator))]
        h, w = image_size
        g = generator
        v: dict[str, Tensor] = {}
        if op == "color":
            v["brightness"] = (torch.rand(n, generator=g) - 0.5) * self.brightness
            v["saturation"] = torch.rand(n, generator=g) * self.saturation
            v["contrast"] = torch.rand(n, generator=g) + self.contrast
        elif op == "crop":
            sx, sy = int(w * self.crop_pad + 0.5), int(h * self.crop_pad + 0.5)
            v["dx"] = torch.randint(-sx, sx + 1, (n,), generator=g).float()
            v["dy"] = torch.randint(-sy, sy + 1, (n,), generator=g).float()
        elif op == "cutout":
            ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
            v["cy"] = torch.randint(0, h + (1 - ch % 2), (n,), generator=g).float()
            v["cx"] = torch.randint(0, w + (1 - cw % 2), (n,), generator=g).float()
        elif op == "flip":
            v["flip"] = (torch.rand(n, generator=g) < self.flip_p).float()
        elif op == "scale":
            lo = 1.0 / self.scale
            v["sx"] = torch.rand(n, generator=g) * (self.scale - lo) + lo
            v["sy"] = torch.rand(n, generator=g) * (self.scale - lo) + lo
        elif op == "rotate":
            v["angle"] = (torch.rand(n, generator=g) - 0.5) * 2 * self.rotate_deg / 180 * math.pi
        return DSAParams(op, v)

    def __call__(self, x: Tensor, generator: torch.Generator, per_sample: bool = False) -> Tensor:
        """Augment one batch with fresh parameters: batch-wide by default, one draw per image if
        ``per_sample`` (the non-Siamese augmentation used when *training* on a synthetic set)."""
        params = self.sample(generator, x.shape[0] if per_sample else 1, (x.shape[2], x.shape[3]))
        return self.apply(x, params)

    # -------------------------------------------------------------- applying
    def apply(self, x: Tensor, params: DSAParams) -> Tensor:
        """Apply ``params`` to ``x`` (differentiably); length-1 parameters are shared by all images."""
        b, c, h, w = x.shape
        vals = {k: t.to(device=x.device, dtype=x.dtype) for k, t in params.values.items()}
        if params.size() not in (1, b):
            raise ValueError(f"DSA parameters drawn for {params.size()} images, batch has {b}")

        def col(t: Tensor) -> Tensor:
            return t.expand(b).view(b, 1, 1, 1)

        op = params.op
        if op == "color":
            x = x + col(vals["brightness"])
            m = x.mean(dim=1, keepdim=True)
            x = (x - m) * col(vals["saturation"]) + m
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - m) * col(vals["contrast"]) + m
        if op == "flip":
            f = col(vals["flip"])
            return f * x.flip(3) + (1 - f) * x
        if op == "cutout":
            ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
            rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
            cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
            y0 = vals["cy"].expand(b).view(b, 1, 1) - ch // 2
            x0 = vals["cx"].expand(b).view(b, 1, 1) - cw // 2
            inside = (rows >= y0) & (rows < y0 + ch) & (cols >= x0) & (cols < x0 + cw)
            return x * (~inside).to(x.dtype).unsqueeze(1)
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
        if op == "crop":
            # integer translation with zero fill; with align_corners=False pixel centres map onto pixel
            # centres, so bilinear sampling is an exact shift (DC does the same with padding + gather)
            theta[:, 0, 0] = 1.0
            theta[:, 1, 1] = 1.0
            theta[:, 0, 2] = vals["dx"].expand(b) * 2.0 / w
            theta[:, 1, 2] = vals["dy"].expand(b) * 2.0 / h
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if op == "scale":
            theta[:, 0, 0] = vals["sx"].expand(b)
            theta[:, 1, 1] = vals["sy"].expand(b)
        elif op == "rotate":
            a = vals["angle"].expand(b)
            theta[:, 0, 0] = torch.cos(a)
            theta[:, 0, 1] = torch.sin(-a)
            theta[:, 1, 0] = torch.sin(a)
            theta[:, 1, 1] = torch.cos(a)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def flip_pairs(x: Tensor) -> Tensor:
    """FYI's batch augmentation: every image followed by its exact horizontal flip (``2B`` images).

    Matching the pair jointly stops the optimiser from spending synthetic capacity on left/right
    symmetric content (Son et al., ECCV 2024).
    """
    return torch.cat([x, x.flip(3)], dim=0)
