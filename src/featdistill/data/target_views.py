"""Replay a view's geometry on a dense target: a segmentation mask or a target image gets the same crop/flip.

Why a module of its own: :class:`~featdistill.data.views.Augmenter` draws view parameters as a pure function of
``(seed, sample_id, view_id)`` and applies them to the *input*. A task whose target is spatial must see the
target transformed by exactly the same parameters — a mask cropped differently from its image teaches the wrong
pixels, silently. The same ``params`` dict is applied here, with the rules a target needs:

* **masks** (``kind="mask"``, integer ``(B, H, W)``): nearest-neighbour resampling for resized crops (class ids
  are never interpolated), padding filled with ``fill`` (the ignore index, 255 for VOC) so padded pixels are
  not scored;
* **images** (``kind="image"``, float ``(B, C, H', W')``): bilinear as the input; the target may be an integer
  multiple of the input size (super-resolution: a ×2 target gets the crop offsets and padding ×2).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.data.views import Augmenter

__all__ = ["apply_to_target", "TargetKind"]

TargetKind = Literal["mask", "image"]


def _scale(target_hw: tuple[int, int], input_hw: tuple[int, int]) -> int:
    (th, tw), (h, w) = target_hw, input_hw
    if th % h or tw % w or th // h != tw // w:
        raise ValueError(
            f"a spatial target of size {th}×{tw} must be an integer multiple of the input size {h}×{w} "
            "(same factor for height and width) to follow the input's crop"
        )
    return th // h


def _resample(x: Tensor, box: Tensor, mode: str) -> Tensor:
    """Resize each ``(top, left, height, width)`` box of ``x`` (B, C, H, W) to the full size, like the input."""
    b, _, h, w = x.shape
    boxf = box.to(torch.float64)
    top, left, bh, bw = boxf[:, 0:1], boxf[:, 1:2], boxf[:, 2:3], boxf[:, 3:4]
    iy = torch.arange(h, dtype=torch.float64)[None, :] + 0.5
    ix = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    gy = (2.0 * (top + iy * (bh / h) - 0.5) + 1.0) / h - 1.0
    gx = (2.0 * (left + ix * (bw / w) - 0.5) + 1.0) / w - 1.0
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1)
    return F.grid_sample(x, grid.to(x.device, x.dtype), mode=mode, padding_mode="border", align_corners=False)


def apply_to_target(
    augmenter: Augmenter,
    target: Tensor,
    params: dict[str, Tensor],
    input_hw: tuple[int, int],
    kind: TargetKind,
    fill: float = 0.0,
) -> Tensor:
    """Apply the view ``params`` (from :meth:`Augmenter.params` for the input) to a batch of dense targets.

    ``target`` is ``(B, H', W')`` (mask) or ``(B, C, H', W')`` (image) with ``H' = s·H`` for an integer ``s``.
    Identity views are returned unchanged. The result has the target's dtype and shape.
    """
    cfg = augmenter.config
    if cfg.is_identity or bool(params["identity"].all()):
        return target
    squeeze = target.ndim == 3
    y = target[:, None] if squeeze else target
    if y.ndim != 4:
        raise ValueError(f"a dense target must be (B, H, W) or (B, C, H, W), got shape {tuple(target.shape)}")
    dtype = y.dtype
    y = y.to(torch.float32)
    b, c, th, tw = y.shape
    s = _scale((th, tw), input_hw)
    dev = y.device
    if cfg.resized_crop is not None:
        box = params["rc_box"].cpu() * s
        full = torch.tensor([0, 0, th, tw])
        todo = torch.nonzero(~((box == full).all(dim=1) | params["identity"].cpu()))[:, 0]
        if todo.numel():
            y = y.clone()
            mode = "nearest" if kind == "mask" else "bilinear"
            y[todo.to(dev)] = _resample(y[todo.to(dev)], box[todo], mode)
    p = cfg.pad_crop * s
    if p > 0 or cfg.flip:
        yp = F.pad(y, (p, p, p, p), value=float(fill)) if p > 0 else y
        wp = tw + 2 * p
        ar_h, ar_w = torch.arange(th, device=dev), torch.arange(tw, device=dev)
        flip = params["flip"].to(dev)
        rows = (params["crop_y"].to(dev) * s)[:, None] + ar_h
        cols = (params["crop_x"].to(dev) * s)[:, None] + torch.where(flip[:, None], tw - 1 - ar_w, ar_w)
        idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, th * tw).expand(b, c, th * tw)
        y = yp.reshape(b, c, -1).gather(2, idx).reshape(b, c, th, tw)
    if not dtype.is_floating_point:
        y = y.round()
    y = y.to(dtype)
    return y[:, 0] if squeeze else y
