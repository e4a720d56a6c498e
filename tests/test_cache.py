"""Teacher store: view replay, round trip vs the live teacher, refusals, resume, ranks, KD equivalence."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _torchrun import run_torchrun
from featdistill.cache import (
    CachedTeacher,
    StoreCorruptError,
    StoreIncompleteError,
    StoreMismatchError,
    TeacherStore,
    build_store,
    format_info,
    reconstruct_logp,
    store_info,
    store_loader,
)
from featdistill.data.base import ImageDataset
from featdistill.data.loaders import render_views
from featdistill.data.views import Augmenter, ViewConfig
from featdistill.models import build_model
from featdistill.seeding import seeded
from featdistill.teacher import LiveTeacher

N, C, HW, V, K = 24, 10, 8, 3, 4
FP16 = {"rtol": 2e-3, "atol": 2e-3}


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1.3e-6, atol: float = 1e-5) -> None:
    """``torch.testing.assert_close`` without its first-call import of torch.distributed.tensor (~5 s)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    err = (a - b).abs() - (atol + rtol * b.abs())
    assert bool((err <= 0).all()), f"max excess {float(err.max()):.3g}; max abs diff {float((a - b).abs().max()):.3g}"


def make_dataset(n: int = N, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, HW, HW), generator=g, dtype=torch.uint8)
    targets = torch.randint(0, C, (n,), generator=g)
    return ImageDataset(images=images, targets=targets, classes=[str(i) for i in range(C)], name="toy")


def make_teacher(seed: int = 0) -> torch.nn.Module:
    with seeded(seed, "teacher"):
        model = build_model("resnet8", num_classes=C, in_channels=3, image_size=HW)
    # non-trivial BN statistics so that eval() matters
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


AUG = Augmenter(ViewConfig(pad_crop=2, flip=True), seed=7)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    return make_dataset()


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return make_teacher()


@pytest.fixture(scope="module")
def full_store(tmp_path_factory, teacher, data) -> Path:
    out = tmp_path_factory.mktemp("full")
    build_store(teacher, data, AUG, V, out, shard_size=10, batch_size=16, model_name="resnet8")
    return out


@pytest.fixture(scope="module")
def topk_store(tmp_path_factory, teacher, data) -> Path:
    out = tmp_path_factory.mktemp("topk")
    build_store(teacher, data, AUG, V, out, topk=K, shard_size=10, batch_size=16, store_view_params=True)
    return out


def live_outputs(teacher, data, sids, vids, taps=None):
    live = LiveTeacher(teacher, taps or {"logits": "", "embedding": "flatten"})
    x = render_views(data, sids, vids, AUG)
    out = live({"input": x, "sample_id": sids, "view_id": vids})
    live.close()
    return out


# -- replay ----------------------------------------------------------------------------------------------
def test_replayed_views_equal_loader_views_pixel_for_pixel(full_store, data):
    store = TeacherStore.open(full_store)
    loader = store_loader(store, data, batch_size=8, policy="sample", seed=3)
    seen = 0
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            assert int(batch["view_id"].max()) < V
            again = render_views(data, batch["sample_id"], batch["view_id"], store.augmenter())
            assert torch.equal(again, batch["input"])
            # and the stored audit parameters are those of this exact view
            seen += batch["input"].shape[0]
    assert seen == 2 * N
    assert store.augmenter().fingerprint() == AUG.fingerprint()


def test_stored_view_params_match_augmenter(topk_store, data):
    store = TeacherStore.open(topk_store)
    sids, vids = torch.tensor([0, 5, 23, 11]), torch.tensor([0, 2, 1, 2])
    raw = store.lookup(sids, vids)
    params = AUG.params(sids, vids, (3, HW, HW))
    for name in ("crop_y", "crop_x", "flip", "rc_box"):
        assert np.array_equal(raw[f"param.{name}"], params[name].to(torch.int16).numpy())


# -- round trip ------------------------------------------------------------------------------------------
def test_full_store_equals_live_teacher(full_store, teacher, data):
    store = TeacherStore.open(full_store, expect={"teacher": teacher, "dataset": data, "augmentation": AUG})
    sids = torch.arange(N).repeat_interleave(V)
    vids = torch.arange(V).repeat(N)
    live = live_outputs(teacher, data, sids, vids)
    cached = store.teacher_outputs(sids, vids)
    assert cached.keys() == live.keys() == {"logits", "embedding"}
    for k in live:
        assert cached[k].dtype == torch.float32
        assert_close(cached[k], live[k], **FP16)
    # zero-copy single lookup: a read-only view into the mapped file
    one = store.get(3, 1)
    assert not one["logits"].flags.writeable
    assert_close(torch.from_numpy(np.array(one["logits"])).float(), live["logits"][3 * V + 1], **FP16)


