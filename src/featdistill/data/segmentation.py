"""Segmentation data: a procedural "shapes" scene set (no files) and a reader/fixture writer for the VOC layout.

Why a procedural set: segmentation distillation needs a dense task that trains in seconds on a CPU and that a
model cannot solve trivially. In :func:`make_shapes_segmentation` every object's *class is its shape* (disc,
square, triangle, …) while its colour, size and position are random and independent of the class, and the
background is a noisy texture — so a net has to recognise shape from local context, the thing teacher features
help with. Every shape is left-right symmetric, so horizontal-flip augmentation never changes a pixel's class.

Why a VOC reader of our own: torchvision cannot be installed beside the CPU torch wheel and downloads at run
time. The layout read here is the PASCAL VOC 2012 release's (``JPEGImages/<id>.jpg``, class-index PNGs in
``SegmentationClass/<id>.png`` with 255 = "void" on object borders, split lists in
``ImageSets/Segmentation/<split>.txt``); :func:`write_voc_segmentation` writes exactly that layout so tests and
users can build fixtures without a download.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featdistill.data._seeding import generator_for
from featdistill.data.arrays import ArrayDataset
from featdistill.data.base import channel_stats
from featdistill.data.formats import DataFormatError

__all__ = [
    "IGNORE_INDEX",
    "SHAPE_NAMES",
    "VOC_CLASSES",
    "load_shapes_segmentation",
    "load_voc_segmentation",
    "make_shapes_segmentation",
    "voc_palette",
    "write_voc_segmentation",
]

PathLike = str | os.PathLike

IGNORE_INDEX = 255
"""The "not scored" label (VOC's void): object borders in VOC masks, and the padding of augmented masks."""

#: Object shapes in class order (class ``k`` is ``SHAPE_NAMES[k - 1]``; class 0 is the background).
SHAPE_NAMES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross", "diamond", "hbar", "vbar")

VOC_CLASSES: list[str] = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

_MAX_OBJECTS = 3


# ------------------------------------------------------------------------------------------------------
# procedural shapes
# ------------------------------------------------------------------------------------------------------


def _inside(kind: int, dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Which pixels lie inside shape ``kind`` of radius ``r`` (``dx, dy``: offsets of pixel centres).

    Proportions are chosen so that the shapes have comparable areas (a disc is not just "the big one") and
    differ in outline, not only in size: the square's half-side is 0.8 r, bars are 2 r × 0.7 r.
    """
    ax, ay = dx.abs(), dy.abs()
    name = SHAPE_NAMES[kind]
    if name == "disc":
        return dx * dx + dy * dy <= r * r
    if name == "square":
        return torch.maximum(ax, ay) <= 0.8 * r
    if name == "triangle":  # apex up at -r, base at +0.8 r with half-width r
        t = (dy + r) / (1.8 * r)
        return (t >= 0) & (t <= 1) & (ax <= t * r)
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if name == "cross":
        return ((ax <= 0.3 * r) & (ay <= r)) | ((ay <= 0.3 * r) & (ax <= r))
    if name == "diamond":
        return ax + ay <= r
    if name == "hbar":
        return (ax <= r) & (ay <= 0.35 * r)
    return (ay <= r) & (ax <= 0.35 * r)  # vbar


def make_shapes_segmentation(
    n: int,
    size: int = 32,
    num_classes: int = 4,
    channels: int = 3,
    seed: int = 0,
    stream: int = 0,
    noise: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """``n`` procedural scenes: ``(images uint8 (n, C, S, S), masks long (n, S, S))``.

    Each image has a textured background (class 0: a random base colour, a faint random plane wave and Gaussian
    pixel noise of std ``noise``) and 1–3 objects drawn in order (later ones on top). An object's class is its
    shape (``k`` = ``SHAPE_NAMES[k - 1]``: 1 disc, 2 square, 3 triangle, then ring, cross, diamond, horizontal
    bar, vertical bar, so ``num_classes`` is 2–9). Its radius (14–28 % of ``size``), centre and colour are
    random and independent of the class; the colour differs from the background by at least 0.3 in every
    channel, so the object is visible but its colour says nothing about its class.

    Deterministic from ``(seed, stream, size, num_classes, channels)`` (train = stream 0, test = stream 1);
    ``noise`` only scales the last draw, so it never moves the objects.
    """
    if n < 0 or size < 8 or channels < 1 or not 2 <= num_classes <= len(SHAPE_NAMES) + 1:
        raise ValueError(
            f"make_shapes_segmentation: need n >= 0, size >= 8, channels >= 1 and 2 <= num_classes <= "
            f"{len(SHAPE_NAMES) + 1} (background + the shapes {list(SHAPE_NAMES)}); got n={n}, size={size}, "
            f"channels={channels}, num_classes={num_classes}"
        )
    if noise < 0:
        raise ValueError(f"make_shapes_segmentation: noise must be >= 0, got {noise}")
    g = generator_for("shapes-seg", seed, stream, size, num_classes, channels)
    k = _MAX_OBJECTS
    count = 1 + torch.randint(0, k, (n,), generator=g)
    kinds = torch.randint(0, num_classes - 1, (n, k), generator=g)
    radius = size * (0.14 + 0.14 * torch.rand(n, k, generator=g))
    # centres keep the whole shape in the frame (the pixel-centre grid runs from 0.5 to size - 0.5)
    centre = radius[..., None] + (size - 2 * radius[..., None]) * torch.rand(n, k, 2, generator=g)
    bg = torch.rand(n, channels, generator=g)
    offset = 0.3 + 0.4 * torch.rand(n, k, channels, generator=g)
    colour = torch.remainder(bg[:, None, :] + offset, 1.0)  # circular distance to bg in [0.3, 0.5]
    freq = 1.0 + 2.0 * torch.rand(n, generator=g)  # 1–3 cycles per image
    angle = 2 * math.pi * torch.rand(n, 2, generator=g)  # direction, phase
    texture_amp = 0.08 * torch.rand(n, channels, generator=g)
    pixel_noise = torch.randn(n, channels, size, size, generator=g)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = coords[None, :, None], coords[None, None, :]
    along = torch.cos(angle[:, 0, None, None]) * xx + torch.sin(angle[:, 0, None, None]) * yy  # wave direction
    wave = torch.cos(2 * math.pi * freq[:, None, None] * along / size + angle[:, 1, None, None])
    img = bg[:, :, None, None] + texture_amp[:, :, None, None] * wave[:, None]
    mask = torch.zeros(n, size, size, dtype=torch.long)
    for j in range(k):
        dx = xx - centre[:, j, 0, None, None]
        dy = yy - centre[:, j, 1, None, None]
        r = radius[:, j, None, None]
        inside = torch.zeros(n, size, size, dtype=torch.bool)
        for kind in range(num_classes - 1):
            sel = torch.nonzero(kinds[:, j] == kind)[:, 0]
            if sel.numel():
                inside[sel] = _inside(kind, dx[sel], dy[sel], r[sel])
        inside &= (count > j)[:, None, None]
        mask = torch.where(inside, kinds[:, j, None, None] + 1, mask)
        img = torch.where(inside[:, None], colour[:, j, :, None, None], img)
    img = img + noise * pixel_noise
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, mask


def load_shapes_segmentation(
    n: int = 2000,
    n_test: int | None = None,
    size: int = 32,
    num_classes: int = 4,
    channels: int = 3,
    seed: int = 0,
    noise: float = 0.1,
) -> tuple[ArrayDataset, ArrayDataset]:
    """``(train n, test n_test)`` shapes scenes (:func:`make_shapes_segmentation`) as mask datasets.

    ``n_test`` defaults to ``max(n // 4, 50)``. Train and test are independent streams of the same generator;
    both are normalised with the *train* statistics, as every loader here does. ``ignore_index`` is 255 (no
    generated pixel has it; augmentation pads masks with it).
    """
    n_test = max(n // 4, 50) if n_test is None else n_test
    classes = ["background", *SHAPE_NAMES[: num_classes - 1]]
    tr_x, tr_y = make_shapes_segmentation(n, size, num_classes, channels, seed, stream=0, noise=noise)
    te_x, te_y = make_shapes_segmentation(n_test, size, num_classes, channels, seed, stream=1, noise=noise)
    mean, std = channel_stats(tr_x)
    common: dict[str, Any] = dict(
        target_kind="mask", image_input=True, mean=mean, std=std, classes=classes, ignore_index=IGNORE_INDEX
    )
    return (
        ArrayDataset(tr_x, tr_y, name="shapes-seg-train", **common),
        ArrayDataset(te_x, te_y, name="shapes-seg-test", **common),
    )


# ------------------------------------------------------------------------------------------------------
# PASCAL VOC layout
# ------------------------------------------------------------------------------------------------------


def _pil(what: str) -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            f"{what} reads and writes JPEG/PNG files and needs Pillow: pip install Pillow "
            "(or pip install 'featdistill[data]')"
        ) from None
    return Image


def _resampling(image_mod: Any, name: str) -> Any:
    """``Image.Resampling.<name>`` (Pillow >= 9.1) or the old module constant."""
    return getattr(getattr(image_mod, "Resampling", image_mod), name)


def voc_palette() -> list[int]:
    """The 256-colour VOC palette (flat ``[r0, g0, b0, r1, …]``): index 255 is the void colour (224, 224, 192).

    The devkit's ``labelcolormap``: the bits of the class index are spread over the high bits of R, G and B.
    """
    pal: list[int] = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _as_array(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _image_hwc(img: Tensor | np.ndarray, what: str) -> np.ndarray:
    """One ``(C, H, W)`` image (C = 1 or 3, uint8 or float in [0, 1]) as ``(H, W, 3)`` uint8 for Pillow."""
    arr = _as_array(img)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"{what}: an image must be (C, H, W) with C = 1 or 3, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{what}: images must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


def write_voc_segmentation(
    root: PathLike,
    images: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
    masks: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
    names: Sequence[str] | None = None,
    splits: Mapping[str, Sequence[str]] | None = None,
    palette: bool = True,
) -> Path:
    """Write images and class-index masks in the VOC layout :func:`load_voc_segmentation` reads; returns ``root``.

    * ``images``: ``(N, 3, H, W)`` (or ``(N, 1, H, W)``, stored as grey RGB) uint8 / float in [0, 1], or a list
      of ``(C, H, W)`` arrays of varying sizes (VOC images differ in size) → ``root/JPEGImages/<name>.jpg``
      (Pillow, quality 95; JPEG is lossy, as in the real release).
    * ``masks``: ``(N, H, W)`` or a list of ``(H, W)`` integer arrays, values 0–255 (255 = void) →
      ``root/SegmentationClass/<name>.png``; ``palette=True`` stores a "P" PNG with the VOC palette (what the
      release ships: the pixel values *are* the class indices), ``False`` a greyscale "L" PNG. Labels are not
      checked against a class count here, so a fixture can hold a deliberately bad mask.
    * ``names``: file stems (default ``img_00000`` …); ``splits``: ``{split: [names]}`` →
      ``root/ImageSets/Segmentation/<split>.txt``; default: the last ``max(1, N // 5)`` names are ``val`` and
      the rest ``train`` (all ``train`` when N = 1).
    """
    image_mod = _pil("write_voc_segmentation")
    imgs = list(images) if not isinstance(images, (Tensor, np.ndarray)) else [images[i] for i in range(len(images))]
    msks = list(masks) if not isinstance(masks, (Tensor, np.ndarray)) else [masks[i] for i in range(len(masks))]
    if len(imgs) != len(msks):
        raise ValueError(f"write_voc_segmentation: {len(imgs)} images but {len(msks)} masks; they must pair up")
    n = len(imgs)
    stems = [f"img_{i:05d}" for i in range(n)] if names is None else [str(s) for s in names]
    if len(stems) != n or len(set(stems)) != n:
        raise ValueError(
            f"write_voc_segmentation: need {n} distinct names, got {len(stems)} ({len(set(stems))} distinct)"
        )
    if splits is None:
        n_val = max(1, n // 5) if n >= 2 else 0
        splits = {"train": stems[: n - n_val], "val": stems[n - n_val :]}
    known = set(stems)
    unknown = {s: missing for s, v in splits.items() if (missing := [x for x in v if x not in known])}
    if unknown:
        raise ValueError(f"write_voc_segmentation: split(s) name images that are not written: {unknown}")
    r = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (r / sub).mkdir(parents=True, exist_ok=True)
    pal = voc_palette()
    for stem, img, msk in zip(stems, imgs, msks):
        hwc = _image_hwc(img, f"write_voc_segmentation({stem})")
        m = _as_array(msk)
        if m.ndim != 2 or m.shape != hwc.shape[:2]:
            raise ValueError(
                f"write_voc_segmentation({stem}): the mask must be (H, W) = {hwc.shape[:2]} like its image, "
                f"got shape {m.shape}"
            )
        if m.size and (m.min() < 0 or m.max() > 255 or (np.issubdtype(m.dtype, np.floating) and (m % 1).any())):
            raise ValueError(f"write_voc_segmentation({stem}): mask values must be integers 0–255 (255 = void)")
        image_mod.fromarray(hwc).save(r / "JPEGImages" / f"{stem}.jpg", format="JPEG", quality=95)
        png = image_mod.fromarray(np.ascontiguousarray(m.astype(np.uint8)))  # "L": the values are the indices
        if palette:
            png.putpalette(pal)  # "L" → "P" with the same indices, coloured like the VOC release
        png.save(r / "SegmentationClass" / f"{stem}.png", format="PNG")
    for split, members in splits.items():
        text = "".join(f"{s}\n" for s in members)
        (r / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(text, encoding="utf-8")
    return r


_VOC_NESTINGS = (".", "VOCdevkit/VOC2012", "VOC2012")
_VOC_HOW = (
    "Extract the PASCAL VOC 2012 trainval archive (VOCtrainval_11-May-2012.tar) so that {root} contains "
    "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/ (directly, or under VOCdevkit/VOC2012/ or "
    "VOC2012/); or write a fixture with featdistill.data.segmentation.write_voc_segmentation."
)


def _voc_base(root: Path) -> Path:
    """The folder of ``root`` (or its VOCdevkit/VOC2012, VOC2012 nesting) that holds the VOC sub-folders."""
    if not root.is_dir():
        raise FileNotFoundError(f"VOC segmentation root not found: {root}. {_VOC_HOW.format(root=root)}")
    for nest in _VOC_NESTINGS:
        d = root / nest if nest != "." else root
        if (d / "JPEGImages").is_dir() and (d / "SegmentationClass").is_dir():
            return d
    tried = ", ".join(str((root / nest if nest != "." else root) / "JPEGImages") for nest in _VOC_NESTINGS)
    raise FileNotFoundError(
        f"no VOC layout under {root}: none of {tried} (with a SegmentationClass/ beside it) exists. "
        + _VOC_HOW.format(root=root)
    )


def _read_split(base: Path, split: str) -> list[str]:
    path = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"VOC split file not found: {path} (available splits: {have or 'none'}). Put the list of image ids "
            f"of split {split!r}, one per line, there, or choose an available split (train_split=/test_split=)."
        )
    # the first token of each line: Segmentation lists hold bare ids; Main-style lists add a flag column
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise DataFormatError(f"{path}: the split list is empty; it must name one image id per line")
    return ids


def _read_pair(
    image_mod: Any, base: Path, stem: str, image_size: int, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """One resized ``(image (3, S, S) uint8, mask (S, S) uint8)`` pair, validated against its files."""
    img_path = base / "JPEGImages" / f"{stem}.jpg"
    mask_path = base / "SegmentationClass" / f"{stem}.png"
    for p, what in ((img_path, "image"), (mask_path, "mask")):
        if not p.is_file():
            raise FileNotFoundError(
                f"VOC {what} file not found: {p} (id {stem!r} is listed in ImageSets/Segmentation). Put the "
                f"{'JPEG image' if what == 'image' else 'class-index PNG mask'} there or remove the id from the "
                "split list."
            )
    with image_mod.open(img_path) as im:
        im.load()
        img = im.convert("RGB")
    with image_mod.open(mask_path) as mk:
        mk.load()
        if mk.mode not in ("P", "L"):
            raise DataFormatError(
                f"{mask_path}: mask mode {mk.mode!r}; a VOC mask must store class indices as a palette ('P') or "
                "greyscale ('L') PNG, as SegmentationClass/*.png in the VOC release do. A colour rendering of the "
                "labels cannot be read as indices: convert it to an index PNG first."
            )
        mask = mk.copy()
    if mask.size != img.size:
        raise DataFormatError(
            f"{mask_path}: mask is {mask.size[0]}×{mask.size[1]} (W×H) but its image {img_path} is "
            f"{img.size[0]}×{img.size[1]}; every mask must have exactly its image's size"
        )
    values = np.unique(np.asarray(mask))
    bad = values[(values >= len(classes)) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DataFormatError(
            f"{mask_path}: label value(s) {bad.tolist()} are not valid for {len(classes)} classes "
            f"(valid: 0–{len(classes) - 1} and {IGNORE_INDEX} = void). Pass classes=[...] listing every class of "
            "the dataset, or fix the mask."
        )
    size = (image_size, image_size)
    img = img.resize(size, _resampling(image_mod, "BILINEAR"))
    # NEAREST: class ids (and 255) must never be blended into other ids
    mask = mask.resize(size, _resampling(image_mod, "NEAREST"))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), np.asarray(mask, dtype=np.uint8)


def _read_voc_split(
    image_mod: Any, base: Path, split: str, image_size: int, classes: Sequence[str], max_samples: int | None
) -> tuple[Tensor, Tensor, list[str]]:
    ids = _read_split(base, split)
    if max_samples is not None:
        ids = ids[:max_samples]
    pairs = [_read_pair(image_mod, base, stem, image_size, classes) for stem in ids]
    images = torch.from_numpy(np.ascontiguousarray(np.stack([p[0] for p in pairs])))  # stack keeps HWC strides
    masks = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
    return images, masks, ids


def load_voc_segmentation(
    root: PathLike,
    image_size: int = 64,
    train_split: str = "train",
    test_split: str = "val",
    classes: Sequence[str] | None = None,
    max_samples: int | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """``(train, test)`` mask datasets from a VOC-layout folder (``root``, ``root/VOCdevkit/VOC2012`` or
    ``root/VOC2012``).

    Every image is resized (bilinear) and every mask (nearest, so labels and the 255 void stay exact) to
    ``image_size × image_size``. Why resize, and not keep VOC's varying sizes: datasets here are fixed-size
    in-memory tensors that batch (and augment) as one array, and the teacher store addresses views by index —
    ragged images would need per-sample crops and padding everywhere. The aspect ratio is not kept (VOC
    images are about 4:3); choose ``image_size`` with that in mind.

    ``classes`` defaults to the 21 VOC names (background first); mask values must be below ``len(classes)``
    or 255. ``max_samples`` keeps the first ids of each split list (quick runs). The test split is normalised
    with the train split's statistics. Samples keep the split file's order; ``info["ids"]`` lists them.
    """
    if int(image_size) != image_size or image_size < 4:
        raise ValueError(f"load_voc_segmentation: image_size must be an integer >= 4, got {image_size!r}")
    if max_samples is not None and (int(max_samples) != max_samples or max_samples < 1):
        raise ValueError(f"load_voc_segmentation: max_samples must be a positive integer or None, got {max_samples!r}")
    image_mod = _pil("load_voc_segmentation")
    names = list(VOC_CLASSES) if classes is None else [str(c) for c in classes]
    if not 2 <= len(names) <= IGNORE_INDEX:
        raise ValueError(f"load_voc_segmentation: need 2–{IGNORE_INDEX} class names, got {len(names)}")
    base = _voc_base(Path(root))
    tr_x, tr_y, tr_ids = _read_voc_split(image_mod, base, train_split, int(image_size), names, max_samples)
    te_x, te_y, te_ids = _read_voc_split(image_mod, base, test_split, int(image_size), names, max_samples)
    mean, std = channel_stats(tr_x)
    common: dict[str, Any] = dict(
        target_kind="mask", image_input=True, mean=mean, std=std, classes=names, ignore_index=IGNORE_INDEX
    )
    return (
        ArrayDataset(tr_x, tr_y, name=f"voc-seg-{train_split}", info={"split": train_split, "ids": tr_ids}, **common),
        ArrayDataset(te_x, te_y, name=f"voc-seg-{test_split}", info={"split": test_split, "ids": te_ids}, **common),
    )
