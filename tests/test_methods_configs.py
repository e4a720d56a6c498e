"""Every published-pair CIFAR-100 config validates, builds its pair and method, and trains two steps on fixture data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import featdistill
from featdistill.config import load_config
from featdistill.data import load_dataset, write_cifar100_python
from featdistill.distiller import Distiller
from featdistill.methods import build_method
from featdistill.models import build_model

CONFIG_DIR = Path(featdistill.__file__).parent / "configs" / "cifar100"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
PAIRS = {
    ("resnet32x4", "resnet8x4"),
    ("resnet56", "resnet20"),
    ("wrn_40_2", "wrn_16_2"),
    ("vgg13", "vgg8"),
    ("resnet32x4", "shufflev2"),
}


def test_all_pairs_and_methods_present():
    names = {p.stem for p in CONFIGS}
    for m in ("kdls", "dkdls", "nkd", "dotkd", "distplus", "pad", "sskd"):
        for t, s in PAIRS:
            assert f"{m}_{t}_{s}" in names
    for s in {s for _, s in PAIRS}:  # teacher-free recipes: one config per student
        assert f"tfkd_{s}" in names
    for m in ("kd", "dkd", "nd", "fitnet", "at", "ofa", "crd", "vid", "ft", "ofd", "reviewkd", "srd"):
        for t, s in PAIRS:
            assert f"{m}_{t}_{s}" in names
    for m in ("sp", "cc", "rkd", "pkt", "nst", "ickd", "fsp", "kdsvd", "ab"):
        for t, s in PAIRS:  # FSP and KDSVD compare equal stage widths only: RepDistiller refuses resnet32x4 → shufflev2
            if m in ("fsp", "kdsvd") and s == "shufflev2":
                assert f"{m}_{t}_{s}" not in names
                continue
            assert f"{m}_{t}_{s}" in names


@pytest.fixture(scope="module")
def cifar_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar100")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 200), ("test", 100)):
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        fine = torch.arange(n) % 100
        write_cifar100_python(root, images, fine, fine // 5, split=split)
    return root


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates_and_builds_method(path):
    cfg = load_config(path)
    m = cfg.method
    method = build_method(m.name, **m.params, weights=m.weights)
    assert method.name == m.name and set(m.weights) <= set(method.weights)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_runs_two_steps(path, cifar_fixture):
    cfg = load_config(path)
    assert cfg.data.name == "cifar100" and cfg.train.epochs == 240 and cfg.train.weight_decay == 5e-4
    assert cfg.train.lr == (0.01 if cfg.student.model.startswith("shuffle") else 0.05)
    train, _ = load_dataset("cifar100", root=str(cifar_fixture))
    x = (train.images[:4].float() / 255.0 - 0.5) / 0.25
    batch = {
        "input": x,
        "target": train.targets[:4].long(),
        "sample_id": torch.arange(4),
        "view_id": torch.zeros(4, dtype=torch.long),
    }
    torch.manual_seed(0)
    teacher = build_model(cfg.teacher.model, num_classes=100) if cfg.teacher is not None else None
    student = build_model(cfg.student.model, num_classes=100)
    m = cfg.method
    method = build_method(m.name, **m.params, weights=m.weights)
    d = Distiller(student, method, teacher, ce_weight=m.ce_weight, label_smoothing=m.label_smoothing)
    if m.name == "crd":  # the memory banks are sized (and the classes read) from the training set
        method.fit(teacher, SimpleNamespace(dataset=train), 100)
    if m.name == "nd":  # class means need the whole training set; the fixture has 2 images per class
        method.class_means = torch.randn(100, method_dim(teacher))
    if m.name == "sskd":  # stage 1 trains the teacher's projection head (one epoch on the fixture batch here)
        method.t_epochs = 1
        method.fit(teacher, [batch], 100)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=cfg.train.lr, momentum=0.9)
    for step in range(2):
        _, losses = d(batch, epoch=float(step))
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()


def method_dim(model) -> int:
    return model.get_submodule(model.classifier_path).in_features
