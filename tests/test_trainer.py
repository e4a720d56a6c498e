"""Trainer, TrainConfig, schedules and checkpoints on toy models (milliseconds per run, CPU only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

from _trainer_toys import ToyDistiller, ToyLoader, ToyStudent, make_data
from featdistill.train import (
    CheckpointError,
    TrainConfig,
    TrainConfigError,
    Trainer,
    TrainerCallback,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
)
from featdistill.train import config as cfg_mod
from featdistill.train.checkpoint import (
    atomic_write,
    capture_rng_state,
    checkpoint_path,
    frozen_state_keys,
    restore_rng_state,
    save_checkpoint,
    trainable_state_dict,
)
from featdistill.train.schedule import build_scheduler

BATCH = 8
N_TRAIN = 40  # 5 steps per epoch


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        epochs=3,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        schedule="cosine",
        warmup_epochs=0.5,
        grad_clip=1.0,
        precision="fp32",
        device="cpu",
        progress=False,
        log_every=2,
        seed=7,
    )
    base.update(kw)
    return TrainConfig(**base)


def _loaders() -> tuple[ToyLoader, ToyLoader]:
    x, y = make_data(N_TRAIN)
    xe, ye = make_data(20, seed=1)
    return ToyLoader(x, y, BATCH, seed=5), ToyLoader(xe, ye, 10, shuffle=False)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class _Killed(Exception):
    pass


class _KillAt(TrainerCallback):
    """Simulates a crash in the middle of an epoch, after an epoch checkpoint exists."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if step == self.step:
            raise _Killed(f"killed at step {step}")


