"""``divergence``: distil the teacher's distribution with a chosen divergence — the LLM-distillation family."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from featdistill.losses.divergences import DIVERGENCES, token_divergence
from featdistill.methods.base import Features, Method, register_method
from featdistill.taps import TapSpec


@register_method
class Divergence(Method):
    """Token-level distribution matching with ``forward_kl``, ``reverse_kl``, ``jsd`` (GKD's JSD(β)),
    ``skew_kl`` or ``skew_reverse_kl`` (DistiLLM) — :func:`~featdistill.losses.divergences.token_divergence`.

    ``L = w_ce·CE + w·D(p_t^T, p_s^T)`` at every valid position (per token for a causal LM, per pixel for
    segmentation, per sample for classification), mean over positions, no T² factor (TRL's convention;
    KD's is ``kd`` with its T²). Defaults: ``jsd`` with β = 0.5, T = 1 (TRL ``GKDConfig``), α = 0.1 for the
    skew divergences (DistiLLM). This is the *off-policy* (supervised-data) loss; on-policy generation (GKD's
    λ) is a training-data choice layered on top and is not part of this recipe.
    """

    name = "divergence"
    applies_to = frozenset({"class"})
    paper = (
        "On-Policy Distillation of Language Models (Agarwal et al., ICLR 2024); "
        "DistiLLM (Ko et al., ICML 2024); MiniLLM (Gu et al., ICLR 2024)"
    )
    default_weights = {"divergence": 1.0}
    default_ce_weight = 0.0

    def __init__(
        self,
        kind: str = "jsd",
        temperature: float = 1.0,
        beta: float = 0.5,
        alpha: float = 0.1,
        weights: Mapping[str, Any] | None = None,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weights, logit_standardization)
        if kind not in DIVERGENCES:
            raise ValueError(f"divergence: kind must be one of {list(DIVERGENCES)}, got {kind!r}")
        if not temperature > 0 or not 0.0 <= beta <= 1.0 or not 0.0 < alpha < 1.0:
            raise ValueError(
                f"divergence: need temperature > 0, 0 <= beta <= 1 and 0 < alpha < 1, got temperature="
                f"{temperature!r}, beta={beta!r}, alpha={alpha!r}"
            )
        self.kind, self.temperature, self.beta, self.alpha = kind, float(temperature), float(beta), float(alpha)

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"logits": TapSpec("")}

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        z_s, z_t = self.standardized(student_feats["logits"], teacher_feats["logits"])
        return {
            "divergence": token_divergence(
                z_s, z_t, self.kind, temperature=self.temperature, beta=self.beta, alpha=self.alpha
            )
        }
