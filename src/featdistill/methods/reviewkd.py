"""ReviewKD: knowledge review — student stages fused top-down by ABF modules, matched to the teacher with HCL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses.feature_regression import hcl_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.methods.ofd import preact_points
from featdistill.taps import TapSpec

__all__ = ["ReviewKD", "ABF"]


class ABF(nn.Module):
    """mdistiller ``ABF`` (attention-based fusion): ``conv1`` 1×1 + BN to ``mid``; if ``fuse``, the residual from the
    deeper level is upsampled (nearest) to this level's size and mixed by a 2-channel sigmoid attention
    (``att_conv``: 1×1 conv with bias); the result is resized (nearest) to the teacher's size and ``conv2`` 3×3 + BN
    gives the output.  ``conv1``/``conv2`` weights ``kaiming_uniform_(a=1)``.  Returns ``(output, residual)``."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid))
        self.conv2 = nn.Sequential(nn.Conv2d(c_mid, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.att_conv = nn.Sequential(nn.Conv2d(c_mid * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, shape: int | None = None, out_shape: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            assert y is not None and shape is not None
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if out_shape is not None and x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


def _as_map(f: torch.Tensor) -> torch.Tensor:
    return f.reshape(f.shape[0], -1, 1, 1) if f.ndim == 2 else f


@register_method
class ReviewKD(Method):
    """ "Distilling Knowledge via Knowledge Review" (Chen et al., CVPR 2021) — mdistiller ``distillers/ReviewKD.py``
    (``ABF``, ``hcl_loss``; weight 5, 20-epoch warm-up), shapes and channels per pair as the official
    ``dvlab-research/ReviewKD`` ``model/reviewkd.py`` lists them, here read from the probe batch.

    Levels, shallow → deep: the student's stage outputs (post-ReLU, the last ``n`` of ``stage_paths``) and its pooled
    embedding as a 1×1 map; the teacher's **pre-ReLU** stage maps (mdistiller's ``preact_feats[1:]``) and its pooled
    embedding.  From the deepest level up, each ABF fuses the student feature with the residual of the level below
    (``mid = min(512, C_pooled)``) and outputs the teacher's channels at the teacher's size; ``reviewkd =
    hcl_loss(outputs, teacher levels)`` (:func:`~featdistill.losses.feature_regression.hcl_loss`, levels 4, 2, 1).
    ``L = CE + 5·min(1, epoch/20)·reviewkd`` (per-pair weights in the configs: 8 for ShuffleV2, 0.6 for r56→r20).

    Differences: mdistiller's warm-up factor steps with its 1-based epoch counter (1/20 in the first epoch); here the
    schedule is continuous in the fractional epoch from 0.  The original CIFAR script also uses another recipe
    (batch 128, lr 0.1, Nesterov); the configs keep the CRD protocol as mdistiller does.
    """

    name = "reviewkd"
    applies_to = frozenset({"image-classification"})
    paper = "Distilling Knowledge via Knowledge Review (Chen et al., CVPR 2021)"
    default_weights = {"reviewkd": {"value": 5.0, "warmup": 20}}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_paths: Sequence[str] | None = None,
        teacher_paths: Sequence[str] | None = None,
        levels: Sequence[int] = (4, 2, 1),
        max_mid_channel: int = 512,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_paths = list(student_paths) if student_paths else None
        self.teacher_paths = list(teacher_paths) if teacher_paths else None
        self.levels = tuple(int(v) for v in levels)
        self.max_mid_channel = max_mid_channel
        self.shapes: list[int] = []
        self.out_shapes: list[int] = []

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if self.teacher_paths is None:
            if teacher is None:
                raise ValueError("reviewkd: give teacher_paths (its pre-ReLU stage maps, then its pooled embedding)")
            emb = getattr(teacher, "embedding_path", None)
            if not emb:
                raise ValueError("reviewkd: the teacher has no `embedding_path`; give teacher_paths")
            self.teacher_paths = [p["tap"] for p in preact_points(teacher)] + [emb]
        if self.student_paths is None:
            stages, emb = list(getattr(student, "stage_paths", []) or []), getattr(student, "embedding_path", None)
            n = len(self.teacher_paths) - 1
            if len(stages) < n or not emb:
                raise ValueError(
                    f"reviewkd: the student needs {n} stage paths and an `embedding_path`; give student_paths"
                )
            self.student_paths = stages[-n:] + [emb]
        if len(self.student_paths) != len(self.teacher_paths):
            raise ValueError(
                f"reviewkd: {len(self.student_paths)} student levels vs {len(self.teacher_paths)} teacher levels"
            )

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"rv{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"rv{i}": TapSpec(p) for i, p in enumerate(self.teacher_paths or [])}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        n = len(self.student_paths or [])
        s = [_as_map(student_feats[f"rv{i}"]) for i in range(n)]
        t = [_as_map(teacher_feats[f"rv{i}"]) for i in range(n)]
        mid = min(self.max_mid_channel, s[-1].shape[1])
        self.shapes = [f.shape[-1] for f in s]
        self.out_shapes = [f.shape[-1] for f in t]
        for i in range(n):
            abf = ABF(s[i].shape[1], mid, t[i].shape[1], fuse=i < n - 1)
            self.adapters[f"abf{i}"] = abf.to(s[i].device)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        n = len(self.student_paths or [])
        x = [_as_map(student_feats[f"rv{i}"]) for i in range(n)]
        out, res = self.adapters[f"abf{n - 1}"](x[n - 1], out_shape=self.out_shapes[n - 1])
        results = [out]
        for i in range(n - 2, -1, -1):  # deep → shallow
            out, res = self.adapters[f"abf{i}"](x[i], res, self.shapes[i], self.out_shapes[i])
            results.insert(0, out)
        teacher = [_as_map(teacher_feats[f"rv{i}"]) for i in range(n)]
        return {"reviewkd": hcl_loss(results, teacher, self.levels)}
