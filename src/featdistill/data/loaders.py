"""Batch loaders that yield the batch dict ``{"input", "target", "sample_id", "view_id"}``.

Why not ``torch.utils.data.DataLoader``: the data is in memory and augmentation is batched
(:class:`~featdistill.data.views.Augmenter`), so worker processes buy nothing and would make per-sample RNG
harder to control. Here the order of an epoch comes from a generator seeded by ``(seed, epoch)``, the view of
each sample from ``(seed, sample_id, view_id)``, and DDP sharding is a pure function of ``(rank,
world_size)`` — so a run restarted at any batch (``loader.batches(start)``) reproduces the same inputs, and
:func:`render_views` reproduces any view's exact input tensor for the teacher store.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from featdistill.data._seeding import generator_for
from featdistill.data.base import ImageDataset
from featdistill.data.batching import to_device
from featdistill.data.views import NO_AUGMENT, Augmenter, ViewPolicy, view_for_epoch

__all__ = ["ViewLoader", "eval_loader", "render_views", "make_inputs", "render_images"]

Batch = dict[str, Tensor]


def make_inputs(
    dataset: ImageDataset,
    sample_ids: Tensor,
    view_ids: Tensor,
    augmenter: Augmenter | None,
    normalize: bool = True,
    device: torch.device | str | None = None,
) -> Tensor:
    """The student input of each ``(sample_id, view_id)``: to float → augment → scale to [0, 1], normalise.

    The single code path shared by :class:`ViewLoader` and :func:`render_views`; keeping one path is what
    makes "re-rendered view == trained-on view" hold bit for bit on the same device type. Across CPU and
    CUDA, crop/flip views are bit-identical too; resized crops agree to ~1e-6 (``grid_sample`` arithmetic).
    """
    sid = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1)
    vid = torch.as_tensor(view_ids, dtype=torch.long).reshape(-1)
    x = dataset.images[sid]
    if device is not None:
        x = x.to(device, non_blocking=True)
    return render_images(x, sid, vid, augmenter, dataset.mean, dataset.std, normalize)


def render_images(
    x: Tensor,
    sid: Tensor,
    vid: Tensor,
    augmenter: Augmenter | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    normalize: bool = True,
) -> Tensor:
    """Augment raw images ``x`` (uint8 0-255 or float [0, 1], ``(B, C, H, W)``) by view, then scale/normalise.

    The one rendering path of every image dataset (in memory or decoded lazily in a worker): a view's pixels
    depend only on ``(seed, sample_id, view_id)`` and the raw image.
    """
    # uint8 stays on the 0-255 scale through augmentation (zero padding is black on either scale; resampling
    # is linear), then ONE affine map does /255 and normalisation: x * a + b as two IEEE-exact eager ops (no
    # division: CUDA turns division by a scalar into a reciprocal multiply, which broke CPU/GPU bit-equality)
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    x = x.to(torch.float32)
    if augmenter is not None and not augmenter.config.is_identity and bool((vid >= 0).any()):
        x = augmenter(x, sid, vid)
    mean = torch.tensor(mean, dtype=torch.float64)
    std = torch.tensor(std, dtype=torch.float64)
    if normalize:
        a, b = 1.0 / (scale * std), -mean / std
    else:
        a, b = torch.full_like(std, 1.0 / scale), torch.zeros_like(std)
    a = a.to(device=x.device, dtype=x.dtype)[None, :, None, None]
    b = b.to(device=x.device, dtype=x.dtype)[None, :, None, None]
    x = x * a
    if normalize:
        x = x + b
    return x


def render_views(
    dataset: ImageDataset,
    sample_ids: Tensor | Sequence[int],
    view_ids: Tensor | Sequence[int] | int,
    augmenter: Augmenter | None,
    normalize: bool | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Re-render exactly the ``input`` a :class:`ViewLoader` yielded for these ``(sample_id, view_id)`` pairs.

    ``normalize=None`` follows the augmenter's ``config.normalize`` (``True`` without an augmenter), as the
    loader does. ``view_ids`` may be one int for all samples.
    """
    sid = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1)
    vid = torch.as_tensor(view_ids, dtype=torch.long).reshape(-1)
    if vid.numel() == 1 and sid.numel() != 1:
        vid = vid.expand(sid.numel())
    if normalize is None:
        normalize = augmenter.config.normalize if augmenter is not None else True
    return make_inputs(dataset, sid, vid, augmenter, normalize, device)