def test_topk_store_reconstructs_a_distribution(topk_store, teacher, data):
    store = TeacherStore.open(topk_store, expect={"topk": K})
    sids, vids = torch.tensor([1, 2, 3, 20]), torch.tensor([0, 1, 2, 0])
    logp = store.teacher_outputs(sids, vids)["logits"]
    z = live_outputs(teacher, data, sids, vids)["logits"]
    assert torch.allclose(logp.exp().sum(1), torch.ones(4), atol=1e-5)
    live_logp = F.log_softmax(z, dim=1)
    top = live_logp.topk(K, dim=1)
    assert_close(logp.gather(1, top.indices), top.values, rtol=1e-2, atol=2e-3)
    rest = 1 - top.values.exp().sum(1)
    others = torch.ones_like(z, dtype=torch.bool).scatter(1, top.indices, False)
    assert_close(logp.exp()[others].reshape(4, C - K).sum(1), rest, rtol=1e-2, atol=1e-3)


def test_reconstruct_with_k_equal_c_is_exact_softmax_at_every_temperature():
    z = torch.randn(5, 7) * 3
    logp = F.log_softmax(z, 1)
    vals, idx = logp.topk(7, 1)
    rec = reconstruct_logp(vals, idx, torch.full((5,), float("-inf")), 7)
    for t in (1.0, 4.0):
        assert_close(F.softmax(rec / t, 1), F.softmax(z / t, 1))


def test_projection_recorded_and_applied(tmp_path, teacher, data):
    build_store(teacher, data, AUG, 1, tmp_path, project_dim=8, dtype="float32", shard_size=100)
    store = TeacherStore.open(tmp_path)
    proj = store.projection("embedding")
    assert proj is not None and proj.shape == (64, 8)
    assert store.manifest["taps"]["embedding"]["projection"]["out_dim"] == 8
    sids, vids = torch.arange(6), torch.zeros(6, dtype=torch.long)
    emb = live_outputs(teacher, data, sids, vids)["embedding"]
    assert_close(store.teacher_outputs(sids, vids)["embedding"], emb @ proj, rtol=1e-4, atol=1e-4)


# -- refusals --------------------------------------------------------------------------------------------
def test_refuses_other_teacher(full_store):
    other = make_teacher(seed=1)
    with pytest.raises(StoreMismatchError, match=r"another teacher \(weights sha256\)"):
        TeacherStore.open(full_store, expect={"teacher": other})


def test_refuses_other_dataset(full_store):
    with pytest.raises(StoreMismatchError, match=r"another dataset \(fingerprint\)"):
        TeacherStore.open(full_store, expect={"dataset": make_dataset(seed=1)})


def test_refuses_other_augmentation_and_seed(full_store):
    with pytest.raises(StoreMismatchError, match=r"another augmentation \(config hash\)"):
        TeacherStore.open(full_store, expect={"augmentation": Augmenter(ViewConfig(pad_crop=4, flip=True), 7)})
    with pytest.raises(StoreMismatchError, match="another augmentation seed"):
        TeacherStore.open(full_store, expect={"augmentation": Augmenter(AUG.config, 8)})


def test_refuses_other_k(full_store, topk_store):
    with pytest.raises(StoreMismatchError, match=r"another k \(top-k logits\).*k=4.*k=5"):
        TeacherStore.open(topk_store, expect={"topk": 5})
    with pytest.raises(StoreMismatchError, match="full logits"):
        TeacherStore.open(full_store, expect={"topk": 5})
    with pytest.raises(StoreMismatchError, match="number of views"):
        TeacherStore.open(full_store, expect={"num_views": V + 1})


def _copy_store(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_refuses_truncated_shard_naming_it(full_store, tmp_path):
    store_dir = _copy_store(full_store, tmp_path / "s")
    victim = store_dir / "shards" / "00001.logits.npy"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 40])
    with pytest.raises(StoreCorruptError, match=r"00001\.logits\.npy is truncated"):
        TeacherStore.open(store_dir)


