"""Hardening (#10), store integrity: a corruption matrix — every damage is refused or recovered, never served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from featdistill.cache import (
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
    TeacherStore,
    build_store,
    store_info,
    verify_store,
)
from featdistill.cli import main
from featdistill.data.base import ImageDataset
from featdistill.data.views import Augmenter, ViewConfig
from featdistill.models import build_model
from featdistill.seeding import seeded

pytestmark = pytest.mark.usefixtures("one_thread")

N, C, V = 24, 10, 3
AUG = Augmenter(ViewConfig(pad_crop=2, flip=True), seed=7)
SIDS = torch.arange(N).repeat_interleave(V)
VIDS = torch.arange(V).repeat(N)


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(0)
    data = ImageDataset(
        images=torch.randint(0, 256, (N, 3, 8, 8), generator=g, dtype=torch.uint8),
        targets=torch.randint(0, C, (N,), generator=g),
        classes=[str(i) for i in range(C)],
        name="toy",
    )
    with seeded(0, "teacher"):
        teacher = build_model("resnet8", num_classes=C, in_channels=3, image_size=8).eval()
    return teacher, data


def _build(toy, out: Path):
    teacher, data = toy
    return build_store(teacher, data, AUG, V, out, shard_size=10, batch_size=16, model_name="resnet8")


@pytest.fixture(scope="module")
def pristine(toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "store"
    _build(toy, out)
    return out


@pytest.fixture(scope="module")
def truth(pristine) -> dict:
    return TeacherStore.open(pristine).lookup(SIDS, VIDS)


def _flip(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0x10  # one bit of the payload, same size
    p.write_bytes(bytes(raw))


def _swap(a: Path, b: Path) -> None:
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _edit_manifest(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def _set_shard_sha(m: dict) -> None:
    m["shards"][1]["files"]["logits"]["sha256"] = "0" * 64


def _set_teacher_sha(m: dict) -> None:
    m["teacher"]["sha256"] = "f" * 64


def _edit_record(root: Path) -> None:
    p = root / "shards" / "00002.json"
    r = json.loads(p.read_text())
    r["files"]["embedding"]["sha256"] = "1" * 64
    p.write_text(json.dumps(r))


def _edit_index(root: Path) -> None:
    idx = np.load(root / "index.npy")
    idx[[3, 4]] = idx[[4, 3]]  # same size, two samples' rows swapped
    np.save(root / "index.npy", idx)


S = "shards"
CASES = {
    # name: (damage, what a reader sees at open: "open" = refused at open, "use" = refused at first use)
    "flip": (lambda r: _flip(r / S / "00001.logits.npy"), "use"),
    "flip-embedding": (lambda r: _flip(r / S / "00000.embedding.npy"), "use"),
    "swap": (lambda r: _swap(r / S / "00000.logits.npy", r / S / "00001.logits.npy"), "use"),
    "zero": (
        lambda r: (r / S / "00002.embedding.npy").write_bytes(bytes((r / S / "00002.embedding.npy").stat().st_size)),
        "open",
    ),
    "truncate": (
        lambda r: (r / S / "00001.embedding.npy").write_bytes((r / S / "00001.embedding.npy").read_bytes()[:-40]),
        "open",
    ),
    "zero-length": (lambda r: (r / S / "00000.logits.npy").write_bytes(b""), "open"),
    "delete": (lambda r: (r / S / "00002.logits.npy").unlink(), "open"),
    "manifest-sha": (lambda r: _edit_manifest(r, _set_shard_sha), "use"),
    "manifest-header": (lambda r: _edit_manifest(r, _set_teacher_sha), "open"),
    "record-sha": (_edit_record, "ok"),  # the manifest (what a complete store serves from) is intact
    "index": (_edit_index, "open"),
}


def _damaged(pristine: Path, tmp_path: Path, case: str) -> Path:
    root = shutil.copytree(pristine, tmp_path / "store")
    CASES[case][0](root)
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_damage_is_never_served(pristine, truth, tmp_path, case):
    root = _damaged(pristine, tmp_path, case)
    when = CASES[case][1]
    if when == "open":
        with pytest.raises(StoreCorruptError):
            TeacherStore.open(root)
        return
    store = TeacherStore.open(root)
    if when == "use":
        with pytest.raises(StoreCorruptError, match=r"shard file .*\.npy is corrupt: sha256"):
            store.lookup(SIDS, VIDS)
        return
    out = store.lookup(SIDS, VIDS)  # "ok": what it serves is the truth
    assert all(np.array_equal(out[f], truth[f]) for f in truth)


@pytest.mark.parametrize("case", sorted(CASES))
def test_verify_names_the_damage_and_the_cli_exits_non_zero(pristine, tmp_path, case, capsys):
    root = _damaged(pristine, tmp_path, case)
    report = verify_store(root)
    assert not report["ok"] and report["problems"], report
    assert main(["cache", "verify", str(root)]) == 1
    err = capsys.readouterr().err
    assert "DAMAGED" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["zero", "truncate", "zero-length", "delete", "manifest-header", "index"])
def test_cache_info_reports_what_it_can_see(pristine, tmp_path, case, capsys):
    root = _damaged(pristine, tmp_path, case)
    assert store_info(root)["problems"]
    assert main(["cache", "info", str(root)]) == 1
    assert "DAMAGED" in capsys.readouterr().out


def test_sound_store_passes_every_check(pristine, capsys):
    report = verify_store(pristine)
    assert report["ok"] and report["complete"] and report["files"] == 3 * 2 and report["bytes"] > 0
    assert main(["cache", "verify", str(pristine)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["cache", "info", str(pristine)]) == 0 and store_info(pristine)["problems"] == []


REDO = {"flip": [1], "flip-embedding": [0], "swap": [0, 1], "zero": [2], "truncate": [1], "zero-length": [0]}
REDO |= {"delete": [2], "manifest-sha": [], "record-sha": [2], "index": []}


@pytest.mark.parametrize("case", sorted(REDO))
def test_rebuild_reverifies_and_redoes_bad_shards(toy, pristine, truth, tmp_path, case):
    root = _damaged(pristine, tmp_path, case)
    res = _build(toy, root)
    assert res.complete and res.shards_built == REDO[case]
    assert verify_store(root)["ok"]
    out = TeacherStore.open(root, verify="sha256").lookup(SIDS, VIDS)
    assert all(np.array_equal(out[f], truth[f]) for f in truth)


def test_rebuild_of_an_edited_manifest_header_is_refused(toy, pristine, tmp_path):
    root = _damaged(pristine, tmp_path, "manifest-header")
    with pytest.raises(StoreMismatchError, match="teacher"):
        _build(toy, root)


def test_hash_is_checked_once_per_file_not_per_batch(pristine, monkeypatch):
    import featdistill.cache.store as store_mod

    calls = []
    real = store_mod.file_sha256
    monkeypatch.setattr(store_mod, "file_sha256", lambda p: calls.append(p) or real(p))
    store = TeacherStore.open(pristine)
    for _ in range(3):
        store.lookup(SIDS, VIDS)
    assert len(calls) == 6 and len(set(calls)) == 6  # 3 shards × 2 fields, each hashed exactly once
    calls.clear()
    TeacherStore.open(pristine, verify="none").lookup(SIDS, VIDS)
    assert calls == []


def test_not_a_store_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(StoreError, match="not a teacher store"):
        verify_store(tmp_path)
    assert main(["cache", "verify", str(tmp_path)]) == 2
    assert "not a teacher store" in capsys.readouterr().err


def test_training_from_a_flipped_store_is_refused(tmp_path, capsys):
    """Through the CLI: build, flip one payload bit, train → exit 2 naming the file, no traceback."""
    import yaml
    from safetensors.torch import save_file

    with seeded(0, "t"):
        t = build_model("convnet", num_classes=10, in_channels=1, image_size=8, width=8, depth=2)
    save_file(t.state_dict(), str(tmp_path / "teacher.safetensors"))
    store = tmp_path / "store"
    cfg = {
        "seed": 1,
        "run_dir": str(tmp_path / "run"),
        "data": {"name": "digits", "subset": 100, "views": "cycle"},
        "teacher": {
            "model": "convnet",
            "kwargs": {"width": 8, "depth": 2},
            "checkpoint": str(tmp_path / "teacher.safetensors"),
            "source": "store",
            "store": str(store),
        },
        "student": {"model": "convnet", "kwargs": {"width": 4, "depth": 2}},
        "method": {"name": "kd"},
        "train": {"epochs": 1, "progress": False},
        "cache": {"num_views": 2, "batch_size": 100},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cache", str(tmp_path / "cfg.yaml")]) == 0
    victim = sorted((store / "shards").glob("*.logits.npy"))[0]
    _flip(victim)
    capsys.readouterr()
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err
    assert victim.name in err and "corrupt" in err and "Traceback" not in err
    # the rerun of `featdistill cache` redoes that shard (it does not say "complete" over the bad one) …
    assert main(["cache", str(tmp_path / "cfg.yaml")]) == 0
    assert verify_store(store)["ok"]
    # … and training then runs
    assert main(["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "run2")]) == 0
