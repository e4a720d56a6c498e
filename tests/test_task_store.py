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


def test_kd_reads_a_topk_store_sparsely_with_the_dense_loss(tmp_path):
    """KD from a top-k store uses the record as it is (no (N, V) teacher tensor) and gives the dense loss."""
    pytest.importorskip("transformers")
    import transformers

    from featdistill.losses.logits import kd_loss, kd_loss_topk

    task = build_task("causal-lm")
    torch.manual_seed(0)
    teacher = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=20, n_embd=16, n_layer=1, n_head=2))
    ds = _tokens(lm=True)
    build_store(teacher, ds, Augmenter(ViewConfig(), 0), 1, tmp_path / "s", task=task, topk=4, taps={}, dtype="float32")
    store = TeacherStore.open(tmp_path / "s")
    batch = next(iter(store_loader(store, ds, batch_size=8, policy="cycle", shuffle=False)))

    def student():
        torch.manual_seed(1)
        cfg = transformers.GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0, embd_pdrop=0)
        return transformers.GPT2LMHeadModel(cfg)  # no dropout: the two students must compute the same

    sparse = Distiller(student(), build_method("kd", temperature=2.0), CachedTeacher(store), task=task)
    assert sparse.teacher.sparse_logits  # the Distiller asked the store for the record itself
    dense_source = CachedTeacher(store)
    dense_source.only = None  # no narrowing: the store reconstructs dense log-probabilities
    dense = Distiller(student(), build_method("kd", temperature=2.0), dense_source, task=task)
    _, a = sparse(batch)
    _, b = dense(batch)
    # a near-uniform student: KL ≈ 3e-3 is a difference of close terms, so compare at float32 cancellation level
    assert a["kd"].item() == pytest.approx(b["kd"].item(), rel=1e-4, abs=1e-6)
    # the loss function itself, on random rows
    g = torch.Generator().manual_seed(2)
    z_s, z_t = torch.randn(6, 9, generator=g), 3 * torch.randn(6, 9, generator=g)
    logp = torch.log_softmax(z_t, 1)
    vals, idx = logp.topk(3, dim=1)
    rest = torch.logsumexp(logp.scatter(1, idx, float("-inf")), dim=1)
    from featdistill.cache import reconstruct_logp

    want = kd_loss(z_s, reconstruct_logp(vals, idx, rest, 9), 4.0)
    assert kd_loss_topk(z_s, vals, idx, rest, 4.0).item() == pytest.approx(want.item(), rel=1e-5)
