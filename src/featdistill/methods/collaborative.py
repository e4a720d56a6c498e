"""Collaborative (online, mutual) distillation: two students trained from scratch teach each other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from featdistill.losses.logits import cross_entropy, kd_loss
from featdistill.methods.base import Features, Method, register_method

__all__ = ["Collaborative"]


@register_method
class Collaborative(Method):
    """Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu; "Deep Mutual Learning", CVPR 2018) — collaborative
    online distillation of two students, e.g. a CNN and a ViT.

    No pretrained teacher.  The method holds the **peer** network as a submodule (trained by the same optimiser,
    dropped by ``export_student``).  Per step each network gets CE on the labels plus
    ``T²·KL(p_other^T ‖ p_self^T)`` towards the *detached* prediction of the other:
    ``L = CE(s) [Distiller] + peer_ce·CE(peer) + kl·KL(peer→s) + kl·KL(s→peer)``.
    The peer's accuracy is available through :meth:`peer_logits`.
    """

    name = "collaborative"
    paper = "Deep Mutual Learning (Zhang et al., CVPR 2018): collaborative online distillation"
    needs_teacher = False
    default_weights = {"peer_ce": 1.0, "kl": 1.0, "peer_kl": 1.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        peer: nn.Module,
        temperature: float = 1.0,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        if not isinstance(peer, nn.Module):
            raise TypeError("collaborative: peer must be an nn.Module (the second student)")
        self.peer = peer
        self.temperature = temperature

    def peer_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.peer(x)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        z_s = student_feats["logits"]
        z_p = self.peer(batch["input"]).float()
        t = self.temperature
        y_s, y_p = self.standardized(z_s, z_p)  # the mutual KL terms only; the peer's CE sees raw logits
        return {
            "peer_ce": cross_entropy(z_p, batch["target"]),
            "kl": kd_loss(y_s, y_p.detach(), t),
            "peer_kl": kd_loss(y_p, y_s.detach(), t),
        }