class ViewLoader:
    """Iterable over batch dicts of augmented, normalised views.

    Args:
        dataset: the in-memory dataset; ``sample_id`` is the index into it.
        batch_size: samples per batch (per rank).
        augmenter: draws the views; ``None`` gives un-augmented inputs with ``view_id = -1``.
        shuffle: shuffle with a generator seeded by ``(seed, epoch)`` — the same permutation on every rank.
        seed: seeds shuffling and the ``"sample"`` view policy (the augmenter has its own seed).
        policy, num_views: view policy of :func:`~featdistill.data.views.view_for_epoch`.
        drop_last: drop this rank's last incomplete batch.
        indices: the sample ids to iterate (e.g. the train part of a split); default all.
        rank, world_size: DDP sharding. The global permutation is padded to a multiple of ``world_size`` by
            repeating its head (as ``DistributedSampler`` does) and rank ``r`` takes positions
            ``r, r + world_size, …`` — disjoint, equal-sized shards. Padded entries repeat sample ids: dedupe
            by ``sample_id`` when exact evaluation counts matter, or pass ``pad=False`` (uneven shards).
        normalize: ``None`` follows ``augmenter.config.normalize`` (``True`` without an augmenter).
        device: if given, images are moved there *before* augmentation (augment on the GPU); all batch
            tensors are returned on it.

    Call :meth:`set_epoch` before each epoch (the loader does not advance it itself, like
    ``DistributedSampler``), then iterate; :meth:`batches` resumes mid-epoch.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        augmenter: Augmenter | None = None,
        shuffle: bool = True,
        seed: int = 0,
        policy: ViewPolicy | str = "fresh",
        num_views: int | None = None,
        drop_last: bool = False,
        indices: Tensor | Sequence[int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        normalize: bool | None = None,
        device: torch.device | str | None = None,
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if policy not in ("fresh", "cycle", "sample"):
            raise ValueError(f"unknown view policy {policy!r}; use 'fresh', 'cycle' or 'sample'")
        if policy != "fresh" and (num_views is None or num_views < 1):
            raise ValueError(f"view policy {policy!r} needs num_views >= 1, got {num_views!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.augmenter = augmenter
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.policy = policy
        self.num_views = num_views
        self.drop_last = bool(drop_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pad = bool(pad)
        self.normalize = (
            (augmenter.config.normalize if augmenter is not None else True) if normalize is None else (bool(normalize))
        )
        self.device = torch.device(device) if device is not None else None
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = int(num_workers)
        n = len(dataset)
        if indices is None:
            self.indices = torch.arange(n, dtype=torch.long)
        else:
            self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1).clone()
            if self.indices.numel() and (int(self.indices.min()) < 0 or int(self.indices.max()) >= n):
                raise ValueError(f"indices must be sample ids in [0, {n}) of {dataset.name}")
        if self.indices.numel() == 0:
            raise ValueError(f"ViewLoader over {dataset.name}: no samples to iterate (empty indices)")
        self.epoch = 0

    # ------------------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: it seeds the shuffle and the view ids (policy)."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank iterates per epoch (before ``drop_last``)."""
        m = self.indices.numel()
        if self.pad:
            return math.ceil(m / self.world_size)
        return len(range(self.rank, m, self.world_size))

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def epoch_order(self, epoch: int | None = None) -> Tensor:
        """The global (all-rank) sample-id order of ``epoch``, padded to a multiple of ``world_size``."""
        e = self.epoch if epoch is None else int(epoch)
        order = self.indices
        if self.shuffle:
            perm = torch.randperm(order.numel(), generator=generator_for("loader-shuffle", self.seed, e))
            order = order[perm]
        if self.pad and order.numel() % self.world_size:
            extra = self.world_size - order.numel() % self.world_size
            reps = math.ceil(extra / order.numel())
            order = torch.cat([order, order.repeat(reps)[:extra]])
        return order

    def shard(self, epoch: int | None = None) -> Tensor:
        """This rank's sample ids for ``epoch``, in iteration order."""
        return self.epoch_order(epoch)[self.rank :: self.world_size]

    def plan(self, start: int = 0) -> list[tuple[Tensor, Tensor]]:
        """``(sample_ids, view_ids)`` of every batch of the current epoch from ``start``: a pure function of
        ``(seed, epoch, rank, world_size)``."""
        ids = self.shard()
        out = []
        for i in range(start, len(self)):
            sid = ids[i * self.batch_size : (i + 1) * self.batch_size]
            if self.augmenter is None:
                vid = torch.full_like(sid, NO_AUGMENT)
            else:
                vid = view_for_epoch(self.policy, self.epoch, sid, self.num_views, self.seed)
            out.append((sid, vid))
        return out

    def _render(self, sid: Tensor, vid: Tensor, device: torch.device | None) -> Batch:
        batch = dict(self.dataset.batch(sid, vid, self.augmenter, self.normalize, device))
        batch["sample_id"], batch["view_id"] = sid, vid
        return batch

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """Yield the batches of the current epoch from batch index ``start`` (exact mid-epoch resume).

        With ``num_workers > 0`` whole batches are rendered in ``torch.utils.data.DataLoader`` worker processes
        (decoding files of a lazy dataset in parallel); the plan — which samples and views — is made here, so
        the batches are the same as with 0 workers, in the same order."""
        plan = self.plan(start)
        if self.num_workers == 0:
            for sid, vid in plan:
                batch = self._render(sid, vid, self.device)
                if self.device is not None:
                    batch = {k: to_device(v, self.device) for k, v in batch.items()}
                yield batch
            return
        from torch.utils.data import DataLoader

        worker_loader = DataLoader(
            _PlannedBatches(self, plan), batch_size=None, shuffle=False, num_workers=self.num_workers
        )
        for batch in worker_loader:
            yield {k: to_device(v, self.device) for k, v in batch.items()} if self.device is not None else batch

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(0)


class _PlannedBatches(torch.utils.data.Dataset):
    """Item ``i`` = the ``i``-th planned batch, rendered (on the CPU) where the DataLoader runs it: a worker."""

    def __init__(self, loader: ViewLoader, plan: list[tuple[Tensor, Tensor]]) -> None:
        self.loader, self.plan = loader, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        sid, vid = self.plan[i]
        return self.loader._render(sid, vid, None)


def eval_loader(
    dataset: ImageDataset,
    batch_size: int,
    indices: Tensor | Sequence[int] | None = None,
    normalize: bool = True,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> ViewLoader:
    """In-order, un-augmented (``view_id = -1``) batches for evaluation; nothing dropped, no padding."""
    return ViewLoader(
        dataset,
        batch_size,
        augmenter=None,
        shuffle=False,
        indices=indices,
        rank=rank,
        world_size=world_size,
        pad=False,
        normalize=normalize,
        device=device,
        num_workers=num_workers,
    )
