"""Replayable augmentation: the view ``(sample_id, view_id)`` always has the same pixels.

Why: a teacher store (``featdistill.cache``) saves the teacher's outputs for augmented views and a
``CachedTeacher`` later serves them instead of running the teacher. That is only correct if the student sees
*exactly* the view the teacher saw. torchdistill-style caches keyed by sample index alone are wrong under
random augmentation; FKD stores the crop with the soft label. Here every random number of a view is a pure
function of ``(seed, sample_id, view_id)`` (a counter-based generator keyed by that triple) — nothing depends
on batch composition, batch order, the global RNG, the process, the device or the torch version — so any view
can be re-rendered later
(:func:`featdistill.data.loaders.render_views`) or described by its parameters (:meth:`Augmenter.params`).

Operations, applied in this fixed order when enabled: random resized crop (bilinear, output size = input
size) → random crop with zero padding (same size) → horizontal flip. ``view_id < 0`` is the identity view
(evaluation, teacher probes). Normalisation is done by the loader after augmentation, so zero padding is black
in pixel space, as in the usual CIFAR recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.data._seeding import keyed_uniforms

__all__ = ["NO_AUGMENT", "ViewConfig", "Augmenter", "view_for_epoch", "ViewPolicy"]

NO_AUGMENT = -1
"""The ``view_id`` of the un-augmented view (any negative id means the same)."""

ViewPolicy = Literal["fresh", "cycle", "sample"]

# Layout of the per-view uniform draws. Fixed slots mean that enabling or disabling one operation never
# changes the random numbers of another, and that a stored view stays valid if new ops are appended later.
_SLOT_CROP_Y, _SLOT_CROP_X, _SLOT_FLIP = 0, 1, 2
_RRC_ATTEMPTS = 10
_SLOT_RRC = 3  # 10 attempts x (scale, log-ratio) = slots 3..22
_SLOT_RRC_Y, _SLOT_RRC_X = 23, 24
_NUM_SLOTS = 32


@dataclass(frozen=True)
class ViewConfig:
    """What augmentation a view applies (the *kind*; the random *values* come from the :class:`Augmenter`).

    Attributes:
        pad_crop: zero padding on each side for a random crop back to the input size (CIFAR recipe: 4).
        flip: random horizontal flip with probability 1/2 (do not use on digits: it changes their meaning).
        resized_crop: ``(min_scale, max_scale)`` area fraction for a random resized crop (ImageNet/FKD recipe,
            e.g. ``(0.08, 1.0)``); output size = input size; ``None`` disables it.
        ratio: aspect-ratio range of the resized crop.
        normalize: whether loaders normalise with the dataset's mean/std after augmentation.
    """

    pad_crop: int = 0
    flip: bool = False
    resized_crop: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    normalize: bool = True

    def __post_init__(self) -> None:
        if int(self.pad_crop) != self.pad_crop or self.pad_crop < 0:
            raise ValueError(f"ViewConfig.pad_crop must be a non-negative integer, got {self.pad_crop!r}")
        object.__setattr__(self, "pad_crop", int(self.pad_crop))
        if self.resized_crop is not None:
            lo, hi = (float(v) for v in self.resized_crop)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(
                    f"ViewConfig.resized_crop must be (min_scale, max_scale) with 0 < min <= max <= 1, "
                    f"got {self.resized_crop!r}"
                )
            object.__setattr__(self, "resized_crop", (lo, hi))
        r0, r1 = (float(v) for v in self.ratio)
        if not 0.0 < r0 <= r1:
            raise ValueError(f"ViewConfig.ratio must be (min, max) with 0 < min <= max, got {self.ratio!r}")
        object.__setattr__(self, "ratio", (r0, r1))
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "normalize", bool(self.normalize))

    @property
    def is_identity(self) -> bool:
        """True when no operation is enabled (every view equals the original image)."""
        return self.pad_crop == 0 and not self.flip and self.resized_crop is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resized_crop"] = list(self.resized_crop) if self.resized_crop is not None else None
        d["ratio"] = list(self.ratio)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViewConfig:
        d = dict(d)
        if d.get("resized_crop") is not None:
            d["resized_crop"] = tuple(d["resized_crop"])
        if "ratio" in d:
            d["ratio"] = tuple(d["ratio"])
        return cls(**d)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): the input of :meth:`config_hash`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        """SHA-256 (hex) of :meth:`to_json`; stable across processes, versions of Python and machines."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


