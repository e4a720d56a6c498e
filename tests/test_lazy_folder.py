"""Lazy image folders: decoded per batch (in DataLoader workers), the same views as the in-memory reader."""

from __future__ import annotations

import pytest
import torch

from featdistill.data import Augmenter, ViewConfig, ViewLoader, load_dataset, write_image_folder
from featdistill.data.formats import DataFormatError


def _folder(root, n: int = 40) -> None:
    g = torch.Generator().manual_seed(0)
    for split, m in (("train", n), ("test", n // 4)):
        images = torch.randint(0, 256, (m, 3, 12, 12), generator=g, dtype=torch.uint8)
        write_image_folder(root / split, images, torch.arange(m) % 4, fmt="npy")


def test_lazy_folder_renders_the_same_views_as_the_in_memory_reader(tmp_path):
    _folder(tmp_path)
    eager, _ = load_dataset("image-folder", root=str(tmp_path))
    lazy, lazy_test = load_dataset("image-folder", root=str(tmp_path), lazy=True)
    assert len(lazy) == len(eager) and lazy.classes == eager.classes and lazy.mean == pytest.approx(eager.mean)
    aug = Augmenter(ViewConfig(pad_crop=2, flip=True), seed=3)
    sid, vid = torch.tensor([5, 0, 33, 12]), torch.tensor([0, 1, 2, 3])
    a, b = eager.batch(sid, vid, aug), lazy.batch(sid, vid, aug)
    assert torch.allclose(a["input"], b["input"], atol=1e-6) and torch.equal(a["target"], b["target"])
    assert lazy_test.mean == lazy.mean  # the test split is normalised with the train statistics


def test_worker_processes_yield_the_same_batches_in_the_same_order(tmp_path):
    _folder(tmp_path)
    lazy, _ = load_dataset("image-folder", root=str(tmp_path), lazy=True)
    aug = Augmenter(ViewConfig(pad_crop=2, flip=True), seed=1)
    one = ViewLoader(lazy, 8, aug, seed=0)
    two = ViewLoader(lazy, 8, aug, seed=0, num_workers=2)
    one.set_epoch(1)
    two.set_epoch(1)
    for x, y in zip(one, two, strict=True):
        assert torch.equal(x["sample_id"], y["sample_id"]) and torch.equal(x["input"], y["input"])


def test_lazy_folder_refuses_mixed_shapes_unless_resized(tmp_path):
    _folder(tmp_path)
    import numpy as np

    np.save(tmp_path / "train" / "00000" / "odd.npy", np.zeros((3, 20, 20), dtype=np.uint8))
    with pytest.raises(DataFormatError, match=r"odd.npy: image shape \(3, 20, 20\) differs.*image_size"):
        load_dataset("image-folder", root=str(tmp_path), lazy=True)  # the statistics pass reads it
    resized, _ = load_dataset("image-folder", root=str(tmp_path), lazy=True, image_size=16)
    odd = next(i for i, p in enumerate(resized.files) if p.name == "odd.npy")
    assert resized.batch(torch.tensor([odd, 0]), torch.tensor([-1, -1]), None)["input"].shape == (2, 3, 16, 16)
