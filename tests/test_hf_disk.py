"""Hugging Face datasets saved on disk train through the config, memory-mapped, with clear refusals."""

from __future__ import annotations

import pytest
import torch

from featdistill.config import parse_config
from featdistill.data import DataFormatError, load_dataset

datasets = pytest.importorskip("datasets")


def _save(root, n_train: int = 96, n_test: int = 32) -> None:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> datasets.Dataset:
        ids = torch.randint(1, 20, (n, 8), generator=g)
        label = (ids[:, 0] % 2).tolist()  # learnable from the first token
        return datasets.Dataset.from_dict(
            {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "label": label},
            features=datasets.Features(
                {
                    "input_ids": datasets.Sequence(datasets.Value("int64")),
                    "attention_mask": datasets.Sequence(datasets.Value("int64")),
                    "label": datasets.ClassLabel(names=["even", "odd"]),
                }
            ),
        )

    datasets.DatasetDict({"train": split(n_train), "test": split(n_test)}).save_to_disk(str(root))


def test_hf_disk_rows_become_keyword_batches(tmp_path):
    _save(tmp_path / "ds")
    train, test = load_dataset("hf-disk", root=str(tmp_path / "ds"))
    assert len(train) == 96 and train.classes == ["even", "odd"] and train.image_shape == (8,)
    b = train.batch(torch.tensor([3, 0, 5]), torch.tensor([-1, -1, -1]), None)
    assert set(b["input"]) == {"input_ids", "attention_mask"} and b["input"]["input_ids"].shape == (3, 8)
    assert b["target"].tolist() == (b["input"]["input_ids"][:, 0] % 2).tolist()
    assert train.fingerprint() != test.fingerprint()


def test_hf_disk_trains_a_bert_from_config(tmp_path):
    pytest.importorskip("transformers")
    from featdistill.run import run_experiment

    _save(tmp_path / "ds")
    bert = {"model_type": "bert", "vocab_size": 20, "hidden_size": 16, "num_hidden_layers": 1}
    bert.update(num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "task": "sequence-classification",
        "data": {"name": "hf-disk", "root": str(tmp_path / "ds"), "batch_size": 16},
        "student": {"hf": {"config": bert}},
        "train": {"epochs": 1, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "progress": False},
    }
    result = run_experiment(parse_config(cfg), progress=False)
    assert result.task == "sequence-classification" and result.test["n"] == 32


def test_hf_disk_refusals_name_what_exists(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_to_disk"):
        load_dataset("hf-disk", root=str(tmp_path / "missing"))
    _save(tmp_path / "ds")
    with pytest.raises(DataFormatError, match=r"splits \['test', 'train'\], not 'validation'"):
        load_dataset("hf-disk", root=str(tmp_path / "ds"), test_split="validation")
    with pytest.raises(DataFormatError, match="no target column 'labels'"):
        load_dataset("hf-disk", root=str(tmp_path / "ds"), target_column="labels")
