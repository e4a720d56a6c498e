"""Store-backed soft labels for synthetic sets (featdistill.condense.relabel).

The properties that make per-view labels worth having: every served input is exactly the pixels its label was
computed on; evaluation really trains on the stored labels (a store of permuted labels teaches permuted
classes) without any teacher; a store is refused for images, teachers or views it was not built for; a
coreset is labelled from a training-set store by its source ids; and the config uses a present store instead
of building the teacher.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featdistill.cache import build_store
from featdistill.cache.format import StoreError, StoreMismatchError
from featdistill.condense import (
    EvalProtocol,
    SyntheticSet,
    build_label_store,
    condense,
    evaluate,
    open_view_labels,
    relabel,
)
from featdistill.condense.relabel import default_label_views
from featdistill.data.base import ImageDataset
from featdistill.data.views import ViewConfig

K, IPC, HW = 3, 2, 8
NET_KW = {"width": 8, "depth": 2}
DM_TINY = {"iterations": 3, "batch_real": 6}


pytestmark = pytest.mark.usefixtures("one_thread")


def _pixels(n_per_class: int, seed: int) -> ImageDataset:
    """[0, 1] grey 8×8 images; class k is brighter in rows 2k..2k+2 (an oracle can read the class off)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k in range(K):
        x = 0.3 + 0.1 * torch.rand(n_per_class, 1, HW, HW, generator=g)
        x[:, :, 2 * k : 2 * k + 3, :] += 0.5
        xs.append(x)
        ys.append(torch.full((n_per_class,), k))
    return ImageDataset(torch.cat(xs), torch.cat(ys), [f"c{k}" for k in range(K)], name=f"bands-{seed}")


