"""The Trainer with the real Distiller (FitNets: an adapter built by probing) and the real ViewLoader
(replayable augmentation): kill mid-epoch, resume, and end with exactly the uninterrupted weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from featdistill.train import TrainConfig, Trainer, TrainerCallback, latest_checkpoint, load_checkpoint
from featdistill.train.checkpoint import checkpoint_path, trainable_state_dict

distiller_mod = pytest.importorskip("featdistill.distiller")
data = pytest.importorskip("featdistill.data")
methods = pytest.importorskip("featdistill.methods")
models = pytest.importorskip("featdistill.models")
seeding = pytest.importorskip("featdistill.seeding")


class _Killed(Exception):
    pass


class _KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if step == self.step:
            raise _Killed


def _setup(init_seed: int, method_name: str = "fitnet") -> tuple[torch.nn.Module, object, object]:
    train, test = data.load_dataset("synthetic", n=32, num_classes=3, channels=1, size=8, n_test=12)
    aug = data.Augmenter(data.ViewConfig(pad_crop=1), seed=0)
    loader = data.ViewLoader(train, batch_size=8, augmenter=aug, seed=0)
    ev = data.eval_loader(test, 12)
    with seeding.seeded(0):  # the teacher is fixed (it is never checkpointed)
        teacher = models.build_model(
            "convnet", num_classes=3, in_channels=1, image_size=8, width=8, depth=2, norm="batchnorm"
        )
    with seeding.seeded(init_seed):
        student = models.build_model(
            "convnet", num_classes=3, in_channels=1, image_size=8, width=4, depth=2, norm="batchnorm"
        )
    method = (
        methods.build_method("fitnet", weights={"hint": 1.0})
        if method_name == "fitnet"
        else methods.build_method(method_name)
    )
    return distiller_mod.Distiller(student, method, teacher), loader, ev


def test_real_distiller_kill_and_resume_bit_identical(tmp_path: Path) -> None:
    cfg = TrainConfig(
        epochs=2,
        lr=0.05,
        momentum=0.9,
        schedule="cosine",
        warmup_epochs=0.5,
        grad_clip=2.0,
        precision="fp32",
        channels_last=False,
        device="cpu",
        progress=False,
        log_every=3,
        seed=1,
    )
    d_full, loader, ev = _setup(0)
    full = Trainer(d_full, loader, ev, cfg, tmp_path / "full").fit()
    assert any(k.startswith("method.adapters") for k in trainable_state_dict(d_full)), "adapter was not trained"

    d_kill, loader, ev = _setup(0)
    with pytest.raises(_Killed):
        Trainer(d_kill, loader, ev, cfg, tmp_path / "k", callbacks=[_KillAt(len(loader) + 1)]).fit()
    assert latest_checkpoint(tmp_path / "k") == checkpoint_path(tmp_path / "k", 1)

    d_res, loader, ev = _setup(5)  # different init: everything trained must come from the checkpoint
    res = Trainer(d_res, loader, ev, cfg, tmp_path / "k", resume=True).fit()
    a, b = trainable_state_dict(d_full), trainable_state_dict(d_res)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert res.final == full.final and 0.0 <= res.final["top1"] <= 1.0
    assert set(full.history[0]["losses"]) == {"ce", "hint"}
    ck = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    assert not any("teacher" in k for k in ck["model"])


def test_method_param_groups_reach_the_optimizer_and_survive_resume(tmp_path: Path) -> None:
    """MEAL V2's discriminator trains in its own group at 0.01× the lr, through the schedule and a resume."""
    cfg = TrainConfig(
        epochs=2, lr=0.05, schedule="step", milestones=[1], precision="fp32", device="cpu", progress=False, seed=1
    )
    d_full, loader, ev = _setup(0, "mealv2")
    Trainer(d_full, loader, ev, cfg, tmp_path / "full").fit()
    groups = load_checkpoint(latest_checkpoint(tmp_path / "full"))["optimizer"]["param_groups"]
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"main", "disc"} and by_name["disc"]["lr_scale"] == 0.01
    assert by_name["main"]["lr"] == pytest.approx(0.005)  # after the epoch-1 milestone
    assert by_name["disc"]["lr"] == pytest.approx(0.00005)
    n_disc = sum(1 for _ in d_full.method.adapters["disc"].parameters())
    assert len(by_name["disc"]["params"]) == n_disc

    d_kill, loader, ev = _setup(0, "mealv2")
    with pytest.raises(_Killed):
        Trainer(d_kill, loader, ev, cfg, tmp_path / "k", callbacks=[_KillAt(len(loader) + 1)]).fit()
    d_res, loader, ev = _setup(5, "mealv2")
    Trainer(d_res, loader, ev, cfg, tmp_path / "k", resume=True).fit()
    a, b = trainable_state_dict(d_full), trainable_state_dict(d_res)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