# --------------------------------------------------------------------------------------------------------
# (1) kill and resume → bit-identical weights
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # SGD + nesterov, cosine with warm-up, grad clipping
        {"optimizer": "adamw", "nesterov": False, "lr": 0.01, "schedule": "step", "milestones": [1.5]},
    ],
    ids=["sgd-cosine", "adamw-step"],
)
def test_kill_and_resume_gives_bit_identical_weights(tmp_path: Path, overrides: dict) -> None:
    cfg = _cfg(**overrides)
    steps = N_TRAIN // BATCH

    full_d = ToyDistiller(seed=0, dropout=0.3)  # dropout: resume must restore the global torch RNG too
    train, ev = _loaders()
    full = Trainer(full_d, train, ev, cfg, tmp_path / "full").fit()

    killed_dir = tmp_path / "killed"
    train, ev = _loaders()
    with pytest.raises(_Killed):
        Trainer(ToyDistiller(seed=0, dropout=0.3), train, ev, cfg, killed_dir, callbacks=[_KillAt(steps + 2)]).fit()
    assert latest_checkpoint(killed_dir) == checkpoint_path(killed_dir, 1)

    # A differently initialised distiller: every trained weight must come from the checkpoint.
    resumed_d = ToyDistiller(seed=99, dropout=0.3)
    train, ev = _loaders()
    resumed = Trainer(resumed_d, train, ev, cfg, killed_dir, resume=True).fit()

    assert resumed.resumed_from == checkpoint_path(killed_dir, 1)
    want, got = trainable_state_dict(full_d), trainable_state_dict(resumed_d)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), f"{k} differs after resume"
    assert resumed.global_step == full.global_step == 3 * steps
    assert [h["eval"] for h in resumed.history] == [h["eval"] for h in full.history]
    assert [h["losses"] for h in resumed.history] == [h["losses"] for h in full.history]

    # metrics.jsonl reads as if the run never stopped: the killed partial epoch's records are gone.
    timing = ("images_per_s", "time_s")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in _records(killed_dir)]
    ref = [{k: v for k, v in r.items() if k not in timing} for r in _records(tmp_path / "full")]
    assert strip == ref

    # the exported students agree too
    a = load_file(tmp_path / "full" / "student.safetensors")
    b = load_file(killed_dir / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_trajectory_config(tmp_path: Path) -> None:
    train, ev = _loaders()
    Trainer(ToyDistiller(), train, ev, _cfg(epochs=1, warmup_epochs=0), tmp_path).fit()
    train, ev = _loaders()
    with pytest.raises(CheckpointError, match=r"lr: 0\.1 -> 0\.2"):
        Trainer(ToyDistiller(), train, ev, _cfg(epochs=1, warmup_epochs=0, lr=0.2), tmp_path, resume=True).fit()
    # logging-only keys may change; a finished run resumes to an immediate, identical result
    res = Trainer(ToyDistiller(), train, ev, _cfg(epochs=1, warmup_epochs=0, log_every=1), tmp_path, resume=True).fit()
    assert res.epochs_completed == 1 and len(res.history) == 1


def test_fresh_run_refuses_existing_run_dir(tmp_path: Path) -> None:
    train, ev = _loaders()
    Trainer(ToyDistiller(), train, ev, _cfg(epochs=1, warmup_epochs=0), tmp_path).fit()
    with pytest.raises(FileExistsError, match="resume=True"):
        Trainer(ToyDistiller(), train, ev, _cfg(epochs=1, warmup_epochs=0), tmp_path).fit()


# --------------------------------------------------------------------------------------------------------
# (3) metrics.jsonl, eval, export
# --------------------------------------------------------------------------------------------------------


def test_metrics_jsonl_has_terms_throughput_last_and_best(tmp_path: Path) -> None:
    scripted = iter([0.5, 0.9, 0.7])  # best at epoch 2, last epoch worse: both must be reported

    def eval_fn(student: nn.Module, loader: object) -> dict[str, float]:
        assert not student.training and torch.is_inference_mode_enabled()
        return {"top1": next(scripted), "loss": 1.0}

    train, ev = _loaders()
    res = Trainer(ToyDistiller(), train, ev, _cfg(), tmp_path, eval_fn=eval_fn).fit()
    recs = _records(tmp_path)
    steps = [r for r in recs if r["type"] == "step"]
    epochs = [r for r in recs if r["type"] == "epoch"]
    evals = [r for r in recs if r["type"] == "eval"]
    assert len(steps) == 15 // 2 and [r["step"] for r in steps] == list(range(2, 15, 2))
    for r in steps + epochs:
        assert set(r["losses"]) == {"ce", "kd", "feat"}
        assert r["total"] == pytest.approx(sum(r["losses"].values()), rel=1e-5)
        assert r["images_per_s"] > 0 and r["lr"] > 0
    assert steps[0]["lr"] == pytest.approx(lr_at(1, _cfg(), 5))
    assert steps[0]["losses"]["kd"] < epochs[-1]["losses"]["kd"] or epochs[0]["losses"]["kd"] >= 0  # warm-up w
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["top1"] for r in evals] == [0.5, 0.9, 0.7]
    assert evals[-1]["best_top1"] == 0.9 and evals[-1]["best_epoch"] == 2
    assert res.final == {"top1": 0.7, "loss": 1.0}
    assert res.best == {"top1": 0.9, "loss": 1.0, "epoch": 2} and res.best_epoch == 2
    assert res.last is res.final and res.train_seconds > 0 and res.images_per_s > 0
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


