"""LSSKD: teacher-free self-distillation with auxiliary heads on intermediate stages (rotation-augmented labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses.logits import cross_entropy, kd_loss
from featdistill.methods._util import unregistered
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import Taps, TapSpec

__all__ = ["LSSKD", "joint_label", "split_joint_label", "rotate_batch", "AuxHead", "NUM_ROTATIONS"]

NUM_ROTATIONS = 4


def joint_label(target: torch.Tensor, rotation: torch.Tensor | int) -> torch.Tensor:
    """The self-supervised augmented label ``j = 4·class + rotation`` (rotation k = k·90°), in ``[0, 4C)``."""
    return target.long() * NUM_ROTATIONS + torch.as_tensor(rotation, device=target.device).long()


def split_joint_label(j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`joint_label`: ``(class, rotation)``."""
    return torch.div(j, NUM_ROTATIONS, rounding_mode="floor"), j % NUM_ROTATIONS


def rotate_batch(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(4B, C, H, W)`` images rotated by 0/90/180/270° (rotation-major), their classes and rotations.

    Row ``r·B + i`` is image ``i`` rotated by ``r·90°``.  Non-square images are rotated only by 0° and 180°
    twice (so shapes stay equal) — use square inputs.
    """
    if x.dim() != 4:
        raise ValueError(f"rotate_batch: expected images (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"rotate_batch: rotations need square images, got {x.shape[2]}×{x.shape[3]}")
    b = x.shape[0]
    xs = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(NUM_ROTATIONS)])
    rot = torch.arange(NUM_ROTATIONS, device=x.device).repeat_interleave(b)
    return xs, target.repeat(NUM_ROTATIONS), rot


class AuxHead(nn.Module):
    """Auxiliary head on a stage map: conv3×3 (stride 2 while the map is > 4×4) + BN + ReLU blocks → GAP →
    Linear(→ 4C).  Its pooled feature (``embed``) is used for the feature-alignment term."""

    def __init__(self, c_in: int, hw: int, num_joint: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = c_in
        while hw > 4:
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c, hw = width, (hw + 1) // 2
        layers += [nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(width, num_joint)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.body(x)
        return self.fc(e), e


@register_method
class LSSKD(Method):
    """ "A Layered Self-Supervised Knowledge Distillation Framework for Efficient Multimodal Learning on the Edge"
    (arXiv 2506.07055) — definition reconstructed from a secondary summary (HSAKD/SSKD-style; low confidence).

    No teacher.  Every stage of the student gets an auxiliary head predicting the *self-supervised augmented
    distribution* over joint labels ``4·class + rotation`` on the batch rotated by 0/90/180/270° (the batch grows
    4×; rotated copies run through the student in a second forward, no grad through the Distiller's taps).
    Terms: ``aux`` = Σ_heads CE(joint label); ``kl`` = Σ_k T²·KL(SAD_{k+1} ‖ SAD_k), deeper → shallower, deeper
    detached; ``feat`` = Σ_k MSE(e_k, stopgrad(e_{k+1})) between the heads' pooled features (off by default);
    ``main`` = T²·KL from the deepest head's rotation-0 class marginal to the main classifier.  The Distiller's
    CE trains the main classifier on the original images.  Heads live in the method: dropped at export.
    """

    name = "lsskd"
    paper = "A Layered Self-Supervised Knowledge Distillation Framework for Efficient Multimodal Learning (2025)"
    needs_teacher = False
    default_weights = {"aux": 1.0, "kl": 1.0, "feat": 0.0, "main": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        stage_paths: Sequence[str] | None = None,
        temperature: float = 3.0,
        head_width: int = 64,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.stage_paths = list(stage_paths) if stage_paths else None
        self.temperature, self.head_width = temperature, head_width
        self._student = unregistered(None)
        self._taps: Taps | None = None

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.stage_paths = self.stage_paths or list(getattr(student, "stage_paths", []))
        if not self.stage_paths:
            raise ValueError("lsskd: give stage_paths (the student has no stage_paths)")
        self._student = unregistered(student)

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"stage{i}": TapSpec(p) for i, p in enumerate(self.stage_paths or [])}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        num_joint = NUM_ROTATIONS * student_feats["logits"].shape[1]
        for i in range(len(self.stage_paths or [])):
            f = student_feats[f"stage{i}"]
            if f.dim() != 4:
                raise ValueError(f"lsskd: stage {self.stage_paths[i]!r} gives {tuple(f.shape)}, expected a map")
            self.adapters[f"stage{i}"] = AuxHead(f.shape[1], f.shape[2], num_joint, self.head_width).to(f.device)

    def _rotated_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage maps of the 3 rotated copies (90/180/270°), from a second student forward."""
        if self._taps is None:
            self._taps = Taps(self._student(), self.student_taps(), stop_early=True)
        rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(1, NUM_ROTATIONS)])
        _, feats = self._taps(rotated)
        return feats

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        x, y = batch["input"], batch["target"]
        b = y.shape[0]
        rot_feats = self._rotated_features(x)
        joint = joint_label(y.repeat(NUM_ROTATIONS), torch.arange(NUM_ROTATIONS, device=y.device).repeat_interleave(b))
        n = len(self.stage_paths or [])
        logits, embeds = [], []
        for i in range(n):
            f = torch.cat([student_feats[f"stage{i}"], rot_feats[f"stage{i}"].float()])
            z, e = self.adapters[f"stage{i}"](f)
            logits.append(z)
            embeds.append(e)
        t = self.temperature
        aux = torch.stack([cross_entropy(z, joint) for z in logits]).sum()
        zero = aux.new_zeros(())
        kl = sum((kd_loss(logits[k], logits[k + 1].detach(), t) for k in range(n - 1)), zero)
        feat = sum((F.mse_loss(embeds[k], embeds[k + 1].detach()) for k in range(n - 1)), zero)
        # deepest head, rotation 0: its class marginal (rotation fixed at 0) teaches the main classifier
        deep0 = logits[-1][:b].view(b, -1, NUM_ROTATIONS)[:, :, 0]
        main = kd_loss(student_feats["logits"], deep0.detach(), t)
        return {"aux": aux, "kl": kl, "feat": feat, "main": main}
