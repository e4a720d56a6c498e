"""Divergences between a teacher and a student distribution per row (token, pixel, sample): the LLM-distillation
family — forward KL, reverse KL, generalised Jensen–Shannon JSD(β), skew KL and skew reverse KL.

Definitions (``p`` teacher, ``q`` student, both ``softmax(logits / T)`` over the class/vocabulary dimension;
the value is the mean over rows, with no T² factor — TRL's ``GKDTrainer.generalized_jsd_loss`` convention,
which these functions reproduce):

* ``forward_kl``: ``KL(p ‖ q)`` — mode covering, Hinton KD without the T² factor;
* ``reverse_kl``: ``KL(q ‖ p)`` — mode seeking, the token-level form used by MiniLLM-style and on-policy
  recipes (MiniLLM itself optimises the *sequence*-level reverse KL with policy gradients; this is its
  per-token relaxation, as TRL's ``beta = 1``);
* ``jsd``: ``β·KL(p ‖ m) + (1 − β)·KL(q ‖ m)`` with ``m = β·p + (1 − β)·q`` (Agarwal et al., "On-Policy
  Distillation of Language Models", ICLR 2024, Eq. 1, as TRL computes it; ``β = 0`` and ``β = 1`` are
  dispatched to forward and reverse KL, as in TRL);
* ``skew_kl``: ``KL(p ‖ α·p + (1 − α)·q)``; ``skew_reverse_kl``: ``KL(q ‖ (1 − α)·p + α·q)`` (Ko et al.,
  "DistiLLM", ICML 2024; α = 0.1 there). Skewing bounds the divergence where the student puts no mass.

Everything is computed from log-probabilities (mixtures through ``logsumexp``), in float32 for half inputs and
float64 for float64 inputs. Teacher entries of probability 0 (``-inf`` log-probabilities) contribute exactly 0
to the forward KL, JSD and the skewed forms; the reverse KL is then infinite wherever the student puts mass
there — mathematically right, and the reason for ``skew_reverse_kl`` (a top-k store's dense reconstruction
floors log-probabilities at −1e4, which keeps it finite but large).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from featdistill.losses._util import as_target, upcast

__all__ = ["DIVERGENCES", "Divergence", "kl_from_log", "token_divergence"]

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")


def kl_from_log(log_a: Tensor, log_b: Tensor) -> Tensor:
    """Per-row ``KL(a ‖ b) = Σ a (log a − log b)`` from log-probabilities; entries with ``a = 0`` contribute 0."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros((), dtype=a.dtype)).sum(dim=-1)


def _mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """``log(w·a + (1 − w)·b)`` without leaving log space."""
    return torch.logsumexp(torch.stack([log_a + math.log(weight_a), log_b + math.log1p(-weight_a)]), dim=0)


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    kind: Divergence = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> Tensor:
    """Mean over the rows of ``(N, C)`` logits of the divergence ``kind`` (see the module docstring).

    ``teacher_logits`` may be log-probabilities (softmax is shift invariant) and gets no gradient here beyond
    what the caller allows (teacher sources give detached tensors).
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"token_divergence: kind must be one of {list(DIVERGENCES)}, got {kind!r}")
    if not temperature > 0:
        raise ValueError(f"token_divergence: temperature must be > 0, got {temperature!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"token_divergence: beta must be in [0, 1], got {beta!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"token_divergence: alpha must be in (0, 1), got {alpha!r}")
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            f"token_divergence: expected student and teacher logits of one shape (N, C), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    log_q = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    log_p = F.log_softmax(as_target(teacher_logits).to(log_q.dtype) / temperature, dim=-1)
    if kind == "jsd" and beta in (0.0, 1.0):
        kind = "forward_kl" if beta == 0.0 else "reverse_kl"
    if kind == "forward_kl":
        per_row = kl_from_log(log_p, log_q)
    elif kind == "reverse_kl":
        per_row = kl_from_log(log_q, log_p)
    elif kind == "jsd":
        log_m = _mixture(log_p, log_q, beta)
        per_row = beta * kl_from_log(log_p, log_m) + (1.0 - beta) * kl_from_log(log_q, log_m)
    elif kind == "skew_kl":
        per_row = kl_from_log(log_p, _mixture(log_p, log_q, alpha))
    else:  # skew_reverse_kl
        per_row = kl_from_log(log_q, _mixture(log_q, log_p, alpha))
    return per_row.mean()
