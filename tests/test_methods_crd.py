"""CRD: the NCE pieces against hand computation, the memory banks as checkpointed state, exact resume, DDP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from featdistill.distiller import Distiller
from featdistill.losses.contrastive import (
    contrast_scores,
    l2_normalize,
    momentum_rows,
    nce_loss,
    sample_contrast_indices,
)
from featdistill.methods import build_method
from featdistill.methods.crd import CRD, first_occurrences
from featdistill.models import build_model
from featdistill.train import checkpoint as ckpt

D64 = torch.float64


# -- loss pieces ------------------------------------------------------------------------------------------
def test_l2_normalize_unit_rows_and_dtype():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=D64)
    y = l2_normalize(x)
    assert y.dtype == D64
    assert torch.equal(y, torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=D64))


def test_contrast_scores_by_hand():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=D64)
    anchor = torch.tensor([[0.6, 0.8]], dtype=D64)
    idx = torch.tensor([[2, 0, 1]])
    s = contrast_scores(anchor, memory, idx, temperature=0.5)
    want = [math.exp(1.0 / 0.5), math.exp(0.6 / 0.5), math.exp(0.8 / 0.5)]
    assert s.dtype == D64 and s.shape == (1, 3)
    assert s[0].tolist() == pytest.approx(want, rel=1e-14)


def test_nce_loss_by_hand():
    # B = 2, K = 2 negatives, N = 10 → m·Pn = 0.2
    p = torch.tensor([[0.5, 0.1, 0.3], [0.05, 0.2, 0.0]], dtype=D64)
    e, mpn = 1e-7, 0.2
    rows = []
    for r in p.tolist():
        rows.append(math.log(r[0] / (r[0] + mpn + e)) + sum(math.log(mpn / (q + mpn + e)) for q in r[1:]))
    want = -sum(rows) / 2
    got = nce_loss(p, n_data=10)
    assert got.dtype == D64 and got.ndim == 0
    assert got.item() == pytest.approx(want, rel=1e-13)


def test_nce_loss_gradient_direction():
    """Raising the positive's score lowers the loss; raising a negative's raises it; 0 is its infimum."""
    p = torch.tensor([[0.3, 0.2, 0.4, 0.1]], dtype=D64, requires_grad=True)
    nce_loss(p, n_data=100).backward()
    assert p.grad[0, 0] < 0 and (p.grad[0, 1:] > 0).all()
    best = nce_loss(torch.tensor([[1e6, 0.0, 0.0, 0.0]], dtype=D64), n_data=100)
    assert 0 <= best.item() < 1e-4 < nce_loss(p.detach(), n_data=100).item()


def test_momentum_rows_by_hand():
    old = torch.tensor([[1.0, 0.0]], dtype=D64)
    new = torch.tensor([[0.0, 1.0]], dtype=D64)
    r = momentum_rows(old, new, 0.5)
    s = 1 / math.sqrt(2)
    assert r.dtype == D64 and r[0].tolist() == pytest.approx([s, s], rel=1e-15)
    r = momentum_rows(old * 3, new, 0.25)  # 0.75, 0.75 → normalised
    assert r[0].tolist() == pytest.approx([s, s], rel=1e-15)
    assert torch.equal(momentum_rows(old, new, 1.0), old)


def _labels(n: int = 40, c: int = 4) -> torch.Tensor:
    return torch.arange(n) % c


def test_exact_sampler_positive_first_other_class_distinct_seeded():
    labels = _labels()
    idx = torch.tensor([0, 5, 9, 38])
    g = torch.Generator().manual_seed(3)
    out = sample_contrast_indices(idx, k=20, n_data=40, generator=g, labels=labels)
    assert out.shape == (4, 21) and torch.equal(out[:, 0], idx)
    neg = out[:, 1:]
    assert (labels[neg] != labels[idx][:, None]).all()  # negatives from other classes only
    assert all(len(set(r.tolist())) == 20 for r in neg)  # K ≤ pool (30): without replacement
    again = sample_contrast_indices(idx, 20, 40, torch.Generator().manual_seed(3), labels=labels)
    assert torch.equal(out, again)
    other = sample_contrast_indices(idx, 20, 40, torch.Generator().manual_seed(4), labels=labels)
    assert not torch.equal(out, other)


def test_exact_sampler_uniform_over_other_classes():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    g = torch.Generator().manual_seed(0)
    out = sample_contrast_indices(torch.tensor([0] * 2000), k=3, n_data=6, generator=g, labels=labels)
    counts = torch.bincount(out[:, 1:].reshape(-1), minlength=6).double()
    assert counts[:2].sum() == 0  # never the anchor's class
    assert (counts[2:] / counts.sum() - 0.25).abs().max() < 0.02  # 4 candidates, uniform


def test_sampler_with_replacement_relax_and_uniform_modes():
    labels = _labels(12, 3)  # pool of 8 other-class samples
    idx = torch.tensor([1, 2])
    g = torch.Generator().manual_seed(0)
    out = sample_contrast_indices(idx, k=50, n_data=12, generator=g, labels=labels)
    assert out.shape == (2, 51) and (labels[out[:, 1:]] != labels[idx][:, None]).all()
    relax = sample_contrast_indices(idx, 5, 12, torch.Generator().manual_seed(0), labels=labels, mode="relax")
    assert torch.equal(labels[relax[:, 0]], labels[idx])
    uni = sample_contrast_indices(idx, 7, 12, torch.Generator().manual_seed(0), mode="uniform")
    assert torch.equal(uni[:, 0], idx) and uni.min() >= 0 and uni.max() < 12
    with pytest.raises(ValueError, match="labels"):
        sample_contrast_indices(idx, 5, 12, g)


def test_first_occurrences():
    ids = torch.tensor([4, 2, 4, 7, 2])
    assert first_occurrences(ids).tolist() == [1, 0, 3]


# -- the recipe ---------------------------------------------------------------------------------------------
N, C = 24, 4


def _batch(ids: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    sid = torch.tensor(ids)
    return {
        "input": torch.randn(len(ids), 3, 16, 16, generator=g),
        "target": sid % C,
        "sample_id": sid,
        "view_id": torch.zeros(len(ids), dtype=torch.long),
    }


def _loader() -> list[dict[str, torch.Tensor]]:
    return [_batch(list(range(i, i + 6)), seed=i) for i in range(0, N, 6)]


def _distiller(seed: int = 0, **kw) -> tuple[Distiller, CRD]:
    torch.manual_seed(seed)
    teacher = build_model("resnet14", num_classes=C, image_size=16)
    student = build_model("resnet8", num_classes=C, image_size=16)
    method = build_method("crd", k=kw.pop("k", 8), feat_dim=kw.pop("feat_dim", 16), **kw)
    d = Distiller(student, method, teacher)
    d.fit_data(_loader(), C)
    d.prepare(_batch([0, 1]), seed=seed)
    return d, method


def test_recipe_trains_and_updates_only_the_batch_rows():
    d, m = _distiller()
    assert m.memory_s.shape == (N, 16) and m.labels.tolist() == (torch.arange(N) % C).tolist()
    stdv = 1 / math.sqrt(16 / 3)
    assert m.memory_s.abs().max() <= stdv and float(m.z[0]) == -1.0
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1)
    before_s, before_t = m.memory_s.clone(), m.memory_t.clone()
    batch = _batch([3, 7, 11, 20])
    _, losses = d(batch)
    assert set(losses) == {"ce", "crd"} and torch.isfinite(losses["crd"])
    sum(losses.values()).backward()
    assert d.method.adapters["embed_t"].linear.weight.grad.abs().sum() > 0  # the teacher head trains too
    opt.step()
    z1 = m.z.clone()
    assert (z1 > 0).all()
    changed = (m.memory_s != before_s).any(1)
    assert changed.nonzero().flatten().tolist() == [3, 7, 11, 20]
    assert ((m.memory_t != before_t).any(1) == changed).all()
    assert torch.allclose(m.memory_s[[3, 7, 11, 20]].norm(dim=1), torch.ones(4, dtype=m.memory_s.dtype))
    d(_batch([1, 2]))
    assert torch.equal(m.z, z1)  # Z is fixed at the first step


def test_recipe_loss_matches_the_pieces():
    d, m = _distiller()
    d.eval()  # no bank update: the loss can be recomputed from the same state
    batch = _batch([0, 5, 9])
    _, s = d._student_taps(batch["input"])
    t = d.teacher(batch)
    v_s = m.adapters["embed_s"](s["emb"])
    v_t = m.adapters["embed_t"](t["emb"].clone())
    cidx = m.contrast_indices(batch, 0.0)
    out_s = torch.exp(torch.einsum("bkd,bd->bk", m.memory_t[cidx], v_s) / 0.07)
    out_t = torch.exp(torch.einsum("bkd,bd->bk", m.memory_s[cidx], v_t) / 0.07)
    z_s, z_t = out_s.mean() * N, out_t.mean() * N
    want = nce_loss(out_s / z_s, N) + nce_loss(out_t / z_t, N)
    _, losses = d(batch)
    assert losses["crd"].item() == pytest.approx(0.8 * want.item(), rel=1e-5)
    assert torch.equal(m.contrast_indices(batch, 0.0), cidx)  # reproducible from the batch
    assert not torch.equal(m.contrast_indices(batch, 1.0), cidx)  # another epoch, other negatives


def test_recipe_float64():
    d, m = _distiller()
    m.double()
    feats = {"emb": torch.randn(3, 64, dtype=D64)}
    out = m(feats, {"emb": torch.randn(3, 64, dtype=D64)}, _batch([0, 1, 2]), 0.0)
    assert out["crd"].dtype == D64 and m.memory_s.dtype == D64


def test_bank_is_checkpointed_and_resumes_bit_identically():
    d, m = _distiller()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1, momentum=0.9)
    steps = [_batch([0, 4, 8, 12], 1), _batch([2, 3, 17, 23], 2), _batch([5, 6, 7, 19], 3)]
    for b in steps[:2]:
        _, losses = d(b, epoch=0.5)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    state = ckpt.trainable_state_dict(d)  # what the Trainer's checkpoint stores
    assert {"method.memory_s", "method.memory_t", "method.z"} <= set(state)
    assert "method.labels" not in state  # derived from the data by fit, not checkpointed
    saved = {k: v.clone() for k, v in state.items()}
    opt_state = opt.state_dict()

    d2, m2 = _distiller()  # a fresh process of the same run (same config seed, same teacher checkpoint) …
    with torch.no_grad():  # … whose trainable state is anything until the checkpoint is loaded
        for p in d2.trainable_parameters():
            p.add_(torch.randn_like(p))
        m2.memory_s.normal_()
        m2.z.fill_(-1.0)
    d2.load_state_dict(saved, strict=False)
    opt2 = torch.optim.SGD(d2.trainable_parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(opt_state)
    for dd, oo in ((d, opt), (d2, opt2)):
        _, losses = dd(steps[2], epoch=1.0)
        oo.zero_grad()
        sum(losses.values()).backward()
        oo.step()
        dd._last = {k: v.detach().clone() for k, v in losses.items()}
    assert all(torch.equal(d._last[k], d2._last[k]) for k in d._last)
    for key in ("memory_s", "memory_t", "z"):
        assert torch.equal(getattr(m, key), getattr(m2, key))


def test_bank_size_and_labels_errors():
    torch.manual_seed(0)
    m = build_method("crd", k=4, feat_dim=8)
    d = Distiller(build_model("resnet8", num_classes=C, image_size=16), m, build_model("resnet8", num_classes=C))
    with pytest.raises(RuntimeError, match="num_samples"):
        d(_batch([0, 1]))
    m2 = build_method("crd", k=4, feat_dim=8, num_samples=N)
    d2 = Distiller(build_model("resnet8", num_classes=C, image_size=16), m2, build_model("resnet8", num_classes=C))
    with pytest.raises(RuntimeError, match="fit"):
        d2(_batch([0, 1]))
    m3 = build_method("crd", k=4, feat_dim=8, num_samples=N, mode="uniform")
    d3 = Distiller(build_model("resnet8", num_classes=C, image_size=16), m3, build_model("resnet8", num_classes=C))
    assert torch.isfinite(d3(_batch([0, 1]))[1]["crd"])
    with pytest.raises(ValueError, match="num_samples=24"):
        m3.fit(None, [_batch(list(range(30)))])


# -- DDP -----------------------------------------------------------------------------------------------------
WORKER = Path(__file__).with_name("_crd_ddp_worker.py")


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="gloo is not available")
def test_ddp_every_rank_holds_the_same_bank(tmp_path: Path):
    """2 gloo ranks, each its own half of a batch: both banks take every rank's rows and end equal; and equal to
    one process applying the same embeddings at once."""
    from _torchrun import run_torchrun

    proc = run_torchrun(str(WORKER), str(tmp_path), timeout=90)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in ("memory_s", "memory_t", "z"):
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(a["memory_s"], a["single_s"]) and torch.equal(a["memory_t"], a["single_t"])
    assert torch.equal(a["z"], a["single_z"])
    assert a["updated"].tolist() == [0, 1, 2, 3, 10, 11, 12, 13]


# -- through run_experiment: the Trainer's checkpoint, a crash and an exact resume ----------------------------
def test_run_crash_and_resume_is_bit_identical(tmp_path: Path):
    from safetensors.torch import load_file, save_file

    from featdistill.config import parse_config
    from featdistill.run import run_experiment
    from featdistill.train import TrainerCallback

    class Crash(TrainerCallback):
        def on_epoch_end(self, trainer, epoch, record):
            if epoch == 1:
                raise KeyboardInterrupt("simulated crash after epoch 1")

    torch.manual_seed(0)
    save_file(
        build_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=[32]).state_dict(),
        str(tmp_path / "teacher.safetensors"),
    )
    base = {
        "experiment": "crd-resume",
        "data": {"name": "digits", "batch_size": 64, "augment": {"pad_crop": 1}, "subset": 320},
        "teacher": {"model": "mlp", "kwargs": {"hidden": [32]}, "checkpoint": str(tmp_path / "teacher.safetensors")},
        "student": {"model": "mlp", "kwargs": {"hidden": [16]}},
        "method": {"name": "crd", "params": {"k": 32, "feat_dim": 8}},
        "train": {"epochs": 2, "lr": 0.1, "progress": False},
    }
    full = run_experiment(parse_config({**base, "run_dir": str(tmp_path / "full")}), progress=False)
    cfg = parse_config({**base, "run_dir": str(tmp_path / "crashed")})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, progress=False, callbacks=[Crash()])
    resumed = run_experiment(cfg, resume=True, progress=False)
    a, b = load_file(full.run_dir / "student.safetensors"), load_file(resumed.run_dir / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca = ckpt.load_checkpoint(full.run_dir / "checkpoints" / "epoch_0002.pt")["model"]
    cb = ckpt.load_checkpoint(resumed.run_dir / "checkpoints" / "epoch_0002.pt")["model"]
    for key in ("method.memory_s", "method.memory_t", "method.z"):
        assert torch.equal(ca[key], cb[key]), key
    c1 = ckpt.load_checkpoint(full.run_dir / "checkpoints" / "epoch_0001.pt")["model"]
    assert not torch.equal(c1["method.memory_s"], ca["method.memory_s"])  # the bank moved in epoch 2


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="gloo is not available")
def test_ddp_run_through_the_trainer_keeps_identical_banks(tmp_path: Path):
    """``featdistill`` under torchrun (Trainer + DDP): after every epoch both ranks hold the same banks and Z, the
    banks moved, and rank 0's checkpoint holds exactly them."""
    from safetensors.torch import save_file

    from _torchrun import run_torchrun

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_file(build_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=[32]).state_dict(), str(teacher))
    proc = run_torchrun(str(Path(__file__).with_name("_crd_trainer_ddp_worker.py")), str(tmp_path), str(teacher))
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    banks = {
        (r, e): torch.load(tmp_path / f"banks_rank{r}_epoch{e}.pt", weights_only=True) for r in (0, 1) for e in (1, 2)
    }
    for e in (1, 2):
        for k in ("memory_s", "memory_t", "z"):
            assert torch.equal(banks[(0, e)][k], banks[(1, e)][k]), (e, k)
    assert not torch.equal(banks[(0, 1)]["memory_s"], banks[(0, 2)]["memory_s"])
    # kept equal by the method itself, so DDP does not re-broadcast them every step
    assert {"method.memory_s", "method.memory_t", "method.z", "method.labels"} <= set(banks[(0, 1)]["ddp_ignored"])
    settings = json.loads((tmp_path / "run" / "train_settings.json").read_text())
    assert settings["resolved"]["world_size"] == 2
    saved = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_0002.pt")["model"]
    assert torch.equal(saved["method.memory_s"], banks[(0, 2)]["memory_s"])
