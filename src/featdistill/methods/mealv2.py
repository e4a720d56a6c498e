"""MEAL V2: soft labels from an ensemble of teachers (averaged probabilities) + a logit discriminator."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses.logits import soft_target_ce
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec

__all__ = ["MEALV2", "TeacherEnsemble", "LogitDiscriminator", "teacher_ensemble", "zoo_member"]


class TeacherEnsemble(nn.Module):
    """N frozen teachers behind one module, so the engine (live teacher or teacher store) sees one teacher.

    ``forward(x)`` returns ``log q`` with ``q = (1/N) Σ_n softmax(z_n)`` — the ensemble **averages
    probabilities**, not logits; ``softmax(log q) = q``, so any logit loss reads it as the ensemble's
    distribution.  The mean of the raw logits (what MEAL V2's discriminator sees) is exposed at the tap
    ``"mean_logits"``.
    """

    def __init__(self, teachers: Sequence[nn.Module]) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("TeacherEnsemble needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.mean_logits = nn.Identity()
        self.log_probs = nn.Identity()
        first = teachers[0]
        for attr in ("embedding_path", "classifier_path"):
            if hasattr(first, attr):
                setattr(self, attr, f"teachers.0.{getattr(first, attr)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([t(x).float() for t in self.teachers])  # (N, B, C)
        self.mean_logits(z.mean(dim=0))
        log_q = torch.logsumexp(F.log_softmax(z, dim=2), dim=0) - math.log(z.shape[0])
        return self.log_probs(log_q)


class LogitDiscriminator(nn.Module):
    """MEAL V2's discriminator: a 1×1-conv MLP ``C → C/8 → C/64 → 2`` on **raw logits**, ReLU after every layer
    (the last included, as in ``models/discriminator.py``).  Hidden widths have floors (16, 8) for small C."""

    def __init__(self, num_classes: int, hidden: Sequence[int] | None = None) -> None:
        super().__init__()
        h = list(hidden) if hidden else [max(num_classes // 8, 16), max(num_classes // 64, 8)]
        dims = [num_classes, *h, 2]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Conv2d(a, b, 1), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.net(logits[:, :, None, None]).flatten(1)


@register_method
class MEALV2(Method):
    """ "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without Tricks"
    (Shen & Savvides, 2020).

    Only soft labels: ``L_KL = −Σ_c q_c log softmax(z_s)_c`` with ``q`` the teachers' averaged probabilities
    (T = 1, no one-hot term: ``ce_weight = 0``), plus a discriminator on logits
    ``L_D = BCE(D([z_s; mean_n z_t^n]), [1,0] for student rows, [0,1] for teacher rows)``.  As in the official
    code, the student and the discriminator minimise the same sum with one optimiser (no gradient reversal).
    Use :class:`TeacherEnsemble` for several teachers; a single teacher also works (``q = softmax(z_t)``).
    The paper fine-tunes a pretrained student.
    """

    name = "mealv2"
    paper = "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 on ImageNet without Tricks (Shen & Savvides)"
    default_weights = {"kl": 1.0, "disc": 1.0}
    default_ce_weight = 0.0

    def __init__(
        self, discriminator: bool = True, disc_lr_scale: float = 0.01, weights: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(weights)
        self.use_disc = discriminator
        if disc_lr_scale <= 0:
            raise ValueError(f"disc_lr_scale must be > 0, got {disc_lr_scale}")
        # the official recipe: student lr 0.01, discriminator lr 1e-4 → 0.01× in its own optimiser group
        self.lr_scales = {"disc": float(disc_lr_scale)}
        self._ensemble = False

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self._ensemble = isinstance(teacher, TeacherEnsemble)

    def teacher_taps(self) -> dict[str, TapSpec]:
        taps = {"logits": TapSpec("")}
        if self._ensemble:
            taps["mean_logits"] = TapSpec("mean_logits")
        return taps

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        if self.use_disc:
            c = student_feats["logits"].shape[1]
            self.adapters["disc"] = LogitDiscriminator(c).to(student_feats["logits"].device)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        z_s = student_feats["logits"]
        q = F.softmax(teacher_feats["logits"].float(), dim=1)
        out = {"kl": soft_target_ce(z_s, q)}
        if self.use_disc:
            z_t = teacher_feats.get("mean_logits", teacher_feats["logits"])
            d_in = torch.cat([z_s, z_t.to(z_s.dtype)], dim=0)
            b = z_s.shape[0]
            labels = torch.zeros(2 * b, 2, device=z_s.device)
            labels[:b, 0] = 1.0
            labels[b:, 1] = 1.0
            out["disc"] = F.binary_cross_entropy_with_logits(self.adapters["disc"](d_in), labels)
        else:
            out["disc"] = z_s.new_zeros(())
        return out


def zoo_member(section: Mapping[str, Any], num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A zoo model from a config-like section ``{model, kwargs?, checkpoint?}`` (weights loaded safely)."""
    from featdistill.components import load_weights
    from featdistill.models import build_model

    m = build_model(
        section["model"],
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        **dict(section.get("kwargs", {})),
    )
    if section.get("checkpoint"):
        load_weights(m, section["checkpoint"])
    return m


def teacher_ensemble(
    members: Sequence[Mapping[str, Any]], num_classes: int = 10, in_channels: int = 1, image_size: int = 28
) -> nn.Module:
    """MEAL V2's teachers as one module from zoo sections ``[{model, kwargs?, checkpoint?}, …]`` — what a YAML
    ``teacher: {class_path: featdistill.methods.mealv2:teacher_ensemble, init_args: {members: [...]}}`` builds;
    a ``teacher.checkpoint`` of the whole ensemble may load over it."""
    if not members:
        raise ValueError("teacher_ensemble: give at least one member {model, kwargs?, checkpoint?}")
    return TeacherEnsemble([zoo_member(m, num_classes, in_channels, image_size) for m in members])
