"""Representation-similarity measures: linear CKA and the loss ``1 − CKA``.

Linear CKA (Kornblith, Norouzi, Lee, Hinton, "Similarity of Neural Network Representations Revisited",
ICML 2019) compares two representations of the same ``n`` samples regardless of their widths; OFA-KD uses it
to show heterogeneous pairs learn divergent features. This is the biased (plain HSIC) form on one batch; the
unbiased mini-batch estimator is not implemented.
"""

from __future__ import annotations

from torch import Tensor

from featdistill.losses._util import as_target, upcast

__all__ = ["linear_cka", "cka_loss"]


def _centred_rows(x: Tensor, name: str) -> Tensor:
    if x.ndim < 2:
        raise ValueError(f"linear_cka: {name} must have a sample dimension and features, got {tuple(x.shape)}")
    flat = x.reshape(x.shape[0], -1)
    return flat - flat.mean(dim=0, keepdim=True)


def linear_cka(x: Tensor, y: Tensor, eps: float = 1e-12) -> Tensor:
    """Linear CKA ``‖Yᵀ X‖_F² / (‖Xᵀ X‖_F · ‖Yᵀ Y‖_F)`` of column-centred ``X (n, p1)``, ``Y (n, p2)``.

    Each input is flattened per sample (``(n, ...) → (n, p)``). The result lies in ``[0, 1]``, is 1 for
    ``X = Y`` and is invariant to orthogonal transforms and isotropic scaling of either side (not to arbitrary
    invertible maps). It is computed from the ``n × n`` Gram matrices when that is cheaper
    (``⟨XXᵀ, YYᵀ⟩_F / (‖XXᵀ‖_F ‖YYᵀ‖_F)``, the same number), else from the feature cross-covariances.
    A constant representation (zero after centring) gives 0.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka: x and y must describe the same samples, got {x.shape[0]} and {y.shape[0]} rows "
            f"(shapes {tuple(x.shape)} and {tuple(y.shape)})"
        )
    xc = _centred_rows(upcast(x), "x")
    yc = _centred_rows(as_target(y), "y").to(xc.dtype)
    n, p1 = xc.shape
    p2 = yc.shape[1]
    if n * n <= p1 * p2:
        k = xc @ xc.T
        l_ = yc @ yc.T
        cross = (k * l_).sum()
        norm_x = k.norm()
        norm_y = l_.norm()
    else:
        cross = (yc.T @ xc).pow(2).sum()
        norm_x = (xc.T @ xc).norm()
        norm_y = (yc.T @ yc).norm()
    return cross / (norm_x * norm_y).clamp_min(eps)


def cka_loss(x: Tensor, y: Tensor) -> Tensor:
    """``1 − linear_cka(x, y)``: 0 when the representations agree up to rotation and scale, at most 1."""
    return 1.0 - linear_cka(x, y)