class BandOracle(nn.Module):
    """Logits = 10 × mean brightness of each class's band (optionally shifted by ``shift`` classes)."""

    def __init__(self, shift: int = 0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([x[:, :, 2 * k : 2 * k + 3, :].mean((1, 2, 3)) for k in range(K)], 1) * self.scale
        return torch.roll(z, self.shift, dims=1)


def _dm_set(train: ImageDataset) -> SyntheticSet:
    return condense(train, IPC, "dm", backbone_kwargs=NET_KW, seed=0, **DM_TINY)


def test_each_served_view_carries_the_teacher_output_for_those_pixels(tmp_path) -> None:
    syn = _dm_set(_pixels(10, 0))
    teacher = BandOracle()
    store = build_label_store(syn, teacher, tmp_path / "labels", num_views=3, seed=5)
    for temperature in (1.0, 4.0):
        labels = open_view_labels(store, syn, temperature=temperature)
        assert labels.num_views == 3 and labels.source == "synthetic" and len(labels) == len(syn)
        pos = torch.tensor([0, 1, 3, 5, 5])
        vid = torch.tensor([0, 2, 1, 0, 2])
        x, y = labels.batch(pos, vid)
        with torch.no_grad():
            want = torch.softmax(teacher(x) / temperature, 1)
        assert torch.allclose(y, want, atol=1e-5)
        assert torch.allclose(labels.targets().sum(-1), torch.ones(len(syn), 3))
    # views really differ: pad-and-crop by 1 px on 8×8 plus a flip (not a digit dataset; digits get no flip)
    all_views = [labels.batch(torch.arange(len(syn)), torch.full((len(syn),), v))[0] for v in range(3)]
    assert not torch.equal(all_views[0], all_views[1])
    assert labels.describe()["augmentation"]["flip"] is True and labels.describe()["augmentation"]["pad_crop"] == 1
    digits = SyntheticSet(syn.images, syn.labels, None, syn.mean, syn.std, {**syn.metadata, "dataset": "mnist5k"})
    assert default_label_views(digits).flip is False
    # relabelling: view-averaged labels in the file, the store recorded, the fingerprint unchanged
    soft = relabel(syn, labels)
    assert soft.soft and torch.allclose(soft.labels, labels.targets().mean(1))
    assert soft.metadata["soft_labels"]["store"] == str(store) and soft.metadata["soft_labels"]["temperature"] == 4.0
    again = open_view_labels(store, soft)
    assert again.temperature == 4.0 and torch.equal(again.sample_ids, labels.sample_ids)


def test_topk_store_gives_the_same_label_ranking(tmp_path) -> None:
    syn = _dm_set(_pixels(10, 0))
    full = open_view_labels(build_label_store(syn, BandOracle(), tmp_path / "full", num_views=2), syn)
    top = open_view_labels(build_label_store(syn, BandOracle(), tmp_path / "top2", num_views=2, topk=2), syn)
    a, b = full.targets(), top.targets()
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert torch.allclose(a.topk(2, -1).values, b.topk(2, -1).values, atol=1e-3)
    assert top.describe()["logits"] == "top-2"


def test_stores_for_other_images_teachers_or_views_are_refused(tmp_path) -> None:
    train = _pixels(10, 0)
    syn = _dm_set(train)
    store = build_label_store(syn, BandOracle(), tmp_path / "labels", num_views=2)
    moved = SyntheticSet(syn.images + 0.01, syn.labels, syn.lr, syn.mean, syn.std, syn.metadata)
    with pytest.raises(StoreMismatchError, match="built for other images"):
        open_view_labels(store, moved, train_set=train)
    with pytest.raises(StoreMismatchError, match="teacher"):
        open_view_labels(store, syn, teacher=BandOracle(shift=1).requires_grad_(False).apply(_rescale))
    with pytest.raises(StoreMismatchError, match="number of views"):
        open_view_labels(store, syn, expect={"num_views": 4})
    with pytest.raises(StoreError, match="no teacher store"):
        open_view_labels(tmp_path / "nowhere", syn)
    with pytest.raises(StoreMismatchError):  # resuming into a store of other images is refused, not mixed
        build_label_store(moved, BandOracle(), store, num_views=2)
    with pytest.raises(ValueError, match="predicts 4 classes"):
        build_label_store(syn, nn.Sequential(nn.Flatten(), nn.Linear(HW * HW, 4)), tmp_path / "x")


def _rescale(m: nn.Module) -> None:
    if isinstance(m, BandOracle):
        m.scale.data.fill_(3.0)  # other weights → other sha256


def test_evaluate_trains_on_the_stored_labels_not_the_set_labels(tmp_path) -> None:
    """A store of labels shifted by one class must teach shifted classes: the labels come from the store."""
    train, test = _pixels(12, 0), _pixels(8, 1)
    syn = condense(train, IPC, "random", seed=0)
    proto = EvalProtocol(num_nets=2, epochs=40, backbone_kwargs=NET_KW, batch_size=8, lr=0.05, full_epochs=2)
    accs = {}
    for shift in (0, 1):
        path = build_label_store(syn, BandOracle(shift), tmp_path / f"shift{shift}", num_views=4)
        report = evaluate(syn, test, proto, train_set=train, label_store=path)
        assert report["label_store"]["views"] == 4 and report["soft_labels"] and report["dsa_strategy"] is None
        assert all(0.0 <= v <= 1.0 for v in report["scores"]["ars"]["values"])
        accs[shift] = report["synthetic"]["mean"]
    assert accs[0] >= 0.9, accs
    assert accs[1] <= 0.1, accs  # every test image predicted as the neighbouring class
    # deterministic: the view of each sample in each epoch comes from the network's seed
    again = evaluate(syn, test, proto, label_store=tmp_path / "shift0")
    assert again["synthetic"]["mean"] == accs[0]


def test_coreset_is_labelled_from_a_training_set_store(tmp_path) -> None:
    train = _pixels(10, 0)
    views = ViewConfig(pad_crop=1)
    build_store(BandOracle(), train, views, 2, tmp_path / "train_store", seed=3, taps={}, dtype="float32")
    for method in ("random", "herding"):
        syn = condense(train, IPC, method, backbone_kwargs=NET_KW, seed=1)
        ids = torch.tensor(syn.metadata["source_indices"])
        assert torch.equal(train.targets[ids], syn.labels)
        labels = open_view_labels(tmp_path / "train_store", syn, train_set=train)
        assert labels.source == "real" and torch.equal(labels.sample_ids, ids)
        x, y = labels.batch(torch.arange(len(syn)), torch.ones(len(syn), dtype=torch.long))
        with torch.no_grad():
            assert torch.allclose(y, torch.softmax(BandOracle()(x), 1), atol=1e-5)
    with pytest.raises(StoreMismatchError, match="unmodified training images"):
        open_view_labels(tmp_path / "train_store", _dm_set(train), train_set=train)


def test_config_builds_the_store_then_uses_it_without_a_teacher(tmp_path) -> None:
    from safetensors.torch import save_file

    from featdistill.cli import main
    from featdistill.condense.config import CondenseConfig, run_condense_config
    from featdistill.models import build_model

    teacher = build_model("convnet", num_classes=10, in_channels=1, image_size=8, **NET_KW)
    save_file(teacher.state_dict(), str(tmp_path / "t.safetensors"))
    store = tmp_path / "labels"
    cfg = {
        "dataset": "digits",
        "ipc": 1,
        "method": "herding",
        "backbone_kwargs": NET_KW,
        "out_dir": str(tmp_path / "a"),
        "png": False,
        "soft_label_teacher": {
            "model": "convnet",
            "checkpoint": str(tmp_path / "t.safetensors"),
            "model_kwargs": NET_KW,
            "temperature": 2.0,
            "store": {"dir": str(store), "num_views": 2},
        },
        "evaluate": {"num_nets": 1, "epochs": 1, "baselines": [], "robust_scores": False},
    }
    first = SyntheticSet.load(run_condense_config(cfg))
    assert (store / "manifest.json").exists() and first.metadata["soft_labels"]["views"] == 2
    report = (tmp_path / "a" / "eval.json").read_text()
    assert '"label_store"' in report and str(store) in report
    # a present store is used as is: no model/checkpoint needed, same labels
    no_teacher = {
        **cfg,
        "out_dir": str(tmp_path / "b"),
        "soft_label_teacher": {"temperature": 2.0, "store": {"dir": str(store), "num_views": 2}},
    }
    second = SyntheticSet.load(run_condense_config(no_teacher))
    assert torch.equal(first.labels, second.labels)
    with pytest.raises(StoreMismatchError, match="number of views"):
        run_condense_config({**no_teacher, "soft_label_teacher": {"store": {"dir": str(store), "num_views": 4}}})
    with pytest.raises(ValueError, match="holds no teacher store"):
        run_condense_config({**no_teacher, "soft_label_teacher": {"store": {"dir": str(tmp_path / "none")}}})
    with pytest.raises(ValueError, match="model \\+ checkpoint, or store"):
        CondenseConfig.model_validate({**cfg, "soft_label_teacher": {"temperature": 2.0}})
    # the CLI's eval finds the recorded store by itself
    out = tmp_path / "eval.json"
    syn_path = str(tmp_path / "b" / "synthetic.safetensors")
    argv = ["condense", "eval", syn_path, "--dataset", "digits", "--nets", "1", "--epochs", "1"]
    assert main(argv) == 0
    from featdistill.condense import run_condense_eval

    auto = run_condense_eval(syn_path, "digits", out=out, num_nets=1, epochs=1, baselines=[], robust_scores=False)
    assert auto["label_store"]["store"] == str(store)
    off = run_condense_eval(
        syn_path, "digits", label_store=None, num_nets=1, epochs=1, baselines=[], robust_scores=False
    )
    assert off["label_store"] is None and off["soft_labels"]


def test_soft_labels_train_with_the_kd_loss_at_their_temperature() -> None:
    """One-hot soft labels at T = 1 train exactly like hard labels; a recorded T is the one evaluate uses, and
    one SGD step at T equals one step on ``kd_loss(z, teacher_logits, T)``."""
    from featdistill.condense.evaluate import train_on
    from featdistill.condense.nets import make_backbone_factory
    from featdistill.losses.logits import kd_loss

    train, test = _pixels(4, 0), _pixels(4, 1)
    syn = condense(train, IPC, "random", seed=0)
    factory = make_backbone_factory("convnet", K, 1, HW, NET_KW)
    proto = EvalProtocol(batch_size=64)
    one_hot = torch.nn.functional.one_hot(syn.labels, K).float()
    a = train_on(syn.images, syn.labels, factory, 3, 2, 0.1, proto, None)
    b = train_on(syn.images, one_hot, factory, 3, 2, 0.1, proto, None, temperature=1.0)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))

    z_t = torch.randn(len(syn), K, generator=torch.Generator().manual_seed(0)) * 3
    t = 4.0
    stepped = train_on(syn.images, torch.softmax(z_t / t, 1), factory, 3, 1, 0.1, proto, None, temperature=t)
    ref = factory()
    from featdistill.condense.nets import reinit_

    reinit_(ref, torch.Generator().manual_seed(3))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(3)
    reinit_(factory(), g)  # the generator state train_on has after drawing the weights
    perm = torch.randperm(len(syn), generator=g)
    kd_loss(ref(syn.images[perm]), z_t[perm], t).backward()
    opt.step()
    for p, q in zip(stepped.state_dict().values(), ref.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6)

    soft = syn.with_labels(torch.softmax(z_t / t, 1), soft_labels={"temperature": t})
    rep = evaluate(soft, test, EvalProtocol(num_nets=1, epochs=1, backbone_kwargs=NET_KW, baselines=()))
    assert rep["label_temperature"] == t


