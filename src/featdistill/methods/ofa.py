"""OFA-KD: per-stage branches map student features to logits, matched to an ε-enhanced teacher target."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses._util import as_target, upcast
from featdistill.methods._util import infer_embedding_dim
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec

__all__ = ["OFA", "ofa_loss", "ofa_target", "SepConv", "PatchMerging", "build_ofa_branch"]


def ofa_target(
    teacher_logits: torch.Tensor, target: torch.Tensor, eps: float, temperature: float = 1.0
) -> torch.Tensor:
    """``(p_t + m)^ε − m`` with ``m = onehot(y)`` (argmax of a soft label); **not** normalised unless ε = 1."""
    num_classes = teacher_logits.shape[1]
    if target.is_floating_point():
        target = target.argmax(dim=1)
    mask = F.one_hot(target.long(), num_classes).to(as_target(teacher_logits).dtype)
    p_t = F.softmax(as_target(teacher_logits) / temperature, dim=1)  # float64 stays float64
    return (p_t + mask).pow(eps) - mask


def ofa_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """OFA loss ``mean_batch(−Σ_c [(p_t + m)^ε − m]_c · log p_s,c)`` (no T² factor; official ``ofa_loss``).

    With ε = 1 and T = 1 the target is ``p_t``, so this is ``KL(p_t ‖ p_s) + H(p_t)``: KD at T = 1 up to a
    constant of the student (same gradients).  ε > 1 boosts the target class and shrinks the others.
    ``log_softmax`` replaces the official ``log(softmax)`` for stability.
    """
    t = ofa_target(teacher_logits, target, eps, temperature)
    log_p_s = F.log_softmax(upcast(student_logits) / temperature, dim=1)
    return -(t * log_p_s).sum(dim=1).mean()


class SepConv(nn.Sequential):
    """dw3×3 stride 2 → pw1×1 → BN → ReLU → dw3×3 → pw1×1 → BN → ReLU (OFA ``distillers/utils.py``)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_in, 3, stride=1, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )


class PatchMerging(nn.Module):
    """2×2 neighbouring tokens concatenated → LayerNorm → Linear (no bias) → activation (Swin / OFA)."""

    def __init__(self, side: int, dim: int, out_dim: int, act: bool = True) -> None:
        super().__init__()
        self.side = side
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = x.view(b, self.side, self.side, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.act(self.reduction(self.norm(x.reshape(b, -1, 4 * c))))


class _TokenBranch(nn.Module):
    """Token features → (patch mergers on the patch tokens) → ViT blocks → CLS token or GAP → Linear."""

    def __init__(self, n_tokens: int, dim: int, d_final: int, num_classes: int, n_blocks: int) -> None:
        super().__init__()
        side = math.isqrt(n_tokens)
        self.has_cls = side * side != n_tokens
        if self.has_cls:
            side = math.isqrt(n_tokens - 1)
            if side * side != n_tokens - 1:
                raise ValueError(f"ofa: cannot view {n_tokens} tokens as a square grid (with or without CLS)")
        merges = max(int(math.floor(math.log2(side / 7))), 0) if side >= 7 else 0
        mergers: list[nn.Module] = []
        d = dim
        for i in range(merges):
            mergers.append(PatchMerging(side >> i, d, d_final, act=(i != merges - 1 or merges < 2)))
            d = d_final
        self.mergers = nn.Sequential(*mergers)
        self.cls_proj = nn.Linear(dim, d_final) if (self.has_cls and merges and dim != d_final) else nn.Identity()
        self.in_proj = nn.Linear(d, d_final) if d != d_final else nn.Identity()
        heads = 4 if d_final % 4 == 0 else 1
        self.blocks = nn.Sequential(
            *[
                nn.TransformerEncoderLayer(
                    d_final, heads, 4 * d_final, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
                )
                for _ in range(n_blocks)
            ]
        )
        self.fc = nn.Linear(d_final, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_cls:
            cls, patches = x[:, :1], x[:, 1:]
            x = torch.cat([self.cls_proj(cls), self.mergers(patches)], dim=1)
        else:
            x = self.mergers(x)
        x = self.blocks(self.in_proj(x))
        feat = x[:, 0] if self.has_cls else x.mean(dim=1)
        return self.fc(feat)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_ofa_branch(
    feat: torch.Tensor, stage: int, num_stages: int, d: int, num_classes: int, d_student_final: int | None = None
) -> nn.Module:
    """The OFA projector of one student stage (1-based ``stage`` out of ``num_stages``) → ``num_classes`` logits.

    CNN maps: ``num_stages − stage`` SepConvs (doubling channels, the last outputs ``d``), or a 1×1 conv to ``d``
    for the last stage, then GAP → Linear(d → C).  Tokens: patch mergers (to a 7×7 grid), ``max(num_stages −
    stage, 1)`` ViT blocks of width ``d_student_final``, CLS or GAP, Linear.  ``d = max(d_s_final, d_t_final)``.
    """
    if feat.dim() == 4:
        c = feat.shape[1]
        blocks: list[nn.Module] = []
        n_down = num_stages - stage
        if n_down <= 0:
            blocks.append(nn.Conv2d(c, d, 1))
        else:
            for i in range(n_down):
                out = d if i == n_down - 1 else 2 * c
                blocks.append(SepConv(c, out))
                c = out
        branch: nn.Module = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(d, num_classes))
    elif feat.dim() == 3:
        n, dim = feat.shape[1], feat.shape[2]
        branch = _TokenBranch(n, dim, d_student_final or dim, num_classes, max(num_stages - stage, 1))
    elif feat.dim() == 2:
        branch = nn.Sequential(nn.Linear(feat.shape[1], d), nn.ReLU(), nn.Linear(d, num_classes))
    else:
        raise ValueError(f"ofa: cannot build a branch for a feature of shape {tuple(feat.shape)}")
    _init(branch)
    return branch


@register_method
class OFA(Method):
    """ "One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation"
    (Hao et al., NeurIPS 2023).

    Feature spaces of heterogeneous pairs (CNN ↔ ViT ↔ MLP) disagree, so OFA never matches features: every
    student stage gets a branch projecting it to **class logits**, and each branch (plus the final logits) is
    trained against the teacher's final logits with the ε-enhanced target ``(p_t + m)^ε − m`` (T = 1, no T²).
    ``L = CE_ls + kd·L_ofa(z_s; ε) + ofa·Σ_i L_ofa(P_i(f_i); ε)``, all weights 1; the paper uses label
    smoothing 0.1 on the CE (``Distiller(label_smoothing=0.1)``).  Branches are dropped at export.
    """

    name = "ofa"
    paper = "One-for-All: Bridge the Gap Between Heterogeneous Architectures in KD (Hao et al., NeurIPS 2023)"
    default_weights = {"kd": 1.0, "ofa": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        eps: float | Sequence[float] = 1.0,
        temperature: float = 1.0,
        student_paths: Sequence[str] | None = None,
        width: int | None = None,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        self.eps = eps
        self.temperature = temperature
        self.student_paths = list(student_paths) if student_paths else None
        self.width = width
        self._d_s: int | None = None
        self._d_t: int | None = None

    def _eps(self, i: int) -> float:
        """ε of branch ``i``; the last entry (index ``len(paths)``) is the final logits' ε."""
        if isinstance(self.eps, (int, float)):
            return float(self.eps)
        eps = list(self.eps)
        if len(eps) != len(self.student_paths or []) + 1:
            raise ValueError(f"ofa: eps needs one value or {len(self.student_paths or []) + 1} (stages + logits)")
        return float(eps[i])

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_paths = self.student_paths or list(getattr(student, "stage_paths", []))
        if not self.student_paths:
            raise ValueError("ofa: give student_paths (the student has no stage_paths)")
        self._d_s = infer_embedding_dim(student)
        self._d_t = infer_embedding_dim(teacher)

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"stage{i}": TapSpec(p) for i, p in enumerate(self.student_paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"logits": TapSpec("")}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        n = len(self.student_paths or [])
        num_classes = student_feats["logits"].shape[1]
        last = student_feats[f"stage{n - 1}"]
        d_s = self._d_s or (last.shape[1] if last.dim() == 4 else last.shape[-1])
        d = self.width or max(d_s, self._d_t or 0)
        for i in range(n):
            f = student_feats[f"stage{i}"]
            branch = build_ofa_branch(f, i + 1, n, d, num_classes, d_s)
            self.adapters[f"stage{i}"] = branch.to(f.device)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        y = batch["target"]
        (z_t,) = self.standardized(teacher_feats["logits"])
        n = len(self.student_paths or [])
        branch_losses = [
            ofa_loss(
                *self.standardized(self.adapters[f"stage{i}"](student_feats[f"stage{i}"])),
                z_t,
                y,
                self._eps(i),
                self.temperature,
            )
            for i in range(n)
        ]
        return {
            "kd": ofa_loss(*self.standardized(student_feats["logits"]), z_t, y, self._eps(n), self.temperature),
            "ofa": torch.stack(branch_losses).sum(),
        }