def _view_uniforms(seed: int, sample_ids: Tensor, view_ids: Tensor) -> Tensor:
    """``(B, _NUM_SLOTS)`` float64 uniforms in [0, 1); row ``b`` depends only on ``(seed, id_b, view_b)``.

    Counter-based (:func:`~featdistill.data._seeding.keyed_uniforms`): vectorised and stable across torch
    releases, so stored views replay after upgrades. Identity views (``view_id < 0``) get zeros (unused).
    """
    u = keyed_uniforms("view", seed, [sample_ids, view_ids], _NUM_SLOTS)
    return torch.where((view_ids < 0)[:, None], torch.zeros_like(u), u)


def _randint(u: Tensor, n: Tensor | int) -> Tensor:
    """Map uniforms in [0, 1) to integers in [0, n) (``n >= 1``)."""
    n_t = torch.as_tensor(n, dtype=torch.float64)
    return torch.minimum(torch.floor(u * n_t), n_t - 1).clamp_min(0).to(torch.long)


class Augmenter:
    """Draws and applies view parameters; ``augmenter(images, sample_ids, view_ids)`` augments a batch.

    Args:
        config: which operations (:class:`ViewConfig`).
        seed: the augmentation seed; with the config it fully determines every view's pixels.

    Two instances with the same ``(config, seed)`` produce identical views; :meth:`fingerprint` identifies
    that pair for the teacher store.
    """

    def __init__(self, config: ViewConfig | None = None, seed: int = 0) -> None:
        self.config = config if config is not None else ViewConfig()
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"Augmenter({self.config!r}, seed={self.seed})"

    def fingerprint(self) -> str:
        """SHA-256 over the config JSON and the seed: equal fingerprints ⇒ equal views for every id pair."""
        return hashlib.sha256(f"{self.config.to_json()}|seed={self.seed}".encode()).hexdigest()

    # ------------------------------------------------------------------------------------------------------
    def params(
        self, sample_ids: Tensor | list[int], view_ids: Tensor | list[int] | int, image_shape: tuple[int, ...]
    ) -> dict[str, Tensor]:
        """The view parameters of each ``(sample_id, view_id)`` for images of ``image_shape``.

        ``image_shape`` is ``(C, H, W)`` or ``(B, C, H, W)`` (only ``H, W`` matter). ``view_ids`` may be a
        single int. Returns CPU tensors, all ``(B,)`` except ``rc_box``:

        * ``identity`` bool — view_id < 0 (no augmentation);
        * ``crop_y``, ``crop_x`` long — top-left of the crop in the padded image (``pad_crop`` = centre);
        * ``flip`` bool;
        * ``rc_box`` long ``(B, 4)`` — ``(top, left, height, width)`` of the resized crop (full image if off).

        Disabled operations get neutral values, so the dict always has the same keys.
        """
        sid = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1).cpu()
        vid = torch.as_tensor(view_ids, dtype=torch.long).reshape(-1).cpu()
        if vid.numel() == 1 and sid.numel() != 1:
            vid = vid.expand(sid.numel())
        if vid.numel() != sid.numel():
            raise ValueError(f"{sid.numel()} sample_ids but {vid.numel()} view_ids")
        h, w = int(image_shape[-2]), int(image_shape[-1])
        b = sid.numel()
        cfg = self.config
        identity = vid < 0
        u = _view_uniforms(self.seed, sid, vid)
        p = cfg.pad_crop

        neutral = torch.full((b,), p, dtype=torch.long)
        if p > 0:
            crop_y = torch.where(identity, neutral, _randint(u[:, _SLOT_CROP_Y], 2 * p + 1))
            crop_x = torch.where(identity, neutral, _randint(u[:, _SLOT_CROP_X], 2 * p + 1))
        else:
            crop_y, crop_x = neutral, neutral.clone()
        flip = (u[:, _SLOT_FLIP] < 0.5) & ~identity if cfg.flip else torch.zeros(b, dtype=torch.bool)

        full = torch.tensor([0, 0, h, w], dtype=torch.long).expand(b, 4).clone()
        if cfg.resized_crop is not None:
            box = self._resized_crop_boxes(u, h, w)
            rc_box = torch.where(identity[:, None], full, box)
        else:
            rc_box = full
        return {"identity": identity, "crop_y": crop_y, "crop_x": crop_x, "flip": flip, "rc_box": rc_box}

    def _resized_crop_boxes(self, u: Tensor, h: int, w: int) -> Tensor:
        """torchvision's ``RandomResizedCrop.get_params`` (10 attempts, then centre fallback), vectorised."""
        lo, hi = self.config.resized_crop  # type: ignore[misc]
        r0, r1 = self.config.ratio
        area = float(h * w)
        att = u[:, _SLOT_RRC : _SLOT_RRC + 2 * _RRC_ATTEMPTS].reshape(-1, _RRC_ATTEMPTS, 2)
        target_area = area * (lo + (hi - lo) * att[..., 0])
        aspect = torch.exp(math.log(r0) + (math.log(r1) - math.log(r0)) * att[..., 1])
        cw = torch.round(torch.sqrt(target_area * aspect)).to(torch.long)
        ch = torch.round(torch.sqrt(target_area / aspect)).to(torch.long)
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = torch.argmax(ok.to(torch.int8), dim=1)  # first valid attempt (0 if none; masked below)
        any_ok = ok.any(dim=1)
        rows = torch.arange(u.shape[0])
        bw, bh = cw[rows, first], ch[rows, first]
        # centre fallback with the aspect ratio clamped into range
        in_ratio = w / h
        if in_ratio < r0:
            fw, fh = w, int(round(w / r0))
        elif in_ratio > r1:
            fh, fw = h, int(round(h * r1))
        else:
            fw, fh = w, h
        bw = torch.where(any_ok, bw, torch.full_like(bw, fw))
        bh = torch.where(any_ok, bh, torch.full_like(bh, fh))
        top = torch.where(any_ok, _randint(u[:, _SLOT_RRC_Y], h - bh + 1), (h - bh) // 2)
        left = torch.where(any_ok, _randint(u[:, _SLOT_RRC_X], w - bw + 1), (w - bw) // 2)
        return torch.stack([top, left, bh, bw], dim=1)

    # ------------------------------------------------------------------------------------------------------
    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Apply ``params`` to float ``images (B, C, H, W)`` (pixel scale, before normalisation).

        Batched: one ``grid_sample`` for resized crops, one gather for crop+flip. Each output row depends only
        on its own image and parameters, so a view renders identically in any batch.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"apply expects float images (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        b, _, h, w = images.shape
        if params["identity"].numel() != b:
            raise ValueError(f"params are for {params['identity'].numel()} views but the batch has {b} images")
        cfg = self.config
        dev = images.device
        x = images
        if cfg.resized_crop is not None:
            box = params["rc_box"].cpu()
            # rows whose box is the whole image (or identity views) are kept bit-exact, not resampled
            todo = torch.nonzero(~((box == torch.tensor([0, 0, h, w])).all(dim=1) | params["identity"].cpu()))[:, 0]
            if todo.numel() == b:
                x = _resample_boxes(x, box)
            elif todo.numel() > 0:
                x = x.clone()
                x[todo.to(dev)] = _resample_boxes(x[todo.to(dev)], box[todo])
        p = cfg.pad_crop
        if p > 0 or cfg.flip:
            # crop + flip as one gather over the flattened padded image (3x faster than advanced indexing)
            xp = F.pad(x, (p, p, p, p)) if p > 0 else x
            wp = w + 2 * p
            ar_h = torch.arange(h, device=dev)
            ar_w = torch.arange(w, device=dev)
            flip = params["flip"].to(dev)
            rows = params["crop_y"].to(dev)[:, None] + ar_h  # (B, H)
            cols = params["crop_x"].to(dev)[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)
            c = x.shape[1]
            idx = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
            x = xp.reshape(b, c, -1).gather(2, idx).reshape(b, c, h, w)
        return x

    def __call__(self, images: Tensor, sample_ids: Tensor | list[int], view_ids: Tensor | list[int] | int) -> Tensor:
        """``apply(images, params(sample_ids, view_ids, images.shape))``."""
        return self.apply(images, self.params(sample_ids, view_ids, tuple(images.shape)))


def _resample_boxes(x: Tensor, box: Tensor) -> Tensor:
    """Bilinear resize of each ``(top, left, height, width)`` box of ``x`` to the full size.

    Sample points are those of ``F.interpolate(crop, size, mode="bilinear", align_corners=False)``; the grid
    is built elementwise (no batched matmul as in ``affine_grid``) so a row's values cannot depend on the
    batch. Where an upsampled border point falls half a pixel outside the box it reads the neighbouring pixel
    (``grid_sample``'s border rule) instead of clamping to the box edge — immaterial for augmentation.
    """
    b, _, h, w = x.shape
    boxf = box.to(torch.float64)
    top, left, bh, bw = boxf[:, 0:1], boxf[:, 1:2], boxf[:, 2:3], boxf[:, 3:4]
    iy = torch.arange(h, dtype=torch.float64)[None, :] + 0.5
    ix = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    src_y = top + iy * (bh / h) - 0.5  # pixel coordinates, (B, H)
    src_x = left + ix * (bw / w) - 0.5  # (B, W)
    gy = (2.0 * src_y + 1.0) / h - 1.0  # normalised, align_corners=False
    gx = (2.0 * src_x + 1.0) / w - 1.0
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1).to(
        device=x.device, dtype=x.dtype
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def view_for_epoch(
    policy: ViewPolicy | str,
    epoch: int,
    sample_ids: Tensor | list[int],
    num_views: int | None = None,
    seed: int = 0,
) -> Tensor:
    """Which ``view_id`` each sample gets in ``epoch``.

    * ``"fresh"`` — ``view_id = epoch``: a new view every epoch, as in ordinary on-the-fly augmentation.
      Unlimited views; a teacher store must then hold one view per epoch (or the teacher runs live).
    * ``"cycle"`` — ``epoch % num_views``: reuse ``num_views`` stored views in turn.
    * ``"sample"`` — uniform in ``[0, num_views)`` from a counter-based generator keyed by
      ``(seed, epoch, sample_id)``.

    Fixed-teacher risk: with a small ``num_views`` the student sees only ``V`` views per image for the whole
    run, so augmentation stops regularising (it can overfit those views and the teacher's outputs on them) —
    FKD/ReLabel report accuracy dropping as ``V`` shrinks. Prefer ``"fresh"`` with a live teacher, or a ``V``
    large relative to the number of epochs (or per-epoch stores) when caching.
    """
    sid = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1)
    if policy == "fresh":
        return torch.full_like(sid, int(epoch))
    if policy not in ("cycle", "sample"):
        raise ValueError(f"unknown view policy {policy!r}; use 'fresh', 'cycle' or 'sample'")
    if num_views is None or int(num_views) < 1:
        raise ValueError(f"view policy {policy!r} needs num_views >= 1, got {num_views!r}")
    v = int(num_views)
    if policy == "cycle":
        return torch.full_like(sid, int(epoch) % v)
    u = keyed_uniforms("view-policy", seed, [torch.full_like(sid, int(epoch)), sid], 1)[:, 0]
    return _randint(u, v)
