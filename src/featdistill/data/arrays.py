"""``ArrayDataset``: an in-memory dataset for any task — images, token sequences or series, with any target.

Why next to :class:`~featdistill.data.base.ImageDataset` rather than instead of it: the classification path
(uint8 images + class ids) is what every benchmark number so far was measured on and must stay bit-identical.
Other tasks need other inputs (token ids with an attention mask, a window of a series, a low-resolution image)
and other targets (a mask, a high-resolution image, a forecast horizon). Both classes keep the loader contract
the teacher store relies on — ``batch(sample_ids, view_ids, augmenter, normalize, device)`` renders exactly the
same inputs *and targets* for the same ``(sample_id, view_id)``, and :meth:`fingerprint` identifies the data.

Inputs are a tensor ``(N, ...)`` or a mapping of tensors ``{name: (N, ...)}`` (e.g. ``input_ids`` and
``attention_mask``; the batch then carries them under ``"input"`` as a dict and the task calls the model with
keyword arguments). Image inputs (``image_input=True``, ``(N, C, H, W)`` uint8 or float in [0, 1]) are
augmented and normalised like ``ImageDataset``; a spatial target (``target_kind`` ``"mask"`` / ``"image"``)
follows the same view (:mod:`featdistill.data.target_views`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from featdistill.data.base import channel_stats
from featdistill.data.views import Augmenter

__all__ = ["PER_SAMPLE_INFO", "ArrayDataset", "TargetKindName"]

#: ``info`` keys holding one entry per sample (selected by :meth:`ArrayDataset.subset`, not copied whole)
PER_SAMPLE_INFO: tuple[str, ...] = ("ids",)

TargetKindName = Literal["class", "mask", "image", "tokens", "series", "none"]


def _index(x: Tensor | Mapping[str, Tensor], idx: Tensor) -> Tensor | dict[str, Tensor]:
    if isinstance(x, Mapping):
        return {k: v[idx] for k, v in x.items()}
    return x[idx]


def _hash_tensor(h: Any, label: str, t: Tensor) -> None:
    arr = np.ascontiguousarray(t.detach().cpu().numpy())
    h.update(f"{label}|{arr.dtype.str}|{arr.shape}|".encode())
    h.update(memoryview(arr).cast("B"))


@dataclass(eq=False)
class ArrayDataset:
    """Inputs and targets in memory, one row per sample (``sample_id`` = row).

    Attributes:
        inputs: ``(N, ...)`` tensor or ``{name: (N, ...)}``.
        targets: ``(N, ...)`` tensor of any dtype (class ids, masks, images in [0, 1], token ids, values).
        name: for logs and store manifests.
        target_kind: how views treat the target: ``"mask"`` and ``"image"`` follow the input's crop/flip;
            every other kind is left as is (class ids, token labels, series values).
        image_input: the inputs are images ``(N, C, H, W)``: normalised with ``mean``/``std`` and augmented.
        mean, std: per-channel statistics on the [0, 1] scale (computed from the inputs when ``None``).
        classes: class names when the target is categorical (``num_classes`` follows), else ``None``.
        ignore_index: the "not scored" value of a categorical dense target (padding of masks is filled with it).
        info: free metadata the task or the models read (``vocab_size``, ``horizon``, ``scale``…).
    """

    inputs: Tensor | dict[str, Tensor]
    targets: Tensor
    name: str = "dataset"
    target_kind: TargetKindName = "none"
    image_input: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: list[str] | None = None
    ignore_index: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.inputs, Mapping):
            if not self.inputs:
                raise ValueError(f"{self.name}: inputs is an empty mapping")
            self.inputs = {str(k): torch.as_tensor(v).contiguous() for k, v in self.inputs.items()}
            sizes = {k: int(v.shape[0]) for k, v in self.inputs.items()}
        else:
            self.inputs = torch.as_tensor(self.inputs).contiguous()
            sizes = {"inputs": int(self.inputs.shape[0])}
        self.targets = torch.as_tensor(self.targets).contiguous()
        n = int(self.targets.shape[0])
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise ValueError(f"{self.name}: {n} targets but inputs have {bad} rows; every input needs one target")
        if self.image_input:
            if isinstance(self.inputs, Mapping) or self.inputs.ndim != 4:
                raise ValueError(f"{self.name}: image_input=True needs an (N, C, H, W) tensor of inputs")
            if self.inputs.dtype not in (torch.uint8, torch.float32):
                self.inputs = self.inputs.to(torch.float32)
            if self.mean is None or self.std is None:
                mean, std = channel_stats(self.inputs)
                self.mean = mean if self.mean is None else self.mean
                self.std = std if self.std is None else self.std
            self.mean = tuple(float(v) for v in self.mean)
            self.std = tuple(float(v) for v in self.std)
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]
        if self.target_kind in ("mask", "image"):
            if not self.image_input:
                raise ValueError(f"{self.name}: a {self.target_kind!r} target needs image inputs (image_input=True)")
            want = 3 if self.target_kind == "mask" else 4
            if self.targets.ndim != want:
                raise ValueError(
                    f"{self.name}: a {self.target_kind} target must be "
                    f"{'(N, H, W)' if want == 3 else '(N, C, H, W)'}, got shape {tuple(self.targets.shape)}"
                )

    # -- description ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.info.get("num_classes", 0))

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one input (``(C, H, W)`` for images; ``(L,)`` of the first input of a mapping)."""
        x = next(iter(self.inputs.values())) if isinstance(self.inputs, Mapping) else self.inputs
        return tuple(x.shape[1:])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.image_shape

    @property
    def stratify_labels(self) -> Tensor | None:
        """Per-sample class ids to stratify splits by (``None``: split uniformly at random)."""
        if self.target_kind == "class" and self.targets.ndim == 1 and not self.targets.is_floating_point():
            return self.targets
        return None

    def fingerprint(self) -> str:
        """SHA-256 over dtypes, shapes and bytes of inputs and targets (what a teacher store is valid for)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            if isinstance(self.inputs, Mapping):
                for k in sorted(self.inputs):
                    _hash_tensor(h, f"inputs.{k}", self.inputs[k])
            else:
                _hash_tensor(h, "inputs", self.inputs)
            _hash_tensor(h, "targets", self.targets)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def subset(self, indices: Sequence[int] | Tensor, name: str | None = None) -> ArrayDataset:
        """A new dataset of the selected rows (renumbered); statistics are inherited, not recomputed.

        ``info`` is copied, except its per-sample entries (:data:`PER_SAMPLE_INFO`, e.g. VOC's image ``ids``),
        which are selected with the rows so they keep naming the right samples."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        info = dict(self.info)
        for key in PER_SAMPLE_INFO:
            if key in info and len(info[key]) == len(self):
                info[key] = [info[key][i] for i in idx.tolist()]
        return ArrayDataset(
            _index(self.inputs, idx),
            self.targets[idx],
            name or f"{self.name}-subset",
            self.target_kind,
            self.image_input,
            self.mean,
            self.std,
            self.classes,
            self.ignore_index,
            info,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample as ``{"input", "target"}`` (inspection; training goes through :meth:`batch`)."""
        idx = torch.tensor([int(index)])
        out = self.batch(idx, torch.tensor([-1]), None)
        return {k: (v[0] if torch.is_tensor(v) else {kk: vv[0] for kk, vv in v.items()}) for k, v in out.items()}

    # -- rendering -----------------------------------------------------------------------------------------
    def batch(
        self,
        sample_ids: Tensor,
        view_ids: Tensor,
        augmenter: Augmenter | None,
        normalize: bool = True,
        device: torch.device | str | None = None,
    ) -> dict[str, Any]:
        """``{"input", "target"}`` of these views; the same ``(sample_id, view_id)`` always gives the same pair."""
        from featdistill.data.target_views import apply_to_target

        sid = torch.as_tensor(sample_ids, dtype=torch.long).reshape(-1)
        vid = torch.as_tensor(view_ids, dtype=torch.long).reshape(-1)
        y = self.targets[sid]
        if device is not None:
            y = y.to(device)
        if not self.image_input:
            x = _index(self.inputs, sid)
            if device is not None:
                x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
            return {"input": x, "target": y}
        assert isinstance(self.inputs, Tensor) and self.mean is not None and self.std is not None
        x = self.inputs[sid]
        if device is not None:
            x = x.to(device)
        x = x.to(torch.float32)
        augment = augmenter is not None and not augmenter.config.is_identity and bool((vid >= 0).any())
        if augment:
            assert augmenter is not None
            params = augmenter.params(sid, vid, tuple(x.shape))
            hw = (int(x.shape[-2]), int(x.shape[-1]))
            x = augmenter.apply(x, params)
            if self.target_kind in ("mask", "image"):
                fill = float(self.ignore_index) if self.target_kind == "mask" and self.ignore_index is not None else 0
                y = apply_to_target(augmenter, y, params, hw, self.target_kind, fill)  # type: ignore[arg-type]
        scale = 255.0 if self.inputs.dtype == torch.uint8 else 1.0
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        a = (1.0 / (scale * std)) if normalize else torch.full_like(std, 1.0 / scale)
        x = x * a.to(device=x.device, dtype=x.dtype)[None, :, None, None]
        if normalize:
            x = x + (-mean / std).to(device=x.device, dtype=x.dtype)[None, :, None, None]
        return {"input": x, "target": y}
