"""Hardening (#10), checkpoints: written with a content sha256; a damaged newest one falls back to the previous
good one (with a warning naming both); a damaged only one is refused with the reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from _trainer_toys import ToyDistiller, ToyLoader, make_data
from featdistill.cli import main
from featdistill.train import CheckpointError, TrainConfig, Trainer, TrainerCallback
from featdistill.train.checkpoint import (
    checkpoint_path,
    content_sha256,
    latest_checkpoint,
    load_checkpoint,
    trainable_state_dict,
)

pytestmark = pytest.mark.usefixtures("one_thread")
N_TRAIN, BATCH = 40, 8
STEPS = N_TRAIN // BATCH


def _cfg() -> TrainConfig:
    return TrainConfig(
        epochs=3, optimizer="sgd", lr=0.1, momentum=0.9, schedule="cosine", warmup_epochs=0.5, precision="fp32",
        device="cpu", progress=False, seed=7, keep_checkpoints=3,
    )  # fmt: skip


def _loaders() -> tuple[ToyLoader, ToyLoader]:
    x, y = make_data(N_TRAIN)
    xe, ye = make_data(20, seed=1)
    return ToyLoader(x, y, BATCH, seed=5), ToyLoader(xe, ye, 10, shuffle=False)


class _Killed(Exception):
    pass


class _KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if step == self.step:
            raise _Killed


def _killed_run(run: Path, after_epochs: int) -> None:
    train, ev = _loaders()
    with pytest.raises(_Killed):
        Trainer(ToyDistiller(seed=0), train, ev, _cfg(), run, callbacks=[_KillAt(after_epochs * STEPS + 1)]).fit()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> dict:
    d = ToyDistiller(seed=0)
    train, ev = _loaders()
    Trainer(d, train, ev, _cfg(), tmp_path_factory.mktemp("full")).fit()
    return trainable_state_dict(d)


def _tensor_offset(path: Path) -> int:
    """The byte offset of a weight's data inside the checkpoint file (to flip a bit of a weight itself)."""
    state = load_checkpoint(path)["model"]
    w = max((v for v in state.values() if v.is_floating_point()), key=lambda v: v.numel())
    raw = path.read_bytes()
    at = raw.find(w.contiguous().view(torch.uint8).numpy().tobytes())
    assert at > 0
    return at


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[_tensor_offset(path) + 1] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _zero_length(path: Path) -> None:
    path.write_bytes(b"")


DAMAGE = {"flip": _flip, "truncate": _truncate, "zero-length": _zero_length}
REASON = {"flip": "content sha256", "truncate": "corrupt or truncated", "zero-length": "corrupt or truncated"}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_falls_back_to_the_previous_good_one(tmp_path, full_run, caplog, kind):
    run = tmp_path / "run"
    _killed_run(run, after_epochs=2)
    newest, previous = checkpoint_path(run, 2), checkpoint_path(run, 1)
    DAMAGE[kind](newest)
    with caplog.at_level(logging.WARNING, logger="featdistill.train.checkpoint"):
        assert latest_checkpoint(run) == previous
        train, ev = _loaders()
        resumed_d = ToyDistiller(seed=99)
        res = Trainer(resumed_d, train, ev, _cfg(), run, resume=True).fit()
    warned = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert warned and str(newest) in warned[0] and str(previous) in warned[0] and REASON[kind] in warned[0]
    assert res.resumed_from == previous and res.epochs_completed == 3
    got = trainable_state_dict(resumed_d)  # recovered exactly: epoch 2 is redone from epoch 1
    assert all(torch.equal(full_run[k], got[k]) for k in full_run)
    assert load_checkpoint(newest)["epoch"] == 2  # the damaged file was replaced by a good one


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_only_checkpoint_is_refused_with_the_reason(tmp_path, kind):
    run = tmp_path / "run"
    _killed_run(run, after_epochs=1)
    only = checkpoint_path(run, 1)
    DAMAGE[kind](only)
    train, ev = _loaders()
    with pytest.raises(CheckpointError, match="no intact checkpoint") as err:
        Trainer(ToyDistiller(seed=0), train, ev, _cfg(), run, resume=True).fit()
    assert "epoch_0001.pt" in str(err.value) and REASON[kind] in str(err.value)


def test_no_single_byte_flip_is_resumed_as_different_content(tmp_path):
    run = tmp_path / "run"
    _killed_run(run, after_epochs=1)
    path = checkpoint_path(run, 1)
    good = path.read_bytes()
    want = content_sha256(load_checkpoint(path))
    refused = 0
    for i in range(0, len(good), max(1, len(good) // 40)):
        raw = bytearray(good)
        raw[i] ^= 0x04
        path.write_bytes(bytes(raw))
        try:
            assert content_sha256(load_checkpoint(path)) == want  # loads only when the content is intact
        except CheckpointError:
            refused += 1
    assert refused > 0


def test_the_checksum_is_recorded_and_old_checkpoints_still_load(tmp_path, caplog):
    run = tmp_path / "run"
    _killed_run(run, after_epochs=1)
    path = checkpoint_path(run, 1)
    obj = torch.load(path, weights_only=True)
    assert obj["sha256"] == content_sha256(obj)
    del obj["sha256"]  # what an older featdistill wrote
    torch.save(obj, path)
    with caplog.at_level(logging.WARNING, logger="featdistill.train.checkpoint"):
        assert load_checkpoint(path)["epoch"] == 1
    assert any("no checksum" in r.getMessage() for r in caplog.records)


def test_cli_resume_of_a_damaged_only_checkpoint_exits_2(tmp_path, capsys):
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "data": {"name": "digits", "batch_size": 64, "subset": 200},
        "student": {"model": "mlp", "kwargs": {"hidden": [16]}},
        "method": {"name": "none"},
        "train": {"epochs": 1, "lr": 0.1, "progress": False},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(p)]) == 0
    _flip(checkpoint_path(tmp_path / "run", 1))
    capsys.readouterr()
    assert main(["train", str(p), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "epoch_0001.pt" in err and "content sha256" in err and "Traceback" not in err