def test_default_eval_exports_student_and_skips_teacher(tmp_path: Path) -> None:
    d = ToyDistiller()
    train, ev = _loaders()
    res = Trainer(d, train, ev, _cfg(epochs=2, warmup_epochs=0), tmp_path).fit()
    assert 0.0 <= res.final["top1"] <= 1.0 and res.final["loss"] > 0 and res.final["n"] == 20
    # the recorded accuracy is the student's, computed independently here
    x, y = make_data(20, seed=1)
    d.student.eval()
    with torch.no_grad():
        logits = d.student(x)
    assert res.final["top1"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert res.final["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)

    ck = load_checkpoint(latest_checkpoint(tmp_path))
    assert not any(k.startswith("teacher.") for k in ck["model"]), "teacher weights must not be saved"
    assert {k for k in d.state_dict() if k.startswith("teacher.")} == frozen_state_keys(d)
    assert any(k.startswith("adapter.") for k in ck["model"]) and any(k.startswith("student.") for k in ck["model"])

    st = load_file(tmp_path / "student.safetensors")
    fresh = ToyStudent()
    fresh.load_state_dict(st)
    assert all(torch.equal(fresh.state_dict()[k], d.student.state_dict()[k]) for k in st)
    assert json.loads((tmp_path / "student_meta.json").read_text()) == {
        "name": "toy_mlp",
        "kwargs": {"dropout": 0.0},
    }
    assert res.student_path == tmp_path / "student.safetensors"


class _ConvDistiller(nn.Module):
    """A 4-D conv student, to drive bf16 autocast + channels_last through the loop."""

    def __init__(self, norm: str = "bn") -> None:
        super().__init__()
        norm_layer = nn.BatchNorm2d(4) if norm == "bn" else nn.GroupNorm(2, 4)
        self.student = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            norm_layer,
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )

    def forward(self, batch: dict[str, torch.Tensor], epoch: float = 0.0) -> tuple[torch.Tensor, dict]:
        logits = self.student(batch["input"])
        return logits, {"ce": F.cross_entropy(logits.float(), batch["target"])}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def export_student(self) -> nn.Module:
        return self.student


def test_progress_bar_off_the_terminal_and_tensorboard_hint(tmp_path: Path) -> None:
    train, ev = _loaders()
    # progress=True but pytest captures stderr (not a TTY): the bar silently stays off
    res = Trainer(ToyDistiller(), train, ev, _cfg(epochs=1, warmup_epochs=0, progress=True), tmp_path / "p").fit()
    assert res.epochs_completed == 1
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'featdistill\[tensorboard\]'"):
            Trainer(ToyDistiller(), train, ev, _cfg(epochs=1, warmup_epochs=0, tensorboard=True), tmp_path / "t").fit()
    else:
        Trainer(ToyDistiller(), train, ev, _cfg(epochs=1, warmup_epochs=0, tensorboard=True), tmp_path / "t").fit()
        assert any((tmp_path / "t" / "tensorboard").iterdir())


def test_bf16_channels_last_conv_path_runs(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    d = _ConvDistiller()
    trainer = Trainer(
        d,
        ToyLoader(x, y, 8),
        ToyLoader(x, y, 8, shuffle=False),
        _cfg(epochs=1, precision="bf16", channels_last=True, warmup_epochs=0),
        tmp_path,
    )
    res = trainer.fit()
    assert res.settings["precision"] == "bf16" and res.settings["channels_last"] is True
    assert d.student[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(res.final["loss"])
    assert load_file(tmp_path / "student.safetensors")["0.weight"].is_contiguous()


# --------------------------------------------------------------------------------------------------------
# (4) atomic checkpoints and clear errors
# --------------------------------------------------------------------------------------------------------


def test_corrupt_or_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    train, ev = _loaders()
    Trainer(ToyDistiller(), train, ev, _cfg(epochs=1, warmup_epochs=0), tmp_path).fit()
    path = latest_checkpoint(tmp_path)
    assert path is not None
    load_checkpoint(path)  # loads with weights_only=True
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"epoch_0001\.pt is corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="epoch_0001.pt"):
        Trainer(ToyDistiller(), train, ev, _cfg(epochs=2, warmup_epochs=0), tmp_path, resume=True).fit()

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a featdistill training checkpoint"):
        load_checkpoint(other)


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "epoch_0001.pt"
    save_checkpoint(
        target,
        {
            "model": {},
            "optimizer": {},
            "scheduler": {},
            "epoch": 1,
            "global_step": 5,
            "rng": [],
            "config": {},
        },
    )

    def crash(f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert load_checkpoint(target)["global_step"] == 5
    assert [p.name for p in target.parent.iterdir()] == ["epoch_0001.pt"]  # no temp file left behind


def test_rng_state_roundtrip() -> None:
    import random

    import numpy as np

    state = capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# --------------------------------------------------------------------------------------------------------
# (5) schedules at known steps
# --------------------------------------------------------------------------------------------------------


def test_cosine_with_warmup_known_values() -> None:
    cfg = TrainConfig(epochs=5, lr=0.1, schedule="cosine", warmup_epochs=1)
    spe = 10  # warm-up 10 steps, cosine over the remaining 40
    assert lr_at(0, cfg, spe) == pytest.approx(0.01)
    assert lr_at(4, cfg, spe) == pytest.approx(0.05)
    assert lr_at(9, cfg, spe) == pytest.approx(0.1)
    assert lr_at(10, cfg, spe) == pytest.approx(0.1)
    assert lr_at(30, cfg, spe) == pytest.approx(0.05)
    assert lr_at(50, cfg, spe) == pytest.approx(0.0, abs=1e-12)
    with_floor = TrainConfig(epochs=5, lr=0.1, schedule="cosine", warmup_epochs=1, min_lr=0.02)
    assert lr_at(30, with_floor, spe) == pytest.approx(0.06)


def test_step_with_warmup_known_values() -> None:
    cfg = TrainConfig(epochs=6, lr=0.1, schedule="step", milestones=[2, 4], gamma=0.1, warmup_epochs=0.5)
    spe = 10
    assert lr_at(0, cfg, spe) == pytest.approx(0.02)  # warm-up 5 steps
    assert lr_at(4, cfg, spe) == pytest.approx(0.1)
    assert lr_at(19, cfg, spe) == pytest.approx(0.1)
    assert lr_at(20, cfg, spe) == pytest.approx(0.01)
    assert lr_at(39, cfg, spe) == pytest.approx(0.01)
    assert lr_at(40, cfg, spe) == pytest.approx(0.001)


def test_scheduler_follows_lr_at_and_survives_state_dict() -> None:
    cfg = TrainConfig(epochs=3, lr=0.2, schedule="cosine", warmup_epochs=0.5)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, 4)
    for s in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(s, cfg, 4))
        opt.step()
        sched.step()
    path = Path(torch.__file__).parent  # unused; state dict must be weights_only-loadable:
    del path
    import io

    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["last_epoch"] == 12


# --------------------------------------------------------------------------------------------------------
# (6) config validation and "auto" resolution
# --------------------------------------------------------------------------------------------------------


def test_config_error_names_key_and_value() -> None:
    with pytest.raises(TrainConfigError) as e:
        TrainConfig.from_dict({"lr": -0.5, "optimizer": "adam"})
    msg = str(e.value)
    assert "train.lr = -0.5" in msg and "greater than 0" in msg
    assert "train.optimizer = 'adam'" in msg and "'sgd', 'adamw' or 'dot'" in msg

    with pytest.raises(TrainConfigError, match=r"train.warmup_epoch = 2: unknown key; did you mean warmup_epochs"):
        TrainConfig.from_dict({"warmup_epoch": 2})
    with pytest.raises(TrainConfigError, match=r"warmup_epochs=5.0 must be smaller than epochs=5"):
        TrainConfig.from_dict({"epochs": 5, "warmup_epochs": 5})
    with pytest.raises(TrainConfigError, match=r"milestones \[9.0\] are not before epochs=5"):
        TrainConfig.from_dict({"epochs": 5, "schedule": "step", "milestones": [2, 9]})
    with pytest.raises(TrainConfigError, match="train.channels_last = 'yes'"):
        TrainConfig.from_dict({"channels_last": "yes"})
    with pytest.raises(ValidationError, match="grad_clip"):  # plain construction raises pydantic's error
        TrainConfig(grad_clip=0)
    assert TrainConfig.from_dict({"channels_last": "false"}).channels_last is False


def test_auto_precision_and_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(cfg_mod, "cpu_supports_bf16", lambda: False)
    assert cfg_mod.resolve_precision("auto", cpu) is None
    assert cfg_mod.resolve_precision("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(cfg_mod, "cpu_supports_bf16", lambda: True)
    assert cfg_mod.resolve_precision("auto", cpu) is torch.bfloat16
    assert cfg_mod.resolve_precision("fp32", cpu) is None

    conv_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    conv_gn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
    conv_in = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4))
    mlp = nn.Linear(3, 4)
    rcl = cfg_mod.resolve_channels_last
    assert rcl("auto", cpu, torch.bfloat16, conv_bn) is True
    assert rcl("auto", cpu, None, conv_bn) is False  # fp32 on CPU: gain too small to default on
    assert rcl("auto", cuda, None, conv_bn) is True
    assert rcl("auto", cuda, torch.bfloat16, conv_gn) is False  # eager GroupNorm slow path
    assert rcl("auto", cpu, torch.bfloat16, conv_in) is False
    assert rcl("auto", cpu, torch.bfloat16, mlp) is False
    assert rcl("auto", cpu, torch.bfloat16, conv_bn, conv_gn) is False  # teacher counts too
    assert rcl(True, cpu, None, mlp) is True and rcl(False, cuda, torch.bfloat16, conv_bn) is False
    assert isinstance(cfg_mod.cpu_supports_bf16(), bool)
