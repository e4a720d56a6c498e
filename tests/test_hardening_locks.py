"""Hardening (#10), locks: one writer per run directory and per store directory (featdistill.locks, filelock)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from featdistill.cache import TeacherStore, build_store, verify_store
from featdistill.cli import main
from featdistill.config import parse_config
from featdistill.data.base import ImageDataset
from featdistill.data.views import Augmenter, ViewConfig
from featdistill.locks import DirectoryLockedError, directory_lock
from featdistill.models import build_model
from featdistill.run import run_experiment
from featdistill.seeding import seeded

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {
    "experiment": "t",
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64, "subset": 200},
    "student": {"model": "mlp", "kwargs": {"hidden": [16]}},
    "method": {"name": "none"},
    "train": {"epochs": 1, "lr": 0.1, "progress": False},
}


def _cfg(tmp_path: Path, run: Path, **changes: object) -> Path:
    data = {**BASE, "run_dir": str(run), **changes}
    p = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_filelock_is_a_declared_dependency():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"filelock' in deps


def test_second_run_into_a_running_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    started, release = threading.Event(), threading.Event()
    result: dict = {}

    class Hold:
        def on_step_end(self, trainer, step):
            started.set()
            assert release.wait(60)

        def on_epoch_end(self, trainer, epoch, record):
            pass

    def first() -> None:
        try:
            result["res"] = run_experiment(parse_config({**BASE, "run_dir": str(run)}), callbacks=[Hold()])
        except BaseException as e:  # pragma: no cover - reported below
            result["err"] = e

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(120), result
        written = (run / "config.yaml").read_bytes()
        assert yaml.safe_load(written)["seed"] == 0
        # seed 1 into the same directory while seed 0 runs: refused, nothing of it written
        assert main(["train", str(_cfg(tmp_path, run, seed=1))]) == 2
        err = capsys.readouterr().err
        assert "is in use by another process" in err and str(run) in err and "Traceback" not in err
        assert (run / "config.yaml").read_bytes() == written
        assert main(["train", str(_cfg(tmp_path, run, seed=1)), "--resume"]) == 2  # resume waits its turn too
    finally:
        release.set()
        t.join(120)
    assert "err" not in result, result.get("err")
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 0


def test_lock_held_by_another_process_names_it(tmp_path, capsys):
    run = tmp_path / "run"
    code = (
        "import sys, time\nfrom featdistill.locks import directory_lock\n"
        f"with directory_lock({str(run)!r}, 'featdistill train'):\n"
        "    print('held', flush=True)\n    sys.stdin.readline()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert main(["train", str(_cfg(tmp_path, run))]) == 2
        err = capsys.readouterr().err
        assert f"pid {proc.pid}" in err and "featdistill train" in err
        assert not (run / "config.yaml").exists()
    finally:
        proc.communicate("\n", timeout=60)
    # the holder is gone: the directory is free again
    assert main(["train", str(_cfg(tmp_path, run))]) == 0


def test_config_yaml_is_written_only_once_the_run_is_accepted(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(_cfg(tmp_path, run))]) == 0
    before = (run / "config.yaml").read_bytes()
    # a re-run without --resume: refused before anything is built, config.yaml untouched
    assert main(["train", str(_cfg(tmp_path, run, seed=3))]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err
    assert (run / "config.yaml").read_bytes() == before
    # a resume the checkpoint does not fit (train.lr changed): refused by the Trainer, config.yaml untouched
    changed = {**BASE["train"], "lr": 0.5}
    assert main(["train", str(_cfg(tmp_path, run, train=changed)), "--resume"]) == 2
    assert "config changed" in capsys.readouterr().err
    assert (run / "config.yaml").read_bytes() == before


def test_directory_lock_refuses_or_times_out(tmp_path):
    with directory_lock(tmp_path, "first"):
        with pytest.raises(DirectoryLockedError, match="in use by another process"):
            with directory_lock(tmp_path, "second"):
                pass
        messages: list = []
        with pytest.raises(DirectoryLockedError, match="after waiting 0.2 s"):
            with directory_lock(tmp_path, "second", timeout=0.2, on_wait=messages.append):
                pass
        assert messages and "waiting" in messages[0]
    with directory_lock(tmp_path, "again"):  # released
        pass


# -- store builds ------------------------------------------------------------------------------------------
def _toy():
    import torch

    g = torch.Generator().manual_seed(0)
    data = ImageDataset(
        images=torch.randint(0, 256, (24, 3, 8, 8), generator=g, dtype=torch.uint8),
        targets=torch.randint(0, 10, (24,), generator=g),
        classes=[str(i) for i in range(10)],
        name="toy",
    )
    with seeded(0, "teacher"):
        teacher = build_model("resnet8", num_classes=10, in_channels=3, image_size=8).eval()
    return teacher, data, Augmenter(ViewConfig(pad_crop=2, flip=True), seed=7)


def test_two_store_builds_into_one_directory_leave_one_verified_store(tmp_path):
    teacher, data, aug = _toy()
    out = tmp_path / "store"
    first_started, results, errors = threading.Event(), {}, []

    def slow(s: int) -> None:
        first_started.set()
        threading.Event().wait(0.3)  # hold the lock long enough for the second build to arrive

    def build(name: str, **kw) -> None:
        try:
            results[name] = build_store(teacher, data, aug, 2, out, shard_size=8, batch_size=16, **kw)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    a = threading.Thread(target=build, args=("a",), kwargs={"on_shard": slow})
    a.start()
    assert first_started.wait(60)
    with pytest.raises(DirectoryLockedError, match="teacher store build refused"):
        build_store(teacher, data, aug, 2, out, shard_size=8, lock_timeout=0)
    b = threading.Thread(target=build, args=("b",))
    b.start()
    a.join(120)
    b.join(120)
    assert not errors, errors
    assert results["a"].complete and results["a"].shards_built == [0, 1, 2]
    assert results["b"].complete and results["b"].shards_built == [] and results["b"].shards_skipped == [0, 1, 2]
    report = verify_store(out)
    assert report["ok"] and report["complete"] and report["files"] == 3 * 2, report
    TeacherStore.open(out, verify="sha256")
