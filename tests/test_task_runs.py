"""Every task through the user paths: the CLI with a user's class_path student and an HF teacher in YAML,
exact resume after a crash, and torchrun (2 processes) matching 1 process on a non-classification task."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from featdistill.cli import main
from featdistill.config import parse_config
from featdistill.run import run_experiment
from featdistill.train import TrainerCallback

USER_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class BagOfTokens(nn.Module):
        '''A user's own sequence classifier: mean of token embeddings over non-padding tokens → linear.'''
        def __init__(self, vocab_size, num_classes, dim=16):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, dim)
            self.pool = nn.Identity()
            self.head = nn.Linear(dim, num_classes)
        def forward(self, input_ids, attention_mask=None):
            m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            h = (self.embed(input_ids) * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
            return self.head(self.pool(h))
    """
)

CLS_DATA = {
    "name": "pystdlib-cls",
    "kwargs": {"seq_len": 32, "max_chars_per_class": 30000, "vocab_size": 512},
    "batch_size": 32,
}
TRAIN = {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "epochs": 2, "progress": False}
BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_class_path_student_with_an_hf_teacher_from_yaml(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    (tmp_path / "userpkg_bag.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    teacher = {"experiment": "t", "run_dir": str(tmp_path / "teacher"), "data": CLS_DATA, "train": TRAIN}
    teacher["student"] = {"hf": {"config": BERT}}
    assert main(["train", str(_write(tmp_path / "teacher.yaml", teacher))]) == 0
    ckpt = str(tmp_path / "teacher" / "student.safetensors")
    kd = {
        "experiment": "kd",
        "run_dir": str(tmp_path / "kd"),
        "data": CLS_DATA,
        "train": TRAIN,
        "student": {"class_path": "userpkg_bag:BagOfTokens", "init_args": {"vocab_size": 512, "num_classes": 4}},
        "teacher": {"hf": {"config": BERT}, "checkpoint": ckpt},
        "method": {"name": "kd"},
    }
    assert main(["train", str(_write(tmp_path / "kd.yaml", kd)), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "task: sequence-classification" in out and "test top-1" in out
    result = json.loads((tmp_path / "kd" / "result.json").read_text())
    assert result["task"] == "sequence-classification" and 0 <= result["test_top1"] <= 1
    assert result["extra"]["teacher_test_top1"] > 0.25  # four balanced classes: chance is 0.25
    settings = json.loads((tmp_path / "kd" / "train_settings.json").read_text())
    assert settings["resolved"]["threads"] == 1 and settings["resolved"]["task"] == "sequence-classification"
    report = (tmp_path / "kd" / "report.md").read_text()
    assert "userpkg_bag:BagOfTokens" in report and "hf:bert" in report


class _Crash(TrainerCallback):
    def on_epoch_end(self, trainer, epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt("simulated crash after epoch 1")


TASK_RUNS = {
    "segmentation": {
        "data": {"name": "shapes-seg", "kwargs": {"n": 96, "size": 16}, "batch_size": 32, "augment": {"flip": True}},
        "student": {"model": "segnet", "kwargs": {"width": 4}},
    },
    "regression": {
        "data": {"name": "sunspots", "kwargs": {"window": 16, "horizon": 4}, "batch_size": 32},
        "student": {"model": "forecaster", "kwargs": {"hidden": [16]}},
    },
    "image-to-image": {
        "data": {"name": "mnist5k-sr", "subset": 256, "batch_size": 64},
        "student": {"model": "srnet", "kwargs": {"width": 4, "depth": 1}},
    },
    "causal-lm": {
        "data": {
            "name": "pystdlib-lm",
            "kwargs": {"seq_len": 16, "max_chars": 20000, "vocab_size": 300},
            "batch_size": 16,
            "subset": 64,
        },
        "student": {
            "hf": {"config": {"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 16}}
        },
    },
}


@pytest.mark.parametrize("task", sorted(TASK_RUNS))
def test_resume_after_a_crash_is_bit_identical_for_every_task(tmp_path, task):
    if task == "causal-lm":
        pytest.importorskip("transformers")
    base = {**TASK_RUNS[task], "train": {**TRAIN, "epochs": 2, "log_every": 2}}
    full = run_experiment(parse_config({**base, "run_dir": str(tmp_path / "full")}), progress=False)
    cfg = parse_config({**base, "run_dir": str(tmp_path / "crashed")})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, progress=False, callbacks=[_Crash()])
    resumed = run_experiment(cfg, resume=True, progress=False)
    a, b = load_file(full.run_dir / "student.safetensors"), load_file(resumed.run_dir / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{task}: resumed weights differ"
    assert resumed.test == full.test


def test_torchrun_two_processes_match_one_process_on_regression(tmp_path):
    from _torchrun import run_torchrun

    cfg = {
        "data": {"name": "sunspots", "kwargs": {"window": 16, "horizon": 4}, "batch_size": 32, "subset": 160},
        "student": {"model": "forecaster", "kwargs": {"hidden": [16]}},
        "train": {"epochs": 2, "lr": 0.05, "progress": False, "log_every": 1, "precision": "fp32"},
    }
    one = run_experiment(parse_config({**cfg, "run_dir": str(tmp_path / "one")}), progress=False)
    path = _write(tmp_path / "two.yaml", {**cfg, "run_dir": str(tmp_path / "two")})
    proc = run_torchrun("-m", "featdistill.cli", "train", str(path), timeout=240)
    if proc.returncode != 0 and "-m" in proc.stderr and "No such file" in proc.stderr:
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
             "featdistill.cli", "train", str(path)],
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(one.run_dir / "student.safetensors"), load_file(tmp_path / "two" / "student.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-5, f"2-process weights differ from 1-process by {diff:.3g}"
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["test_mse"] == pytest.approx(one.test["mse"], rel=1e-4) and "test_top1" not in two
    settings = json.loads((tmp_path / "two" / "train_settings.json").read_text())
    assert settings["resolved"]["world_size"] == 2 and settings["resolved"]["task"] == "regression"


def test_inspect_shows_a_class_path_and_an_hf_model(tmp_path, monkeypatch, capsys):
    (tmp_path / "userpkg_bag.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["inspect", "userpkg_bag:BagOfTokens", "--init-args", "{vocab_size: 50, num_classes: 3}", "--tokens", "6"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "embed" in out and "1×6×16" in out and "head" in out and "1×3" in out
    pytest.importorskip("transformers")
    hf = "{model_type: gpt2, vocab_size: 64, n_embd: 16, n_layer: 1, n_head: 2, n_positions: 16}"
    assert main(["inspect", "hf", "--hf", hf, "--task", "causal-lm", "--tokens", "5", "--depth", "3"]) == 0
    out = capsys.readouterr().out
    assert "transformer.h.0" in out and "1×5×64" in out and "parameters" in out
    assert main(["inspect", "hf", "--hf", "[1, 2]"]) == 2
    assert "--hf must be a mapping" in capsys.readouterr().err
