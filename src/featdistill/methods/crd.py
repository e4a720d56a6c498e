"""CRD: contrastive representation distillation with two momentum memory banks keyed by ``sample_id``."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from featdistill.losses._util import as_target
from featdistill.losses.contrastive import (
    contrast_scores,
    l2_normalize,
    momentum_rows,
    nce_loss,
    sample_contrast_indices,
)
from featdistill.methods.base import Features, Method, register_method
from featdistill.seeding import derive_seed
from featdistill.taps import TapSpec

__all__ = ["CRD", "Embed", "all_gather_rows", "first_occurrences"]


class Embed(nn.Module):
    """CRD's embedding head: ``Linear(d_in → feat_dim)`` then the epsilon-free L2 normalisation (``Embed``)."""

    def __init__(self, d_in: int, d_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.linear(x.reshape(x.shape[0], -1)))


def _dist_world() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def all_gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor's rows over all ranks in rank order (identity on one process).

    Ranks may hold different row counts (a last partial batch): counts are gathered first and rows padded to
    the largest, so every rank ends with the same tensors.
    """
    world = _dist_world()
    if world == 1:
        return tensors
    dev = tensors[0].device
    n = torch.tensor([tensors[0].shape[0]], device=dev, dtype=torch.long)
    counts = [torch.zeros_like(n) for _ in range(world)]
    tdist.all_gather(counts, n)
    sizes = [int(c) for c in counts]
    top = max(sizes)
    out = []
    for t in tensors:
        pad = t.new_zeros((top - t.shape[0], *t.shape[1:]))
        parts = [t.new_empty((top, *t.shape[1:])) for _ in range(world)]
        tdist.all_gather(parts, torch.cat([t.contiguous(), pad]))
        out.append(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
    return tuple(out)


def first_occurrences(ids: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct id (sorted by id): a deterministic de-duplication, so
    a sample padded onto two ranks updates the bank once, identically everywhere."""
    uniq, inv = torch.unique(ids, return_inverse=True)
    pos = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    return first.scatter_reduce(0, inv, pos, reduce="amin")


def _labels_of(loader: Any) -> tuple[int | None, torch.Tensor | None]:
    """``(N, labels (N,))`` of a loader's dataset; a plain iterable of batch dicts is read once."""
    ds = getattr(loader, "dataset", None)
    if ds is not None:
        n = len(ds)
        labels = getattr(ds, "stratify_labels", None)
        if labels is None:
            labels = getattr(ds, "targets", None)
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1).long()
            if labels.numel() == n:
                return n, labels.cpu()
        return n, None
    ids, ys = [], []
    for batch in loader:
        ids.append(torch.as_tensor(batch["sample_id"]).reshape(-1).cpu())
        ys.append(torch.as_tensor(batch["target"]).reshape(-1).cpu())
    if not ids:
        return None, None
    sid, y = torch.cat(ids).long(), torch.cat(ys).long()
    n = int(sid.max()) + 1
    labels = torch.full((n,), -1, dtype=torch.long)
    labels[sid] = y
    if (labels < 0).any():
        return n, None
    return n, labels


