"""OFD: overhaul of feature distillation — pre-ReLU features, a margin from the teacher's BN, a partial L2."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses.feature_regression import ofd_margin, ofd_partial_l2
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec, resolve_module

__all__ = ["OFD", "OFDConnector", "preact_points"]


def _last_bn(seq: nn.Module) -> str:
    names = [n for n, m in seq.named_children() if isinstance(m, nn.BatchNorm2d)]
    if not names:
        raise ValueError(f"ofd: no BatchNorm2d in {type(seq).__name__}")
    return names[-1]


def preact_points(model: nn.Module) -> list[dict[str, str]]:
    """Per stage (mdistiller's ``preact_feats[1:]`` and ``get_bn_before_relu()``) of a zoo model:
    ``{"tap": path of the pre-ReLU map, "bn": path of the BN before that ReLU}``; ShuffleNetV2 gives
    ``{"split_in": block input, "tap": bn3}`` (its pre-activation is ``cat(first half of the input, bn3)``, as in
    mdistiller, and it has no teacher margin)."""
    from featdistill.models.resnet import CifarResNet
    from featdistill.models.shufflenet import ShuffleNetV2
    from featdistill.models.vgg import VGG
    from featdistill.models.wrn import WideResNet

    if isinstance(model, CifarResNet):
        out = []
        for stage in ("layer1", "layer2", "layer3"):
            last = len(resolve_module(model, stage)) - 1
            out.append({"tap": f"{stage}.{last}.preact", "bn": f"{stage}.{last}.bn2"})
        return out
    if isinstance(model, WideResNet):  # preact net: the next unit's bn1, and the final bn1, see the stage outputs
        paths = ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
        return [{"tap": p, "bn": p} for p in paths]
    if isinstance(model, VGG):
        out = []
        for i in range(1, 5):
            p = f"block{i}.{_last_bn(resolve_module(model, f'block{i}'))}"
            out.append({"tap": p, "bn": p})
        return out
    if isinstance(model, ShuffleNetV2):
        out = []
        for stage in ("layer1", "layer2", "layer3"):
            last = len(resolve_module(model, stage)) - 1
            out.append({"split_in": f"{stage}.{last}", "tap": f"{stage}.{last}.bn3"})
        return out
    raise ValueError(
        f"ofd: no pre-ReLU feature points known for {type(model).__name__} (zoo CIFAR ResNet, WRN, VGG, ShuffleNetV2 "
        "students); give student_points / teacher_points as [{tap: PATH, bn: PATH}, ...]"
    )


class OFDConnector(nn.Sequential):
    """mdistiller ``ConnectorConvBN``: ``Conv(C_s → C_t, k, bias=False)`` with ``N(0, sqrt(2/(k²·C_t)))`` weights
    then ``BatchNorm2d(C_t)`` (weight 1, bias 0)."""

    def __init__(self, c_s: int, c_t: int, kernel_size: int = 1) -> None:
        conv = nn.Conv2d(c_s, c_t, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False)
        n = kernel_size * kernel_size * c_t
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / n))
        bn = nn.BatchNorm2d(c_t)
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
        super().__init__(conv, bn)


@register_method
class OFD(Method):
    """ "A Comprehensive Overhaul of Feature Distillation" (Heo et al., ICCV 2019) — mdistiller
    ``distillers/OFD.py`` (defaults ``CFG.OFD``: CE 1, feat 0.001, connector kernel 1).

    At every stage (the last pre-ReLU map; deepest stages paired when counts differ) a connector (conv + BN) maps the
    student's pre-ReLU map to the teacher's channels; the teacher's map is average-pooled to the student's size; the
    margin per teacher channel is ``E[x | x < 0]`` under the BN before that ReLU (:func:`ofd_margin`); the partial L2
    (:func:`ofd_partial_l2`) of stage ``i`` of ``n`` is weighted ``1/2^(n−1−i)``.  ``L = CE + 0.001·ofd``.

    Differences: mdistiller's ``OFD.train()`` also switches the *teacher* to train mode (its BN then normalises with
    batch statistics and updates its running statistics during distillation); here the teacher stays frozen in eval
    mode (the engine's contract).  The margin comes from the live teacher's BN at bind time (a teacher store has no
    BN: give ``margins``).
    """

    name = "ofd"
    applies_to = frozenset({"image"})
    paper = "A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019)"
    default_weights = {"ofd": 0.001}
    default_ce_weight = 1.0

    def __init__(
        self,
        student_points: list[dict[str, str]] | None = None,
        teacher_points: list[dict[str, str]] | None = None,
        margins: list[list[float]] | None = None,
        kernel_size: int = 1,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.student_points, self.teacher_points = student_points, teacher_points
        self.kernel_size = kernel_size
        self._given_margins = margins
        self.n_stages = 0

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        s = self.student_points or preact_points(student)
        if self.teacher_points is None:
            if teacher is None:
                raise ValueError("ofd: give teacher_points and margins when the teacher is not a live model")
            self.teacher_points = preact_points(teacher)
        t = self.teacher_points
        n = min(len(s), len(t))
        self.student_points, self.teacher_points, self.n_stages = s[-n:], t[-n:], n
        if self._given_margins is not None:
            ms = [torch.as_tensor(m, dtype=torch.float32) for m in self._given_margins][-n:]
        else:
            if teacher is None or any("bn" not in p for p in t):
                raise ValueError("ofd: the teacher's BN before each ReLU is needed for the margins (give margins=)")
            ms = []
            for p in t:
                bn = resolve_module(teacher, p["bn"])
                ms.append(ofd_margin(bn.weight.detach().cpu(), bn.bias.detach().cpu()).float())
        for i, m in enumerate(ms):
            self.register_buffer(f"margin{i}", m.clone())

    def student_taps(self) -> dict[str, TapSpec]:
        taps: dict[str, TapSpec] = {}
        for i, p in enumerate(self.student_points or []):
            taps[f"ofd{i}"] = TapSpec(p["tap"])
            if "split_in" in p:
                taps[f"ofd{i}_in"] = TapSpec(p["split_in"], kind="input")
        return taps

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {f"ofd{i}": TapSpec(p["tap"]) for i, p in enumerate(self.teacher_points or [])}

    def _student_preact(self, feats: Features, i: int) -> torch.Tensor:
        f = feats[f"ofd{i}"]
        if f"ofd{i}_in" in feats:  # ShuffleNetV2: cat(first half of the block input, bn3 output)
            x = feats[f"ofd{i}_in"]
            f = torch.cat([x[:, : x.shape[1] - f.shape[1]], f], dim=1)
        return f

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        for i in range(self.n_stages):
            s, t = self._student_preact(student_feats, i), teacher_feats[f"ofd{i}"]
            self.adapters[f"ofd{i}"] = OFDConnector(s.shape[1], t.shape[1], self.kernel_size).to(s.device)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        n = self.n_stages
        total: torch.Tensor | None = None
        for i in range(n):
            s = self.adapters[f"ofd{i}"](self._student_preact(student_feats, i))
            t = teacher_feats[f"ofd{i}"]
            t = F.adaptive_avg_pool2d(t.clone() if t.is_inference() else t, s.shape[-2:]).to(s.dtype)
            term = ofd_partial_l2(s, t, getattr(self, f"margin{i}")) / 2 ** (n - i - 1)
            total = term if total is None else total + term
        assert total is not None
        return {"ofd": total}
