"""Replayable views, view policies and the batch-dict loaders.

The property everything downstream relies on: ``(sample_id, view_id)`` names one exact tensor, whatever the
batch, the order, the instance or the call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featdistill.data import (
    NO_AUGMENT,
    Augmenter,
    ImageDataset,
    ViewConfig,
    ViewLoader,
    eval_loader,
    render_views,
    view_for_epoch,
)
from featdistill.data._seeding import keyed_uniforms

FULL = ViewConfig(pad_crop=4, flip=True, resized_crop=(0.25, 1.0))


def _dataset(n: int = 40, c: int = 3, size: int = 16, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return ImageDataset(x, torch.arange(n) % 4, ["a", "b", "c", "d"], "toy")


def _float(ds: ImageDataset) -> torch.Tensor:
    return ds.images.float() / 255


# --- ViewConfig ---
def test_view_config_hash_is_stable_and_round_trips() -> None:
    # golden values: a changed hash silently invalidates every teacher store keyed by it
    assert ViewConfig().config_hash() == "645381f97083438485ea429a95dfdd4a754e112227f12ae2b7ca8072d7f0df27"
    cfg = ViewConfig(pad_crop=4, flip=True)
    assert cfg.config_hash() == "ea1c92ffdb39e747742d50681409bd8e57822f45cc360115a100d9fc37be3fd4"
    assert ViewConfig.from_dict(FULL.to_dict()) == FULL and len({FULL.config_hash(), cfg.config_hash()}) == 2
    listed = ViewConfig(resized_crop=[0.25, 1])  # type: ignore[arg-type]
    assert listed == ViewConfig(resized_crop=(0.25, 1.0))
    with pytest.raises(ValueError, match="pad_crop"):
        ViewConfig(pad_crop=-1)
    with pytest.raises(ValueError, match="resized_crop"):
        ViewConfig(resized_crop=(0.5, 1.5))


def test_counter_rng_golden_values() -> None:
    # the per-view random numbers are part of the stored-view contract: they must never drift
    u = keyed_uniforms("view", 0, [torch.tensor([0, 7]), torch.tensor([0, 3])], 2)
    expected = [[0.370584154526409, 0.6949690978024312], [0.22981359604680762, 0.6436868254146088]]
    assert torch.equal(u, torch.tensor(expected, dtype=torch.float64))
    aug = Augmenter(ViewConfig(pad_crop=4, flip=True, resized_crop=(0.08, 1.0)), seed=0)
    p = aug.params([0, 1, 2, 3], [0, 0, 1, -1], (3, 32, 32))
    assert p["crop_y"].tolist() == [3, 7, 8, 4] and p["crop_x"].tolist() == [6, 6, 3, 4]
    assert p["flip"].tolist() == [False, False, True, False]
    assert p["rc_box"].tolist() == [[8, 11, 20, 18], [11, 18, 8, 10], [3, 8, 27, 24], [0, 0, 32, 32]]
    assert p["identity"].tolist() == [False, False, False, True]


# --- replayability ---
def test_same_view_same_pixels_across_calls_orders_batches_and_instances() -> None:
    ds = _dataset()
    x = _float(ds)
    sid = torch.arange(len(ds))
    vid = torch.arange(len(ds)) % 3
    ref = Augmenter(FULL, seed=7)(x, sid, vid)
    assert torch.equal(ref, Augmenter(FULL, seed=7)(x, sid, vid))  # another instance, another call
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))
    assert torch.equal(Augmenter(FULL, seed=7)(x[perm], sid[perm], vid[perm]), ref[perm])  # another order
    part = torch.tensor([5, 2, 17])
    assert torch.equal(Augmenter(FULL, seed=7)(x[part], sid[part], vid[part]), ref[part])  # another batch
    assert not torch.equal(Augmenter(FULL, seed=8)(x, sid, vid), ref)  # the seed matters


def test_different_view_ids_differ_and_negative_is_identity() -> None:
    ds = _dataset()
    x, sid = _float(ds), torch.arange(len(ds))
    aug = Augmenter(FULL, seed=0)
    v0, v1 = aug(x, sid, 0), aug(x, sid, 1)
    differs = (v0 != v1).flatten(1).any(1).float().mean()
    assert differs > 0.9
    assert torch.equal(aug(x, sid, NO_AUGMENT), x) and torch.equal(aug(x, sid, -5), x)
    mixed = aug(x, sid, torch.where(sid % 2 == 0, 0, -1))
    assert torch.equal(mixed[1::2], x[1::2]) and torch.equal(mixed[0::2], v0[0::2])


def test_pad_crop_matches_manual_crop_and_keeps_shape() -> None:
    ds = _dataset(size=12)
    x, sid = _float(ds), torch.arange(len(ds))
    aug = Augmenter(ViewConfig(pad_crop=3), seed=2)
    p = aug.params(sid, 0, x.shape)
    out = aug.apply(x, p)
    assert out.shape == x.shape
    padded = F.pad(x, (3, 3, 3, 3))
    for b in range(len(ds)):
        y0, x0 = int(p["crop_y"][b]), int(p["crop_x"][b])
        assert 0 <= y0 <= 6 and 0 <= x0 <= 6
        assert torch.equal(out[b], padded[b, :, y0 : y0 + 12, x0 : x0 + 12])
    assert len(set(zip(p["crop_y"].tolist(), p["crop_x"].tolist()))) > 10  # offsets really vary


def test_flip_flips_exactly() -> None:
    ds = _dataset()
    x, sid = _float(ds), torch.arange(len(ds))
    aug = Augmenter(ViewConfig(flip=True), seed=3)
    p = aug.params(sid, 4, x.shape)
    out = aug.apply(x, p)
    f = p["flip"]
    assert 0 < int(f.sum()) < len(ds)
    assert torch.equal(out[f], x[f].flip(-1)) and torch.equal(out[~f], x[~f])


def test_resized_crop_is_bilinear_resize_of_the_box() -> None:
    ds = _dataset(n=8, size=16)
    x, sid = _float(ds), torch.arange(8)
    aug = Augmenter(ViewConfig(resized_crop=(0.3, 0.6)), seed=4)
    p = aug.params(sid, 0, x.shape)
    out = aug.apply(x, p)
    assert out.shape == x.shape
    for b in range(8):
        t, l, h, w = p["rc_box"][b].tolist()
        assert 0.3 * 256 - 16 <= h * w <= 0.6 * 256 + 16 and t + h <= 16 and l + w <= 16
        ref = F.interpolate(x[b : b + 1, :, t : t + h, l : l + w], size=(16, 16), mode="bilinear")
        # identical away from the border (grid_sample reads the neighbour half a pixel outside the box)
        assert torch.allclose(out[b, :, 1:-1, 1:-1], ref[0, :, 1:-1, 1:-1], atol=1e-5)


# --- view policy ---
def test_view_policies() -> None:
    sid = torch.arange(200)
    assert view_for_epoch("fresh", 7, sid).unique().tolist() == [7]
    assert view_for_epoch("cycle", 7, sid, num_views=3).unique().tolist() == [1]
    s = view_for_epoch("sample", 2, sid, num_views=4, seed=1)
    assert s.min() >= 0 and s.max() <= 3 and len(s.unique()) == 4
    assert torch.equal(view_for_epoch("sample", 2, sid.flip(0), num_views=4, seed=1), s.flip(0))
    assert not torch.equal(view_for_epoch("sample", 3, sid, num_views=4, seed=1), s)
    with pytest.raises(ValueError, match="num_views"):
        view_for_epoch("cycle", 0, sid)
    with pytest.raises(ValueError, match="policy"):
        view_for_epoch("random", 0, sid, 2)


# --- loaders ---
def test_loader_batch_dict_normalisation_and_epoch_shuffle() -> None:
    ds = _dataset(n=30)
    loader = ViewLoader(ds, batch_size=8, augmenter=None, shuffle=True, seed=0)
    assert len(loader) == 4
    batches = list(loader)
    b = batches[0]
    assert set(b) == {"input", "target", "sample_id", "view_id"}
    assert b["input"].dtype == torch.float32 and b["input"].shape == (8, 3, 16, 16)
    assert b["target"].dtype == torch.long and b["sample_id"].dtype == torch.long
    assert bool((b["view_id"] == -1).all())
    mean = torch.tensor(ds.mean)[:, None, None]
    std = torch.tensor(ds.std)[:, None, None]
    assert torch.allclose(b["input"], (ds.images[b["sample_id"]].float() / 255 - mean) / std, atol=1e-6)
    assert torch.equal(b["target"], ds.targets[b["sample_id"]])
    order0 = torch.cat([bb["sample_id"] for bb in batches])
    assert sorted(order0.tolist()) == list(range(30))
    assert torch.equal(order0, torch.cat([bb["sample_id"] for bb in loader]))  # same epoch → same order
    loader.set_epoch(1)
    assert not torch.equal(order0, torch.cat([bb["sample_id"] for bb in loader]))
    assert len(ViewLoader(ds, 8, drop_last=True)) == 3 and len(list(ViewLoader(ds, 8, drop_last=True))) == 3


def test_loader_indices_views_and_mid_epoch_resume() -> None:
    ds = _dataset(n=30)
    idx = torch.arange(0, 30, 3)
    loader = ViewLoader(ds, 4, Augmenter(FULL, seed=1), indices=idx, seed=5, policy="cycle", num_views=2)
    loader.set_epoch(3)
    batches = list(loader)
    ids = torch.cat([b["sample_id"] for b in batches])
    assert sorted(ids.tolist()) == idx.tolist()
    assert bool((torch.cat([b["view_id"] for b in batches]) == 1).all())
    resumed = list(loader.batches(start=1))
    assert len(resumed) == len(batches) - 1
    assert all(torch.equal(a["input"], b["input"]) for a, b in zip(resumed, batches[1:]))


def test_render_views_reproduces_loader_inputs_exactly() -> None:
    ds = _dataset(n=37)
    aug = Augmenter(FULL, seed=11)
    loader = ViewLoader(ds, 10, aug, shuffle=True, seed=2, policy="sample", num_views=5)
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen += list(loader)
    sid = torch.cat([b["sample_id"] for b in seen])
    vid = torch.cat([b["view_id"] for b in seen])
    inputs = torch.cat([b["input"] for b in seen])
    # re-render in a different order, with a different batch composition and a new Augmenter instance
    perm = torch.randperm(len(sid), generator=torch.Generator().manual_seed(0))
    again = render_views(ds, sid[perm], vid[perm], Augmenter(FULL, seed=11))
    assert torch.equal(again, inputs[perm])
    assert not torch.equal(render_views(ds, sid, vid + 1, aug), inputs)


def test_ddp_shards_are_disjoint_equal_and_cover_the_permutation() -> None:
    ds = _dataset(n=23)
    world = 4
    loaders = [ViewLoader(ds, 5, None, shuffle=True, seed=9, rank=r, world_size=world) for r in range(world)]
    for ld in loaders:
        ld.set_epoch(2)
    order = loaders[0].epoch_order()
    assert len(order) == 24 and sorted(order[:23].tolist()) == list(range(23))  # padded by repeating the head
    assert torch.equal(order, loaders[3].epoch_order())  # same global permutation on every rank
    shards = [torch.cat([b["sample_id"] for b in ld]) for ld in loaders]
    assert all(len(s) == 6 for s in shards) and all(len(ld) == 2 for ld in loaders)
    positions = [set(range(r, 24, world)) for r in range(world)]
    assert set().union(*positions) == set(range(24)) and sum(len(p) for p in positions) == 24
    for r, s in enumerate(shards):
        assert torch.equal(s, order[r::world])
    assert set(torch.cat(shards).tolist()) == set(range(23))


def test_eval_loader_in_order_unaugmented_unpadded() -> None:
    ds = _dataset(n=11)
    ev = eval_loader(ds, 4)
    ids = torch.cat([b["sample_id"] for b in ev])
    assert ids.tolist() == list(range(11)) and all(bool((b["view_id"] == -1).all()) for b in ev)
    shards = [torch.cat([b["sample_id"] for b in eval_loader(ds, 4, rank=r, world_size=3)]) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(11))  # no duplicates from padding
    sub = eval_loader(ds, 4, indices=[3, 1])
    assert torch.cat([b["sample_id"] for b in sub]).tolist() == [3, 1]


def test_normalize_flag_and_float_images() -> None:
    x = torch.rand(6, 1, 8, 8)
    ds = ImageDataset(x, torch.zeros(6, dtype=torch.long), ["only"])
    raw = next(iter(ViewLoader(ds, 6, Augmenter(ViewConfig(normalize=False)), shuffle=False)))
    assert torch.equal(raw["input"], x) and bool((raw["view_id"] == 0).all())
    norm = render_views(ds, torch.arange(6), 0, Augmenter(ViewConfig()))
    assert torch.allclose(norm, (x - ds.mean[0]) / ds.std[0], atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rendering_matches_cpu() -> None:
    ds = _dataset(n=64, size=32)
    sid, vid = torch.arange(64), torch.arange(64) % 3 - 1
    for cfg in (ViewConfig(pad_crop=4, flip=True), FULL):
        cpu = render_views(ds, sid, vid, Augmenter(cfg, seed=3))
        gpu = render_views(ds, sid, vid, Augmenter(cfg, seed=3), device="cuda")
        assert gpu.is_cuda
        if cfg.resized_crop is None:
            assert torch.equal(gpu.cpu(), cpu)  # gathers and IEEE arithmetic: bit-exact across devices
        else:
            assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)  # grid_sample may fuse multiply-adds on GPU
    loader = ViewLoader(ds, 16, Augmenter(FULL, seed=3), seed=1, device="cuda")
    b = next(iter(loader))
    assert all(t.is_cuda for t in b.values())
    again = render_views(ds, b["sample_id"].cpu(), b["view_id"].cpu(), Augmenter(FULL, seed=3), device="cuda")
    assert torch.equal(again, b["input"])
