"""PELA: factorise a trained model's Linear / Conv layers into low-rank pairs (SVD init), then distil from the
original to recover accuracy."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.methods._util import unregistered
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec, resolve_module

__all__ = [
    "PELA",
    "LowRankLinear",
    "LowRankConv2d",
    "low_rank_rank",
    "low_rank_copy",
    "pela_student",
    "count_parameters",
    "inf_norm_penalty",
]

DEFAULT_SKIP = ("norm", "head", "patch_embed", "downsample")


def low_rank_rank(m_in: int, m_out: int, ratio: float) -> int:
    """PELA's rank ``r = floor(m_in·m_out / (ratio·(m_in + m_out)))`` (at least 1)."""
    return max(1, int(math.floor(m_in * m_out / (ratio * (m_in + m_out)))))


def _svd_factors(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``W (m_out, m_in) ≈ A @ B`` with ``A = U_r √Σ_r`` (m_out, r) and ``B = √Σ_r V_rᵀ`` (r, m_in)."""
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    root = s[:r].sqrt()
    return (u[:, :r] * root).to(w.dtype), (root[:, None] * vh[:r]).to(w.dtype)


class LowRankLinear(nn.Module):
    """``Linear(m_in → r, no bias) → Linear(r → m_out, bias)``, initialised by truncated SVD of the original."""

    def __init__(self, layer: nn.Linear, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.first = nn.Linear(layer.in_features, rank, bias=False)
        self.second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
        a, b = _svd_factors(layer.weight, rank)
        with torch.no_grad():
            self.first.weight.copy_(b)
            self.second.weight.copy_(a)
            if layer.bias is not None:
                self.second.bias.copy_(layer.bias)

    def product(self) -> torch.Tensor:
        """``W_r W_l`` in the original layer's weight shape."""
        return self.second.weight @ self.first.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class LowRankConv2d(nn.Module):
    """``Conv(c_in → r, k×k, original stride/padding, no bias) → Conv1×1(r → c_out, bias)``, SVD of the weight
    reshaped to ``(c_out, c_in·k·k)``.  Grouped convolutions are left alone (not factorised)."""

    def __init__(self, layer: nn.Conv2d, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.first = nn.Conv2d(
            layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=False
        )
        self.second = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None)
        w = layer.weight.reshape(layer.out_channels, -1)
        a, b = _svd_factors(w, rank)
        with torch.no_grad():
            self.first.weight.copy_(b.reshape(rank, *layer.weight.shape[1:]))
            self.second.weight.copy_(a[:, :, None, None])
            if layer.bias is not None:
                self.second.bias.copy_(layer.bias)

    def product(self) -> torch.Tensor:
        w = self.second.weight.flatten(1) @ self.first.weight.flatten(1)
        return w.reshape(self.second.out_channels, *self.first.weight.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def low_rank_copy(
    model: nn.Module,
    ratio: float = 2.0,
    skip: Sequence[str] = DEFAULT_SKIP,
    min_out: int = 10,
    convs: bool = True,
    only_if_smaller: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """A deep copy of ``model`` with every eligible ``nn.Linear`` (and ``nn.Conv2d`` if ``convs``) factorised.

    Skipped, as in the official ``low_rank.py``: layers whose dotted name contains one of ``skip`` (plus the
    model's ``classifier_path``), layers with fewer than ``min_out`` outputs, grouped convs, and (by default)
    layers the factorisation would not shrink.  Returns ``(copy, report)``; the report lists each replaced
    layer with its rank and the parameters before / after.
    """
    student = copy.deepcopy(model)
    for p in student.parameters():  # the original may be a frozen teacher; the copy is trained
        p.requires_grad_(True)
    student.train()
    skip = tuple(skip) + ((model.classifier_path,) if getattr(model, "classifier_path", None) else ())
    layers: list[dict[str, Any]] = []
    for name, module in list(student.named_modules()):
        if not name or any(s and s in name for s in skip):
            continue
        if isinstance(module, nn.Linear):
            m_in, m_out = module.in_features, module.out_features
            make = LowRankLinear
        elif convs and isinstance(module, nn.Conv2d) and module.groups == 1:
            m_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            m_out = module.out_channels
            make = LowRankConv2d
        else:
            continue
        if m_out < min_out:
            continue
        r = low_rank_rank(m_in, m_out, ratio)
        if only_if_smaller and r * (m_in + m_out) >= m_in * m_out:
            continue
        before = count_parameters(module)
        new = make(module, r)
        student.set_submodule(name, new)
        layers.append({"layer": name, "rank": r, "params_before": before, "params_after": count_parameters(new)})
    report = {
        "ratio": ratio,
        "params_before": count_parameters(model),
        "params_after": count_parameters(student),
        "layers": layers,
    }
    report["reduction"] = 1.0 - report["params_after"] / max(report["params_before"], 1)
    return student, report


def inf_norm_penalty(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], eps: float = 0.0) -> torch.Tensor:
    """``mean_layers(max_ij |W_r W_l − W_orig|_ij − eps)²`` — PELA's weight-perturbation regulariser."""
    terms = [((prod - orig.to(prod)).abs().max() - eps).pow(2) for prod, orig in pairs]
    return torch.stack(terms).mean()


@register_method
class PELA(Method):
    """ "PELA: Learning Parameter-Efficient Models with Low-Rank Approximation" (Guo et al., CVPR 2024).

    The student is a **low-rank copy of the teacher** (:func:`low_rank_copy`: every eligible Linear/Conv becomes a
    rank-``r`` pair initialised by truncated SVD, ``r = ⌊m_in·m_out / (ratio·(m_in + m_out))⌋``).  It is then
    trained ("intermediate pre-training") with the original as teacher:
    ``L = CE + feat·(1/L)Σ_l MSE(h_s^l, h_t^l) + logit·MSE(z_s, z_t) + inf·mean_l(max|W_rW_l − W_orig| − eps)²``
    over every stage output (same widths, no projector).  Defaults as in the DeiT recipe: feat 1, logit 0,
    inf 0 (the Swin script uses inf 1, eps 0).
    """

    name = "pela"
    paper = "PELA: Learning Parameter-Efficient Models with Low-Rank Approximation (Guo et al., CVPR 2024)"
    default_weights = {"feat": 1.0, "logit": 0.0, "inf": 0.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        paths: Sequence[str] | None = None,
        eps: float = 1e-3,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.paths = list(paths) if paths else None
        self.eps = eps
        self._student = unregistered(None)
        self._teacher = unregistered(None)
        self._low_rank: list[str] = []

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.paths = self.paths or list(getattr(student, "stage_paths", []))
        if not self.paths:
            raise ValueError("pela: give paths (block outputs compared between the low-rank and original model)")
        self._low_rank = [n for n, m in student.named_modules() if isinstance(m, (LowRankLinear, LowRankConv2d))]
        if not self._low_rank:
            raise ValueError(
                "pela: the student has no low-rank layers; build it with "
                "featdistill.methods.pela.low_rank_copy(teacher, ratio) first"
            )
        self._student, self._teacher = unregistered(student), unregistered(teacher)

    def student_taps(self) -> dict[str, TapSpec]:
        return {f"blk{i}": TapSpec(p) for i, p in enumerate(self.paths or [])}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {**self.student_taps(), "logits": TapSpec("")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        n = len(self.paths or [])
        feat = torch.stack([F.mse_loss(student_feats[f"blk{i}"], teacher_feats[f"blk{i}"]) for i in range(n)]).mean()
        out = {"feat": feat}
        out["logit"] = F.mse_loss(student_feats["logits"], teacher_feats["logits"])
        if self.weights["inf"].value != 0:
            s, t = self._student(), self._teacher()
            pairs = [(resolve_module(s, p).product(), resolve_module(t, p).weight) for p in self._low_rank]
            out["inf"] = inf_norm_penalty(pairs, self.eps)
        else:
            out["inf"] = feat.new_zeros(())
        return out


def pela_student(
    base: Mapping[str, Any], ratio: float = 4.0, num_classes: int = 10, in_channels: int = 1, image_size: int = 28
) -> nn.Module:
    """PELA's student from YAML: :func:`low_rank_copy` of a trained zoo model ``{model, kwargs?, checkpoint}``
    (the teacher) at ``ratio`` — ``student: {class_path: featdistill.methods.pela:pela_student, init_args: {base:
    {model: resnet20, checkpoint: T.safetensors}, ratio: 4}}``."""
    from featdistill.methods.mealv2 import zoo_member

    return low_rank_copy(zoo_member(base, num_classes, in_channels, image_size), ratio=float(ratio))[0]
