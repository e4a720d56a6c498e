"""``CachedTeacher``: a :class:`~featdistill.teacher.TeacherSource` that reads a teacher store.

It returns the same dict a :class:`~featdistill.teacher.LiveTeacher` returns for the same views — looked up by
``batch["sample_id"]`` and ``batch["view_id"]`` — so a Distiller trains with it unchanged and the teacher
never runs.  The batch must come from a loader that renders the store's views: :func:`store_loader` builds a
:class:`~featdistill.data.loaders.ViewLoader` with the store's augmentation, seed and ``num_views = V``.

View policy and the fixed-teacher risk: a store holds ``V`` views per sample, so every epoch must use one of
them (``"cycle"``: epoch ``e`` uses view ``e mod V``; ``"sample"``: a seeded uniform pick).  With small ``V``
the student sees the same few (view, teacher output) pairs again and again — Beyer et al.'s "fixed teacher"
regime, which overfits; ``V = 1`` is exactly a fixed teacher.  Keep ``V`` close to the number of epochs when
you can afford the storage, and watch the loss on fresh held-out views.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from featdistill.cache.store import TeacherStore

__all__ = ["CachedTeacher", "store_loader"]


class CachedTeacher:
    """Teacher outputs served from a :class:`TeacherStore` (float32, on the batch's device).

    Args:
        store: an open store, or a path (opened with ``expect`` and ``allow_incomplete``).
        names: the outputs to serve (default: all the store has).  The Distiller checks that the method's
            teacher taps are among them and names the missing ones otherwise.
    """

    model = None  # no network: the Distiller must not bind methods to a teacher module

    def __init__(
        self,
        store: TeacherStore | str | Path,
        names: Iterable[str] | None = None,
        expect: Mapping[str, Any] | None = None,
        allow_incomplete: bool = False,
        sparse_logits: bool = False,
    ) -> None:
        if not isinstance(store, TeacherStore):
            store = TeacherStore.open(store, expect=expect, allow_incomplete=allow_incomplete)
        self.store = store
        self.names = set(store.tap_names if names is None else names)
        unknown = self.names - store.tap_names
        if unknown:
            raise KeyError(f"the teacher store has no outputs {sorted(unknown)}; it has {sorted(store.tap_names)}")
        #: serve a top-k store's records as they are (``logits_topk_*``) instead of dense ``logits``
        self.sparse_logits = bool(sparse_logits) and store.sparse_ready
        #: lookups served (views); for the accounting in run summaries
        self.views_served = 0

    @property
    def tap_names(self) -> set[str]:
        return set(self.names)

    def only(self, names: Iterable[str], sparse_logits: bool = False) -> CachedTeacher:
        """The same store serving only ``names``: reading fields a method does not use costs time per batch.
        ``sparse_logits`` serves top-k records as they are (for methods that read them: KD)."""
        return CachedTeacher(self.store, names=names, sparse_logits=sparse_logits)

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "sample_id" not in batch or "view_id" not in batch:
            raise KeyError(
                "CachedTeacher needs batch['sample_id'] and batch['view_id'] (a featdistill ViewLoader "
                "yields them); a store is keyed by view, never by position in the batch"
            )
        from featdistill.data.batching import first_tensor

        x = first_tensor(batch.get("input"))
        device = x.device if x is not None else None
        out = self.store.teacher_outputs(
            batch["sample_id"], batch["view_id"], self.names, device=device, sparse=self.sparse_logits
        )
        self.views_served += int(batch["sample_id"].numel())
        return out

    def __repr__(self) -> str:
        return f"CachedTeacher({self.store!r}, names={sorted(self.names)})"


def store_loader(
    store: TeacherStore,
    dataset: Any,
    batch_size: int,
    policy: str = "cycle",
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    drop_last: bool = False,
) -> Any:
    """A :class:`~featdistill.data.loaders.ViewLoader` that yields exactly the views stored in ``store``.

    It uses the store's augmentation config and seed, iterates the store's samples, and picks view ids with
    ``policy`` (``"cycle"`` or ``"sample"``) over ``num_views = V`` — so every batch can be served by a
    :class:`CachedTeacher`.  ``seed`` seeds shuffling and the ``"sample"`` policy (not the views).  The
    dataset is checked against the store's fingerprint first.
    """
    from featdistill.cache.store import check_expectations
    from featdistill.data.loaders import ViewLoader

    if policy not in ("cycle", "sample"):
        raise ValueError(
            f"a teacher store holds {store.num_views} fixed views per sample, so the view policy must be "
            f"'cycle' or 'sample', got {policy!r} ('fresh' needs a live teacher)"
        )
    check_expectations(store.manifest, {"dataset": dataset}, store.root)
    return ViewLoader(
        dataset,
        batch_size,
        augmenter=store.augmenter(),
        shuffle=shuffle,
        seed=seed,
        policy=policy,
        num_views=store.num_views,
        indices=store.sample_ids(),
        rank=rank,
        world_size=world_size,
        device=device,
        drop_last=drop_last,
    )
