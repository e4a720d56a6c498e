"""The teacher store for every task: per-position (top-k) logits and value outputs replay the live teacher.

For each task a store built in float32 with full predictions gives the Distiller exactly the live loss; a top-k
store approximates it (per position, with the remaining mass), and its bytes per position are recorded.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featdistill.cache import CachedTeacher, TeacherStore, build_store, store_loader
from featdistill.data import Augmenter, ViewConfig
from featdistill.data.arrays import ArrayDataset
from featdistill.distiller import Distiller
from featdistill.methods import build_method
from featdistill.models import build_model
from featdistill.tasks import build_task


class _Tagger(nn.Module):
    def __init__(self, vocab: int = 20, classes: int = 5, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        return {"logits": self.head(torch.tanh(self.body(self.embed(input_ids))))}


def _tokens(n: int = 24, length: int = 7, vocab: int = 20, classes: int = 5, lm: bool = False) -> ArrayDataset:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 5:] = 0  # some padded rows
    ids = ids * mask
    labels = torch.where(mask.bool(), ids if lm else ids % classes, torch.full_like(ids, -100))
    return ArrayDataset({"input_ids": ids, "attention_mask": mask}, labels, "tokens", target_kind="tokens")


def _live_and_cached(tmp_path, task, teacher, student_fn, dataset, method="kd", augmenter=None, topk=None, **kw):
    augmenter = augmenter or Augmenter(ViewConfig(), seed=0)
    build_store(
        teacher, dataset, augmenter, 2, tmp_path / "store", task=task, topk=topk, dtype="float32", taps={}, **kw
    )
    store = TeacherStore.open(tmp_path / "store")
    loader = store_loader(store, dataset, batch_size=8, policy="cycle", shuffle=False)
    batch = next(iter(loader))
    torch.manual_seed(0)
    live = Distiller(student_fn(), build_method(method), teacher, task=task)
    torch.manual_seed(0)
    cached = Distiller(student_fn(), build_method(method), CachedTeacher(store), task=task)
    _, a = live(batch)
    _, b = cached(batch)
    return a, b, store


def test_token_classification_store_is_exact_in_fp32_and_close_in_topk(tmp_path):
    task = build_task("token-classification")
    torch.manual_seed(1)
    teacher = _Tagger(dim=16)
    a, b, store = _live_and_cached(tmp_path, task, teacher, lambda: _Tagger(dim=4), _tokens())
    assert b["kd"].item() == pytest.approx(a["kd"].item(), rel=1e-5)
    assert store.manifest["logits"]["positions"] == [7]
    a2, b2, store2 = _live_and_cached(tmp_path / "k", task, teacher, lambda: _Tagger(dim=4), _tokens(), topk=2)
    assert b2["kd"].item() == pytest.approx(a2["kd"].item(), rel=0.2)  # top-2 of 5 classes, per token
    # per token: 2 fp32 log-probs + 2 int16 indices + the remaining mass = 2·4 + 2·2 + 4 bytes
    assert store2.manifest["prediction_bytes_per_position"] == 16


def test_causal_lm_store_replays_per_token_logits(tmp_path):
    pytest.importorskip("transformers")
    import transformers

    task = build_task("causal-lm")

    def gpt(width: int):
        torch.manual_seed(width)
        cfg = transformers.GPT2Config(vocab_size=20, n_embd=width, n_layer=1, n_head=2, n_positions=16)
        return transformers.GPT2LMHeadModel(cfg)

    a, b, store = _live_and_cached(tmp_path, task, gpt(16), lambda: gpt(8), _tokens(lm=True), method="dkd")
    assert b["dkd"].item() == pytest.approx(a["dkd"].item(), rel=1e-5)
    assert store.manifest["logits"]["source_shape"] == [7, 20]


def test_segmentation_store_with_augmented_views_replays_pixels_and_masks(tmp_path):
    from featdistill.data.segmentation import load_shapes_segmentation

    train, _ = load_shapes_segmentation(n=24, size=16)
    task = build_task("segmentation")
    torch.manual_seed(0)
    teacher = build_model("segnet", num_classes=train.num_classes, in_channels=3, image_size=16, width=8)
    aug = Augmenter(ViewConfig(pad_crop=2, flip=True), seed=0)

    def student():
        return build_model("segnet", num_classes=train.num_classes, in_channels=3, image_size=16, width=4)

    a, b, store = _live_and_cached(tmp_path, task, teacher, student, train, augmenter=aug)
    assert b["kd"].item() == pytest.approx(a["kd"].item(), rel=1e-5) and a["ce"].item() == b["ce"].item()
    # logits stored at a quarter of the pixels: the task upsamples them to the mask; close, not exact
    a2, b2, s2 = _live_and_cached(tmp_path / "small", task, teacher, student, train, augmenter=aug, logits_size=(8, 8))
    assert s2.manifest["logits"]["positions"] == [8, 8]
    assert b2["kd"].item() == pytest.approx(a2["kd"].item(), rel=0.5)


def test_regression_and_image_outputs_are_stored_in_full(tmp_path):
    task = build_task("regression")
    g = torch.Generator().manual_seed(0)
    ds = ArrayDataset(
        torch.randn(16, 6, 2, generator=g), torch.randn(16, 3, 2, generator=g), "series", target_kind="series"
    )
    torch.manual_seed(0)
    teacher = build_model("forecaster", window=6, num_features=2, horizon=3, hidden=(16,))

    def student():
        return build_model("forecaster", window=6, num_features=2, horizon=3, hidden=(4,))

    a, b, store = _live_and_cached(tmp_path, task, teacher, student, ds, method="output")
    assert b["output"].item() == pytest.approx(a["output"].item(), rel=1e-6)
    assert store.manifest["logits"]["family"] == "output"
    with pytest.raises(ValueError, match="topk compresses class distributions"):
        build_store(teacher, ds, Augmenter(ViewConfig(), 0), 1, tmp_path / "bad", task=task, topk=2, taps={})