def test_refuses_corrupt_shard_naming_it(full_store, tmp_path):
    store_dir = _copy_store(full_store, tmp_path / "s")
    victim = store_dir / "shards" / "00002.embedding.npy"
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0xFF  # same size, different content
    victim.write_bytes(bytes(raw))
    TeacherStore.open(store_dir)  # size check passes …
    with pytest.raises(StoreCorruptError, match=r"00002\.embedding\.npy is corrupt: sha256"):
        TeacherStore.open(store_dir, verify="sha256")
    with pytest.raises(StoreCorruptError, match=r"00002\.embedding\.npy"):
        TeacherStore.open(store_dir).verify()


class Killed(RuntimeError):
    pass


def _kill_after(n: int):
    done = []

    def on_shard(s: int) -> None:
        done.append(s)
        if len(done) >= n:
            raise Killed(f"simulated kill after shard {s}")

    return on_shard


def test_incomplete_store_refused_unless_allowed(tmp_path, teacher, data):
    with pytest.raises(Killed):
        build_store(teacher, data, AUG, V, tmp_path, shard_size=10, on_shard=_kill_after(1))
    with pytest.raises(StoreIncompleteError, match=r"1 of 3 shards built \(missing 00001, 00002\)"):
        TeacherStore.open(tmp_path)
    store = TeacherStore.open(tmp_path, allow_incomplete=True)
    assert len(store) == 10 * V and store.sample_ids().tolist() == list(range(10))
    store.teacher_outputs(torch.tensor([0, 9]), torch.tensor([0, 2]))
    with pytest.raises(KeyError, match="not built"):
        store.teacher_outputs(torch.tensor([15]), torch.tensor([0]))
    info = store_info(tmp_path)
    assert not info["complete"] and info["coverage"]["samples"] == [10, N]
    assert "INCOMPLETE" in format_info(info)


# -- resume and ranks ------------------------------------------------------------------------------------
def _shard_digests(path: Path) -> list:
    m = json.loads((path / "manifest.json").read_text())
    return [(r["index"], r["start"], r["stop"], {f: v["sha256"] for f, v in r["files"].items()}) for r in m["shards"]]


def test_killed_build_resumes_where_it_stopped(tmp_path, teacher, data, full_store):
    with pytest.raises(Killed):
        build_store(
            teacher,
            data,
            AUG,
            V,
            tmp_path,
            shard_size=10,
            batch_size=16,
            model_name="resnet8",
            on_shard=_kill_after(2),
        )
    res = build_store(teacher, data, AUG, V, tmp_path, shard_size=10, batch_size=16, model_name="resnet8")
    assert res.shards_skipped == [0, 1] and res.shards_built == [2] and res.complete
    assert res.teacher_forwards == 4 * V  # only the last shard's 4 samples ran
    assert _shard_digests(tmp_path) == _shard_digests(full_store)
    # resuming with other inputs is refused, not mixed in
    with pytest.raises(StoreMismatchError, match=r"top-k k: store has None, this build has 5"):
        build_store(teacher, data, AUG, V, tmp_path, shard_size=10, topk=5, model_name="resnet8")


def test_two_rank_build_in_process_equals_one_rank(tmp_path, teacher, data, full_store):
    r1 = build_store(
        teacher,
        data,
        AUG,
        V,
        tmp_path,
        shard_size=10,
        batch_size=16,
        model_name="resnet8",
        rank=1,
        world_size=2,
    )
    assert r1.shards_built == [1] and not r1.complete
    r0 = build_store(
        teacher,
        data,
        AUG,
        V,
        tmp_path,
        shard_size=10,
        batch_size=16,
        model_name="resnet8",
        rank=0,
        world_size=2,
    )
    assert r0.shards_built == [0, 2] and r0.complete
    assert _shard_digests(tmp_path) == _shard_digests(full_store)


_TORCHRUN_SCRIPT = """
import sys, torch, torch.distributed as dist
from featdistill.cache import build_store
from featdistill.data.base import ImageDataset
from featdistill.data.views import Augmenter, ViewConfig
from featdistill.models import build_model
torch.set_num_threads(1)
out, blob = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
dist.init_process_group("gloo")
classes = [str(i) for i in range(10)]
data = ImageDataset(images=blob["images"], targets=blob["targets"], classes=classes, name="toy")
teacher = build_model("resnet8", num_classes=10, in_channels=3, image_size=8)
teacher.load_state_dict(blob["teacher"])
res = build_store(teacher, data, Augmenter(ViewConfig(pad_crop=2, flip=True), seed=7), 3, out, shard_size=10,
                  batch_size=16, model_name="resnet8")
assert res.complete, res
dist.destroy_process_group()
"""