def test_hard_view_ablation_serves_the_class_labels(tmp_path) -> None:
    from dataclasses import replace

    syn = _dm_set(_pixels(10, 0))
    labels = open_view_labels(build_label_store(syn, BandOracle(shift=1), tmp_path / "s", num_views=2), syn)
    hard = replace(labels, hard=True)
    pos, vid = torch.arange(len(syn)), torch.ones(len(syn), dtype=torch.long)
    (x_soft, y_soft), (x_hard, y_hard) = labels.batch(pos, vid), hard.batch(pos, vid)
    assert torch.equal(x_soft, x_hard) and torch.equal(y_hard, syn.labels)
    with torch.no_grad():  # the soft targets are the (shifted) teacher's, which disagree with the classes
        assert torch.equal(y_soft.argmax(1), BandOracle(shift=1)(x_soft).argmax(1))
    assert not torch.equal(y_soft.argmax(1), y_hard)
    assert hard.describe()["labels"] == "class (hard)"


def test_relabel_cli_adds_soft_labels_to_a_saved_set(tmp_path, capsys) -> None:
    import yaml
    from safetensors.torch import save_file

    from featdistill.cli import main
    from featdistill.condense.config import run_condense_config
    from featdistill.models import build_model

    teacher = build_model("convnet", num_classes=10, in_channels=1, image_size=8, **NET_KW)
    save_file(teacher.state_dict(), str(tmp_path / "t.safetensors"))
    cfg = {"dataset": "digits", "ipc": 1, "method": "random", "out_dir": str(tmp_path / "set"), "png": False}
    syn_path = run_condense_config(cfg)
    section = {"model": "convnet", "checkpoint": str(tmp_path / "t.safetensors"), "model_kwargs": NET_KW}
    static_yaml, store_yaml, bad_yaml = tmp_path / "static.yaml", tmp_path / "store.yaml", tmp_path / "bad.yaml"
    static_yaml.write_text(yaml.safe_dump({**section, "temperature": 2.0}))
    store_yaml.write_text(yaml.safe_dump({"soft_label_teacher": {**section, "store": {"dir": str(tmp_path / "s")}}}))
    bad_yaml.write_text(yaml.safe_dump({**section, "temprature": 2.0}))

    assert main(["condense", "relabel", str(syn_path), str(static_yaml)]) == 0
    static = SyntheticSet.load(syn_path.with_name("synthetic_soft.safetensors"))
    assert static.soft and static.metadata["soft_labels"] == {"temperature": 2.0, "teacher": "convnet"}
    with torch.no_grad():
        want = torch.softmax(teacher.eval()(static.images) / 2.0, 1)
    assert torch.allclose(static.labels, want, atol=1e-5)

    out = tmp_path / "per_view.safetensors"
    assert main(["condense", "relabel", str(syn_path), str(store_yaml), "--out", str(out)]) == 0
    per_view = SyntheticSet.load(out)
    assert (
        per_view.metadata["soft_labels"]["store"] == str(tmp_path / "s")
        and per_view.metadata["soft_labels"]["views"] == 8
    )
    assert torch.equal(per_view.images, SyntheticSet.load(syn_path).images)

    capsys.readouterr()
    assert main(["condense", "relabel", str(syn_path), str(bad_yaml)]) == 2
    assert "temprature = 2.0: unknown key; did you mean temperature?" in capsys.readouterr().err
    assert main(["condense", "relabel", str(syn_path), str(static_yaml), "--out", str(syn_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
