"""Soft labels for a synthetic set from a teacher store: one label per augmented *view*, no teacher at eval time.

A static soft label (``softmax(teacher(x) / T)`` on the un-augmented image) is wrong as soon as evaluation
augments the image: the crop the network trains on is not the image the teacher labelled. FKD and SRe2L fix
this by storing the teacher's output *with* each crop. featdistill already has that machinery for real data —
replayable views keyed by ``(seed, sample_id, view_id)`` and a teacher store that validates what it was built
for (:mod:`featdistill.cache`) — so relabelling a synthetic set is just building a store over it:

- :func:`build_label_store` runs the teacher over ``V`` views of every synthetic image (the store's dataset is
  the synthetic set itself, so its fingerprint pins the exact pixels; other images are refused).
- :func:`open_view_labels` opens a store for a synthetic set. Two kinds are accepted: a store over the
  synthetic set, or — for ``random``/``herding`` sets, whose images *are* training images — a store built
  over the real training set by ``featdistill cache`` (looked up by the recorded ``source_indices``), so a
  coreset gets per-view soft labels without running any teacher.
- :class:`ViewLabels` serves ``(inputs, targets)`` for ``(position, view_id)`` batches; ``evaluate`` trains its
  fresh networks on them instead of DSA + static labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from featdistill.cache.format import StoreMismatchError
from featdistill.cache.store import TeacherStore
from featdistill.data.base import ImageDataset
from featdistill.data.loaders import render_views
from featdistill.data.views import ViewConfig

from .augment import default_strategy
from .synthetic import SyntheticSet

__all__ = [
    "ViewLabels",
    "synthetic_as_dataset",
    "default_label_views",
    "build_label_store",
    "open_view_labels",
    "relabel",
]


def synthetic_as_dataset(synthetic: SyntheticSet) -> ImageDataset:
    """The synthetic images as an :class:`ImageDataset` in pixel space (``images * std + mean``, *not* clamped).

    Not clamped because the networks are trained on the unclamped normalised images; the loader's
    normalisation maps these pixels back to them (to float rounding). Its fingerprint is the identity a label
    store records, so a store is only ever used with the exact images it was built for.
    """
    mean = torch.tensor(synthetic.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(synthetic.std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (synthetic.images.detach().cpu().float() * std + mean).contiguous()
    k, n = synthetic.num_classes, len(synthetic)
    # the class of each image, independent of its (soft) labels, so relabelling keeps the fingerprint
    if not synthetic.soft:
        targets = synthetic.labels.cpu()
    elif n == k * synthetic.ipc:
        targets = torch.arange(k).repeat_interleave(synthetic.ipc)  # SyntheticSets are class-major
    else:
        targets = synthetic.hard_labels.cpu()
    classes = synthetic.metadata.get("classes") or [str(c) for c in range(k)]
    name = f"synthetic-{synthetic.metadata.get('dataset', 'data')}-{synthetic.metadata.get('method', 'set')}"
    return ImageDataset(
        pixels,
        targets,
        list(classes),
        name=f"{name}-ipc{synthetic.ipc}",
        mean=synthetic.mean,
        std=synthetic.std,
    )


def default_label_views(synthetic: SyntheticSet) -> ViewConfig:
    """Pad-and-crop by 1/8 of the side (CIFAR's 4 px at 32) plus a flip where DSA would flip (not on digits)."""
    c, h, w = synthetic.images.shape[1:]
    flip = "flip" in default_strategy(synthetic.metadata.get("dataset"), int(c)).split("_")
    return ViewConfig(pad_crop=max(1, max(h, w) // 8), flip=flip)


@dataclass
class ViewLabels:
    """Per-view soft labels of a synthetic set, served from a teacher store.

    Attributes:
        store: the opened, validated store.
        dataset: what the store's sample ids index (the synthetic set as a dataset, or the real training set).
        sample_ids: ``(N,)`` store sample id of each synthetic image, in the set's (class-major) order.
        temperature: targets are ``softmax(logits / T)`` of the stored logits.
        source: ``"synthetic"`` (a store over the synthetic images) or ``"real"`` (a training-set store).
        hard: serve each view with its image's *class* instead of the teacher's label — the ablation that
            separates what the stored views do from what the teacher's labels do.
    """

    store: TeacherStore
    dataset: ImageDataset
    sample_ids: Tensor
    temperature: float = 1.0
    source: Literal["synthetic", "real"] = "synthetic"
    hard: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self._augmenter = self.store.augmenter()
        self._targets: Tensor | None = None

    @property
    def num_views(self) -> int:
        """``V``: view ids ``0..V-1`` have stored labels."""
        return self.store.num_views

    def __len__(self) -> int:
        return int(self.sample_ids.numel())

    def targets(self) -> Tensor:
        """``(N, V, K)`` soft targets of every stored view (small: read once, kept)."""
        if self._targets is None:
            n, v = len(self), self.num_views
            sids = self.sample_ids.repeat_interleave(v)
            vids = torch.arange(v).repeat(n)
            logits = self.store.teacher_outputs(sids, vids, ["logits"])["logits"]
            # full logits → softmax(z/T) exactly; a top-k store: exact on the top-k classes (log-probs differ
            # from z by a per-row constant), the others share the stored remaining mass (FKD's approximation)
            self._targets = torch.softmax(logits / self.temperature, dim=1).view(n, v, -1)
        return self._targets

    def mean_labels(self) -> Tensor:
        """``(N, K)`` static soft labels: each image's targets averaged over its stored views."""
        return self.targets().mean(1)

    def batch(self, positions: Tensor, view_ids: Tensor, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """Inputs (exactly the views the teacher labelled) and their soft targets for synthetic ``positions``."""
        positions = positions.cpu().long()
        view_ids = view_ids.cpu().long()
        sids = self.sample_ids[positions]
        x = render_views(self.dataset, sids, view_ids, self._augmenter)
        y = self.dataset.targets[sids] if self.hard else self.targets()[positions, view_ids]
        return x.to(device), y.to(device)

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary for reports and metadata."""
        m = self.store.manifest
        return {
            "store": str(self.store.root),
            "source": self.source,
            "views": self.num_views,
            "temperature": self.temperature,
            "labels": "class (hard)" if self.hard else "teacher",
            "teacher": m["teacher"]["model_name"],
            "teacher_sha256": m["teacher"]["sha256"],
            "augmentation": m["augmentation"]["config"],
            "logits": self.store.logits_mode if self.store.topk is None else f"top-{self.store.topk}",
        }


def build_label_store(
    synthetic: SyntheticSet,
    teacher: nn.Module,
    out_dir: str | Path,
    *,
    num_views: int = 8,
    views: ViewConfig | None = None,
    seed: int = 0,
    topk: int | None = None,
    model_name: str | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    resume: bool = True,
) -> Path:
    """Run ``teacher`` once over ``num_views`` replayable views of every synthetic image; store its logits.

    ``views`` defaults to :func:`default_label_views`. With ``resume=True`` an existing store at ``out_dir``
    built from the same images, teacher, views and seed is kept as is; one built from anything else is refused
    with the reason (pass ``resume=False`` to overwrite it).
    """
    from featdistill.cache.builder import build_store
    from featdistill.teacher import freeze

    dataset = synthetic_as_dataset(synthetic)
    freeze(teacher)
    probe = next(iter(teacher.parameters()), torch.zeros(())).new_zeros((1, *dataset.images.shape[1:]))
    with torch.no_grad():
        classes_out = teacher(probe).shape[-1]
    if classes_out != synthetic.num_classes:
        raise ValueError(
            f"the teacher predicts {classes_out} classes but the synthetic set has "
            f"{synthetic.num_classes}; use a teacher trained on {synthetic.metadata.get('dataset', 'its data')}"
        )
    build_store(
        teacher,
        dataset,
        views or default_label_views(synthetic),
        num_views,
        out_dir,
        seed=seed,
        taps={},
        topk=topk,
        model_name=model_name,
        batch_size=batch_size,
        device=device,
        resume=resume,
        dtype="float32",  # a few hundred images: exact labels cost nothing
    )
    return Path(out_dir)


def _source_ids(synthetic: SyntheticSet, train_set: ImageDataset) -> Tensor:
    """The training-set ids a coreset's images were taken from, checked against the pixels."""
    ids = synthetic.metadata.get("source_indices")
    if ids is None:  # condense() records them only for sets whose images are unmodified training images
        raise StoreMismatchError(
            "this teacher store was built over the training set, which only labels sets made of unmodified "
            f"training images (method random or herding); a {synthetic.metadata.get('method')!r} set needs a "
            "store over its own images: build one with featdistill.condense.build_label_store (or give "
            "soft_label_teacher.model/checkpoint in the condense config)"
        )
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    if ids_t.numel() != len(synthetic):
        raise StoreMismatchError(f"source_indices has {ids_t.numel()} ids for {len(synthetic)} images")
    x = render_views(train_set, ids_t, -1, None)
    if not torch.allclose(x, synthetic.images.float(), atol=1e-4):
        raise StoreMismatchError(
            "the synthetic images differ from the training images at their recorded source_indices "
            "(different normalisation or a different training set); the store cannot label them"
        )
    return ids_t


def open_view_labels(
    path: str | Path,
    synthetic: SyntheticSet,
    train_set: ImageDataset | None = None,
    temperature: float | None = None,
    teacher: nn.Module | str | None = None,
    expect: dict[str, Any] | None = None,
) -> ViewLabels:
    """Open the store at ``path`` for ``synthetic`` (or refuse, saying why).

    The store must be built over the synthetic images themselves, or over ``train_set`` when the set is a
    coreset of it. ``temperature`` defaults to the one recorded in ``synthetic.metadata["soft_labels"]`` (else
    1). ``teacher`` (a module or a weights sha256), if given, must be the one the store was built with;
    ``expect`` adds :meth:`TeacherStore.open` expectations (e.g. ``num_views``, ``augmentation``).
    """
    from featdistill.cache.format import MANIFEST, StoreError, read_json

    root = Path(path)
    if not (root / MANIFEST).exists():
        raise StoreError(
            f"no teacher store at {root} (no {MANIFEST}); build one over the synthetic set with "
            "featdistill.condense.build_label_store, or over the training set with `featdistill cache`"
        )
    stored_fp = read_json(root / MANIFEST)["dataset"]["fingerprint"]
    syn_ds = synthetic_as_dataset(synthetic)
    expect = {**(expect or {}), "taps": ["logits"]}
    if teacher is not None:
        expect["teacher"] = teacher
    if stored_fp == syn_ds.fingerprint():
        dataset, ids, source = syn_ds, torch.arange(len(synthetic)), "synthetic"
    elif train_set is not None and stored_fp == train_set.fingerprint():
        dataset, ids, source = train_set, _source_ids(synthetic, train_set), "real"
    else:
        raise StoreMismatchError(
            f"teacher store {root} was built for other images (dataset fingerprint {stored_fp[:12]}…): neither "
            f"this synthetic set ({syn_ds.fingerprint()[:12]}…)"
            + (f" nor the training set ({train_set.fingerprint()[:12]}…)" if train_set is not None else "")
            + ". Rebuild it for these images (featdistill.condense.build_label_store) or point at the right store."
        )
    store = TeacherStore.open(root, {**expect, "dataset": dataset})
    if store.num_classes != synthetic.num_classes:
        raise StoreMismatchError(
            f"teacher store {root} holds {store.num_classes}-class logits; the synthetic set has "
            f"{synthetic.num_classes} classes"
        )
    t = synthetic.label_temperature if temperature is None else float(temperature)
    return ViewLabels(store, dataset, ids, t, source)


def relabel(synthetic: SyntheticSet, labels: ViewLabels) -> SyntheticSet:
    """``synthetic`` with soft labels from ``labels``: the view-averaged targets as its static labels (so the
    file stays usable without the store) and the store recorded in ``metadata["soft_labels"]``."""
    return synthetic.with_labels(labels.mean_labels().clone(), soft_labels=labels.describe())