@register_method
class CRD(Method):
    """ "Contrastive Representation Distillation" (Tian, Krishnan & Isola, ICLR 2020) — RepDistiller
    ``crd/criterion.py`` + ``crd/memory.py``.

    The pooled penultimate features go through an embedding head each (``Linear → L2-normalise``, 128-d).  Two
    memory banks ``(N, 128)`` hold a momentum average of every training sample's student and teacher embedding,
    keyed by ``batch["sample_id"]``.  For each anchor, ``K`` negatives (16384) are drawn as the reference's
    ``exact`` sampler does: uniformly, without replacement, from the samples of *other classes*.  Scores are
    ``exp(⟨bank row, anchor⟩ / T)`` (T 0.07) divided by a constant ``Z = mean(first batch's scores)·N`` fixed at
    the first step; the loss is the NCE loss (:func:`~featdistill.losses.contrastive.nce_loss`) of the student
    anchors against the teacher bank plus the teacher anchors against the student bank; then both banks take
    ``normalize(0.5·row + 0.5·embedding)`` at the batch's ids.  ``L = CE + 0.8·crd``.

    State: ``memory_s``, ``memory_t`` and ``z`` are buffers of this module, so the Trainer's checkpoint holds
    them and a resumed run continues bit-identically; the bank size ``N`` comes from ``num_samples`` or from
    :meth:`fit` (the training set).  Under DDP the bank update uses the ids and embeddings gathered from every
    rank (and ``Z`` their mean), so all ranks keep the same banks.  Negatives come from a generator seeded by
    ``(seed, the batch's sample/view ids, epoch)``.

    Differences from the code: the reference draws negatives in its dataset's ``__getitem__`` with NumPy's
    global RNG; here they are drawn per step from that explicit generator (same distribution).  Differences
    from the paper: the ``eps = 1e-7`` in the NCE denominators and ``Z`` estimated once from the first batch
    are the code's, not the paper's Eq. 18.
    """

    name = "crd"
    paper = "Contrastive Representation Distillation (Tian et al., ICLR 2020)"
    default_weights = {"crd": 0.8}
    default_ce_weight = 1.0
    #: kept equal on every rank by the all-gathered update: DDP does not re-broadcast them (``rank_synced_keys``)
    rank_synced_buffers = ("memory_s", "memory_t", "z", "labels")

    def __init__(
        self,
        student_path: str | None = None,
        teacher_path: str | None = None,
        feat_dim: int = 128,
        k: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        mode: str = "exact",
        num_samples: int | None = None,
        seed: int | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        if mode not in ("exact", "relax", "uniform"):
            raise ValueError(f"crd: mode must be 'exact', 'relax' or 'uniform', got {mode!r}")
        if k < 1 or feat_dim < 1:
            raise ValueError(f"crd: k and feat_dim must be ≥ 1, got k={k}, feat_dim={feat_dim}")
        self.student_path, self.teacher_path = student_path, teacher_path
        self.feat_dim, self.k, self.temperature, self.momentum, self.mode = feat_dim, k, temperature, momentum, mode
        self.seed = seed
        self.num_samples: int | None = None
        self.register_buffer("memory_s", None)
        self.register_buffer("memory_t", None)
        self.register_buffer("z", torch.full((2,), -1.0))  # Z_v1 (student anchors), Z_v2 (teacher anchors)
        self.register_buffer("labels", None, persistent=False)
        self._bank_initialised = False
        if num_samples is not None:
            self._allocate(int(num_samples))

    # -- wiring ------------------------------------------------------------------------------------------
    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = self.student_path or getattr(student, "embedding_path", None)
        if teacher is not None:
            self.teacher_path = self.teacher_path or getattr(teacher, "embedding_path", None)
        if not self.student_path or not self.teacher_path:
            raise ValueError(
                "crd: give student_path / teacher_path (the pooled penultimate feature); the models have no "
                "`embedding_path`"
            )

    def student_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.student_path or "")}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self.teacher_path or "")}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        s, t = student_feats["emb"], teacher_feats["emb"]
        dev = s.device
        self.adapters["embed_s"] = Embed(s[0].numel(), self.feat_dim).to(dev)
        self.adapters["embed_t"] = Embed(t[0].numel(), self.feat_dim).to(dev)
        if self.seed is None:  # the Distiller runs setup under seeded(run seed, "adapters")
            self.seed = int(torch.initial_seed())
        if self.memory_s is not None and not self._bank_initialised:
            self._init_bank()

    def fit(self, teacher: Any, loader: Iterable[Mapping[str, torch.Tensor]], num_classes: int | None = None) -> None:
        """Size the banks from the training set (``N = len(dataset)``) and read every sample's class (for the
        ``exact``/``relax`` negatives).  A loader without ``.dataset`` is iterated once for its ids and targets."""
        n, labels = _labels_of(loader)
        if n is None:
            raise ValueError("crd.fit: the loader yielded no batch")
        if self.num_samples is not None and self.num_samples != n:
            raise ValueError(f"crd: num_samples={self.num_samples} but the training set has {n} samples")
        if self.memory_s is None:
            self._allocate(n)
            if self.seed is not None:
                self._init_bank()
        if labels is not None:
            self.labels = labels.to(self.z.device)

    # -- state ---------------------------------------------------------------------------------------------
    def _allocate(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"crd: the memory bank needs at least 2 samples, got num_samples={n}")
        self.num_samples = n
        dev = self.z.device
        self.memory_s = torch.zeros(n, self.feat_dim, device=dev)
        self.memory_t = torch.zeros(n, self.feat_dim, device=dev)
        self._bank_initialised = False

    def _init_bank(self) -> None:
        """Uniform in ``[-stdv, stdv]``, ``stdv = 1/sqrt(feat_dim/3)`` (``ContrastMemory``), from the seed."""
        assert self.memory_s is not None and self.memory_t is not None
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        g = torch.Generator().manual_seed(derive_seed(int(self.seed or 0), "crd-memory"))
        for buf in (self.memory_s, self.memory_t):
            init = torch.rand(buf.shape, generator=g, dtype=torch.float64).mul_(2 * stdv).add_(-stdv)
            buf.copy_(init.to(buf.dtype))
        self.z.fill_(-1.0)
        self._bank_initialised = True

    def _generator(self, batch: Mapping[str, Any], epoch: float, device: torch.device) -> torch.Generator:
        h = hashlib.sha256()
        for key in ("sample_id", "view_id"):
            if key in batch and torch.is_tensor(batch[key]):
                h.update(batch[key].detach().reshape(-1).to("cpu", torch.int64).numpy().tobytes())
        g = torch.Generator(device=device)
        g.manual_seed(derive_seed(int(self.seed or 0), "crd-negatives", repr(float(epoch)), h.hexdigest()))
        return g

    def contrast_indices(self, batch: Mapping[str, Any], epoch: float) -> torch.Tensor:
        """The ``(B, K + 1)`` bank indices of this step (positive first), reproducible from the batch."""
        assert self.num_samples is not None
        idx = batch["sample_id"].to(self.z.device).long().reshape(-1)
        if self.mode != "uniform" and self.labels is None:
            raise RuntimeError(
                f"crd: mode {self.mode!r} draws negatives from other classes and needs every sample's class; "
                "call method.fit(teacher, train_loader) (run_experiment does), or use mode: uniform"
            )
        g = self._generator(batch, epoch, idx.device)
        return sample_contrast_indices(idx, self.k, self.num_samples, g, labels=self.labels, mode=self.mode)

    # -- the step -------------------------------------------------------------------------------------------
    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        if self.memory_s is None or self.memory_t is None or self.num_samples is None:
            raise RuntimeError(
                "crd: the memory banks are not sized; pass num_samples= (the training-set size) or call "
                "method.fit(teacher, train_loader) before training (run_experiment does)"
            )
        if "sample_id" not in batch:
            raise KeyError("crd: the batch has no 'sample_id' (the memory banks are keyed by it)")
        idx = batch["sample_id"].to(self.z.device).long().reshape(-1)
        if int(idx.max()) >= self.num_samples or int(idx.min()) < 0:
            raise IndexError(f"crd: sample_id out of range for a bank of {self.num_samples} samples")
        v_s = self.adapters["embed_s"](student_feats["emb"])
        v_t = self.adapters["embed_t"](as_target(teacher_feats["emb"]).to(v_s.dtype))
        cidx = self.contrast_indices(batch, epoch)
        out_s = contrast_scores(v_s, self.memory_t, cidx, self.temperature)  # student anchors, teacher bank
        out_t = contrast_scores(v_t, self.memory_s, cidx, self.temperature)  # teacher anchors, student bank
        z = self.z.to(out_s.dtype)
        if bool((z < 0).any()):
            est = torch.stack([out_s.detach().mean(), out_t.detach().mean()]) * self.num_samples
            if _dist_world() > 1:  # every rank must divide by the same constants
                tdist.all_reduce(est)
                est = est / _dist_world()
            z = torch.where(z < 0, est.to(z.dtype), z)
            if self.training:
                self.z.copy_(z.to(self.z.dtype))
                z = self.z.to(out_s.dtype)
        loss = nce_loss(out_s / z[0], self.num_samples) + nce_loss(out_t / z[1], self.num_samples)
        if self.training:
            self._update(idx, v_s.detach(), v_t.detach())
        return {"crd": loss}

    @torch.no_grad()
    def _update(self, idx: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """``bank[i] ← normalize(μ·bank[i] + (1 − μ)·v_i)`` at the ids of every rank's batch."""
        assert self.memory_s is not None and self.memory_t is not None
        ids, es, et = all_gather_rows(idx, v_s.to(self.memory_s.dtype), v_t.to(self.memory_t.dtype))
        keep = first_occurrences(ids)
        ids, es, et = ids[keep], es[keep], et[keep]
        self.memory_s.index_copy_(0, ids, momentum_rows(self.memory_s.index_select(0, ids), es, self.momentum))
        self.memory_t.index_copy_(0, ids, momentum_rows(self.memory_t.index_select(0, ids), et, self.momentum))