def test_two_rank_torchrun_build_equals_one_rank(tmp_path, teacher, data, full_store):
    script = tmp_path / "build.py"
    script.write_text(_TORCHRUN_SCRIPT)
    blob = tmp_path / "blob.pt"
    torch.save({"images": data.images, "targets": data.targets, "teacher": teacher.state_dict()}, blob)
    proc = run_torchrun(str(script), str(tmp_path / "s"), str(blob))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {json.loads(p.read_text())["rank"] for p in (tmp_path / "s" / "shards").glob("*.json")}
    assert ranks == {0, 1}
    assert _shard_digests(tmp_path / "s") == _shard_digests(full_store)


# -- the teacher source ----------------------------------------------------------------------------------
def test_cached_teacher_drives_distiller_like_live_teacher(full_store, teacher, data):
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method

    store = TeacherStore.open(full_store, expect={"teacher": teacher, "dataset": data, "augmentation": AUG})
    loader = store_loader(store, data, batch_size=12, policy="cycle", shuffle=True)
    loader.set_epoch(2)
    batch = next(iter(loader))
    assert torch.equal(batch["view_id"], torch.full((12,), 2 % V))
    with seeded(0, "student"):
        student = build_model("resnet8", num_classes=C, in_channels=3, image_size=HW)
    d_live = Distiller(copy.deepcopy(student), build_method("kd"), teacher=teacher)
    cached = CachedTeacher(store)
    d_cached = Distiller(copy.deepcopy(student), build_method("kd"), teacher=cached)
    _, l_live = d_live(batch)
    _, l_cached = d_cached(batch)
    assert l_live.keys() == l_cached.keys() == {"ce", "kd"}
    assert_close(l_cached["kd"], l_live["kd"], rtol=5e-3, atol=1e-4)
    assert_close(l_cached["ce"], l_live["ce"])
    assert d_cached.teacher.views_served >= 12  # the Distiller narrowed the source to the method's taps
    assert d_cached.teacher.names == {"logits"} and cached.names == {"logits", "embedding"}


def test_topk_cached_teacher_kd_close_to_live(topk_store, teacher, data):
    from featdistill.losses.logits import kd_loss

    store = TeacherStore.open(topk_store)
    sids, vids = torch.arange(N), torch.arange(N) % V
    batch = {"input": render_views(data, sids, vids, AUG), "sample_id": sids, "view_id": vids}
    t_logp = CachedTeacher(store)(batch)["logits"]
    z = live_outputs(teacher, data, sids, vids)["logits"]
    s = torch.randn(N, C)
    exact, approx = kd_loss(s, z, 4.0), kd_loss(s, t_logp, 4.0)
    assert torch.isfinite(approx) and abs(float(approx - exact)) < 0.1 * float(exact) + 1e-3


def test_lookup_errors_name_the_fix(full_store):
    store = TeacherStore.open(full_store)
    with pytest.raises(KeyError, match="policy is 'cycle' or 'sample'"):
        store.teacher_outputs(torch.tensor([0]), torch.tensor([V]))
    with pytest.raises(KeyError, match="not covered"):
        store.teacher_outputs(torch.tensor([N + 5]), torch.tensor([0]))
    with pytest.raises(KeyError, match="sample_id"):
        CachedTeacher(store)({"input": torch.zeros(1, 3, HW, HW)})
    with pytest.raises(ValueError, match="'cycle' or 'sample'"):
        store_loader(store, make_dataset(), 4, policy="fresh")


def test_subset_and_identity_views(tmp_path, teacher, data):
    ident = Augmenter(ViewConfig(), seed=0)
    build_store(teacher, data, ident, 1, tmp_path, indices=[3, 1, 7], logits=True, taps={})
    store = TeacherStore.open(tmp_path)
    assert store.sample_ids().tolist() == [1, 3, 7] and store.tap_names == {"logits"}
    # no random op: the un-augmented view (-1) is the stored view 0
    a = store.teacher_outputs(torch.tensor([7, 1]), torch.tensor([-1, 0]))["logits"]
    b = store.teacher_outputs(torch.tensor([7, 1]), torch.tensor([0, 0]))["logits"]
    assert torch.equal(a, b)
    info = store_info(tmp_path)
    assert info["coverage"]["samples"] == [3, 3] and info["coverage"]["dataset_fraction"] == 3 / N
    assert info["bytes_per_view"] == C * 2


