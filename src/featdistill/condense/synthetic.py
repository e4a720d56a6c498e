"""`SyntheticSet`: the artefact a dataset-distillation run produces.

A distilled dataset is more than pixels: MTT's learned step size is part of it (evaluating MTT images with
another lr is a different experiment), soft labels change the protocol, and the normalisation is needed to
look at the images or to feed them to a network trained on raw pixels. All of it travels in one
safetensors file so a set can be re-evaluated years later without the run that made it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["SyntheticSet"]

_FORMAT = "featdistill.synthetic/1"


def _as_tuple(values: Any, channels: int) -> tuple[float, ...]:
    """Normalise a mean/std given as float, list or tensor to one float per channel."""
    if isinstance(values, Tensor):
        values = values.flatten().tolist()
    if isinstance(values, (int, float)):
        values = [float(values)] * channels
    out = tuple(float(v) for v in values)
    if len(out) == 1 and channels > 1:
        out = out * channels
    if len(out) != channels:
        raise ValueError(f"expected {channels} normalisation values (one per channel), found {len(out)}: {out}")
    return out


@dataclass
class SyntheticSet:
    """Distilled images with their labels, learned lr, normalisation and provenance.

    Attributes:
        images: float tensor ``(N, C, H, W)`` in the *normalised* space the networks see, class-major
            (all images of class 0, then class 1, ...), ``N = num_classes * ipc``.
        labels: hard labels ``(N,)`` (long) or soft labels ``(N, K)`` (float, rows sum to 1).
        lr: the learned evaluation learning rate (MTT) or ``None``.
        mean, std: per-channel normalisation of the source data, so ``images * std + mean`` are pixels
            in [0, 1].
        metadata: JSON-serialisable provenance (method, hyper-parameters, seed, wall time, losses, ...).
    """

    images: Tensor
    labels: Tensor
    lr: float | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W); found shape {tuple(self.images.shape)}")
        n, c = self.images.shape[:2]
        if self.labels.shape[0] != n:
            raise ValueError(f"{n} images but {self.labels.shape[0]} labels")
        if self.labels.dim() not in (1, 2):
            raise ValueError(f"labels must be (N,) hard or (N, K) soft; found {tuple(self.labels.shape)}")
        self.mean = _as_tuple(self.mean, c)
        self.std = _as_tuple(self.std, c)
        if self.lr is not None:
            self.lr = float(self.lr)

    # ------------------------------------------------------------------ views
    @property
    def soft(self) -> bool:
        """True when labels are per-class probabilities rather than class indices."""
        return self.labels.dim() == 2

    @property
    def hard_labels(self) -> Tensor:
        """Class indices; the argmax of soft labels (what DD-Ranking's hard-label runs use)."""
        return self.labels.argmax(1) if self.soft else self.labels

    @property
    def label_temperature(self) -> float:
        """The temperature the soft labels were made at (``metadata["soft_labels"]["temperature"]``; 1 when not
        recorded or for hard labels): evaluation trains with the KD loss at that temperature."""
        return float((self.metadata.get("soft_labels") or {}).get("temperature", 1.0))

    @property
    def num_classes(self) -> int:
        """Number of classes, from the soft-label width or the largest hard label."""
        if self.soft:
            return int(self.labels.shape[1])
        return int(self.metadata.get("num_classes", int(self.labels.max().item()) + 1))

    @property
    def ipc(self) -> int:
        """Images per class (the sets we build are balanced)."""
        return int(self.metadata.get("ipc", self.images.shape[0] // max(self.num_classes, 1)))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pixels(self) -> Tensor:
        """Images mapped back to [0, 1] pixel space (clamped), for viewing and export."""
        mean = torch.tensor(self.mean, dtype=self.images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=self.images.dtype).view(1, -1, 1, 1)
        return (self.images.detach().cpu() * std + mean).clamp(0.0, 1.0)

    def storage(self) -> dict[str, Any]:
        """Bytes needed to ship the set, labels included — the large-scale literature's hidden cost.

        Images count as 8-bit pixels (what an exported set costs). Labels count in the encoding the set
        uses: 1 byte per hard label (2 past 256 classes), 4·K per static soft label, and for per-view labels
        from a teacher store ``views`` × the store's encoding (4·K full logits, 6·k for top-k: fp32 value +
        int16 index). A method with its own label encoding (INFER's interpolation, NRR's distances) states it
        in ``metadata["label_storage"] = {"bytes": int, "encoding": str}``, which takes precedence.
        """
        n, c, h, w = self.images.shape
        k = self.num_classes
        own = self.metadata.get("label_storage")
        soft_meta = self.metadata.get("soft_labels") or {}
        if isinstance(own, dict) and "bytes" in own:
            label_bytes, encoding = int(own["bytes"]), str(own.get("encoding", "method-specific"))
        elif soft_meta.get("store"):
            views = int(soft_meta.get("views", 1))
            logits = str(soft_meta.get("logits", "full"))
            per_view = 6 * int(logits.split("-")[1]) if logits.startswith("top-") else 4 * k
            label_bytes, encoding = n * views * per_view, f"{views} views × {logits} teacher outputs"
        elif self.soft:
            label_bytes, encoding = n * k * 4, "static soft labels (fp32)"
        else:
            label_bytes, encoding = n * (1 if k <= 256 else 2), "hard class index"
        image_bytes = n * c * h * w
        return {
            "images_bytes": image_bytes,
            "labels_bytes": label_bytes,
            "total_bytes": image_bytes + label_bytes,
            "label_encoding": encoding,
            "bytes_per_instance": (image_bytes + label_bytes) / max(n, 1),
        }

    def with_labels(self, labels: Tensor, **meta: Any) -> SyntheticSet:
        """A copy with new labels (e.g. teacher soft labels), metadata extended with ``meta``."""
        return SyntheticSet(self.images, labels, self.lr, self.mean, self.std, {**self.metadata, **meta})

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> Path:
        """Write one safetensors file: tensors ``images``, ``labels``; lr, normalisation and metadata as JSON.

        safetensors metadata is a ``str -> str`` map, so structured fields are stored JSON-encoded; tensors
        are saved contiguous on CPU so the file loads on any machine.
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "images": self.images.detach().cpu().contiguous(),
            "labels": self.labels.detach().cpu().contiguous(),
        }
        header = {
            "format": _FORMAT,
            "lr": json.dumps(self.lr),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "metadata": json.dumps(self.metadata, default=_json_default),
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp), metadata=header)
        tmp.replace(path)  # atomic: a crash never leaves a half-written set under the final name
        return path

    @classmethod
    def load(cls, path: str | Path) -> SyntheticSet:
        """Read a file written by :meth:`save`; refuses files that are not featdistill synthetic sets."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no synthetic set at {path}")
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as err:  # safetensors raises its own error type for a file that is not safetensors
            from featdistill.data.formats import DataFormatError

            raise DataFormatError(
                f"{path} is not a featdistill synthetic set (not a safetensors file: {err}); give the "
                "synthetic.safetensors a condense run wrote"
            ) from None
        with handle as f:
            header = f.metadata() or {}
            if header.get("format") != _FORMAT:
                from featdistill.data.formats import DataFormatError

                raise DataFormatError(
                    f"{path} is not a featdistill synthetic set (format {header.get('format')!r}, "
                    f"expected {_FORMAT!r}); write it with SyntheticSet.save"
                )
            images = f.get_tensor("images")
            labels = f.get_tensor("labels")
        return cls(
            images=images,
            labels=labels,
            lr=json.loads(header["lr"]),
            mean=tuple(json.loads(header["mean"])),
            std=tuple(json.loads(header["std"])),
            metadata=json.loads(header["metadata"]),
        )

    def save_grid_png(self, path: str | Path, max_per_class: int = 10, dpi: int = 100) -> Path:
        """Save a class × image grid (rows = classes) as PNG, images de-normalised to pixel space."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pix = self.pixels()
        labels = self.hard_labels.cpu()
        k = self.num_classes
        rows = [torch.nonzero(labels == c).flatten()[:max_per_class] for c in range(k)]
        cols = max(1, max((len(r) for r in rows), default=1))
        fig, axes = plt.subplots(k, cols, figsize=(cols * 1.0 + 0.6, k * 1.0), squeeze=False)
        names = self.metadata.get("classes") or [str(c) for c in range(k)]
        for c, idx in enumerate(rows):
            for j in range(cols):
                ax = axes[c][j]
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if j < len(idx):
                    img = pix[int(idx[j])]
                    if img.shape[0] == 1:
                        ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                    else:
                        ax.imshow(img[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
                if j == 0:
                    ax.set_ylabel(str(names[c]) if c < len(names) else str(c), rotation=0, labelpad=14)
        title = f"{self.metadata.get('method', 'synthetic')} ipc={self.ipc}"
        if self.lr is not None and math.isfinite(self.lr):
            title += f" lr={self.lr:.3g}"
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return path


def _json_default(obj: Any) -> Any:
    """Make tensors, paths and tuples JSON-safe so metadata never blocks a save."""
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return repr(obj)