def test_resume_refuses_any_other_setting(tmp_path, teacher, data):
    build_store(teacher, data, AUG, 1, tmp_path, taps={"feat": "layer2"}, logits=False)
    with pytest.raises(StoreMismatchError, match=r"taps\.feat\.path: store has layer2, this build has layer3"):
        build_store(teacher, data, AUG, 1, tmp_path, taps={"feat": "layer3"}, logits=False)
    res = build_store(teacher, data, AUG, 1, tmp_path, taps={"feat": "layer3"}, logits=False, resume=False)
    assert res.complete and TeacherStore.open(tmp_path).manifest["taps"]["feat"]["path"] == "layer3"


def test_build_store_from_config_and_cli_info(tmp_path, capsys):
    import yaml
    from safetensors.torch import save_file

    from featdistill.cache import build_store_from_config
    from featdistill.data import load_dataset

    train, _ = load_dataset("digits")
    with seeded(0, "cfg-teacher"):
        t = build_model("convnet", num_classes=10, in_channels=1, image_size=8, width=8, depth=2)
    save_file(t.state_dict(), str(tmp_path / "teacher.safetensors"))
    cfg = {
        "seed": 3,
        "data": {"name": "digits", "subset": 40, "augment": {"pad_crop": 1}, "views": "cycle"},
        "teacher": {
            "model": "convnet",
            "kwargs": {"width": 8, "depth": 2},
            "checkpoint": str(tmp_path / "teacher.safetensors"),
            "source": "store",
            "store": str(tmp_path / "store"),
        },
        "cache": {"num_views": 2, "topk": 3, "batch_size": 64},
    }
    (tmp_path / "cache.yaml").write_text(yaml.safe_dump(cfg))
    out = build_store_from_config(tmp_path / "cache.yaml", overrides=["cache.num_views=3"])
    aug = Augmenter(ViewConfig(pad_crop=1), seed=3)
    store = TeacherStore.open(out, expect={"dataset_fingerprint": train.fingerprint(), "augment_hash": aug.config})
    assert store.num_views == 3 and store.topk == 3 and len(store.sample_ids()) == 40
    assert TeacherStore.peek_num_views(out) == 3 and store.seed == 3
    from featdistill.cli import main

    assert main(["cache", "info", str(out)]) == 0
    assert "40/40 samples, 120/120 views" in capsys.readouterr().out


def test_train_from_store_never_needs_the_teacher(tmp_path):
    """`featdistill cache` then `featdistill train` with teacher.source=store: the teacher is never built."""
    import json

    import yaml
    from safetensors.torch import save_file

    from featdistill.cli import main

    with seeded(0, "store-train-teacher"):
        t = build_model("convnet", num_classes=10, in_channels=1, image_size=8, width=8, depth=2)
    save_file(t.state_dict(), str(tmp_path / "teacher.safetensors"))
    teacher = {
        "model": "convnet",
        "kwargs": {"width": 8, "depth": 2},
        "checkpoint": str(tmp_path / "teacher.safetensors"),
        "source": "store",
        "store": str(tmp_path / "store"),
    }
    cfg = {
        "seed": 1,
        "run_dir": str(tmp_path / "run"),
        "data": {"name": "digits", "subset": 200, "augment": {"pad_crop": 1}, "views": "cycle"},
        "teacher": teacher,
        "student": {"model": "convnet", "kwargs": {"width": 4, "depth": 2}},
        "method": {"name": "kd", "params": {"temperature": 2.0}},
        "train": {"epochs": 2, "progress": False, "lr": 0.05},
        "cache": {"num_views": 2, "batch_size": 100},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["cache", str(tmp_path / "cfg.yaml")]) == 0
    # Without the checkpoint the store cannot be tied to a teacher file, but training still needs no teacher.
    no_ckpt = {**cfg, "teacher": {k: v for k, v in teacher.items() if k != "checkpoint"}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(no_ckpt))
    assert main(["train", str(tmp_path / "train.yaml")]) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["type"] == "epoch" and r["losses"]["kd"] > 0 for r in records)
    # With a different teacher checkpoint the store is refused with the reason.
    with seeded(5, "other"):
        other = build_model("convnet", num_classes=10, in_channels=1, image_size=8, width=8, depth=2)
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    wrong = {
        **cfg,
        "run_dir": str(tmp_path / "run2"),
        "teacher": {**teacher, "checkpoint": str(tmp_path / "other.safetensors")},
    }
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    assert main(["train", str(tmp_path / "wrong.yaml")]) == 2
