"""Adapters: the auto-built bridge always yields exactly the teacher's shape; mismatches explain themselves."""

from __future__ import annotations

import pytest
import torch

from featdistill.adapters import ShapeMismatchError, build_adapter, describe_adapter


@pytest.mark.parametrize(
    "s,t",
    [
        ((2, 16, 8, 8), (2, 32, 8, 8)),  # same size: 1×1 conv + BN
        ((2, 16, 16, 16), (2, 32, 8, 8)),  # 2×: stride-2 conv
        ((2, 16, 4, 4), (2, 32, 8, 8)),  # ½: transposed conv
        ((2, 16, 7, 7), (2, 32, 4, 4)),  # otherwise: resize
        ((2, 10), (2, 20)),  # vectors: linear
        ((2, 17, 12), (2, 17, 24)),  # tokens: linear
        ((2, 17, 12), (2, 5, 24)),  # tokens with a different count
        ((2, 17, 12), (2, 32, 8, 8)),  # ViT tokens (with class token) → CNN map
        ((2, 16, 8, 8), (2, 17, 24)),  # CNN map → ViT tokens
        ((2, 16, 8, 8), (2, 64)),  # map → vector
        ((2, 16, 8, 8), (2, 16, 8, 8)),  # identical: identity
    ],
)
def test_adapter_output_has_teacher_shape(s, t):
    adapter = build_adapter(s, t)
    y = adapter(torch.randn(*s))
    assert tuple(y.shape) == t


def test_adapter_is_trainable_and_gradients_flow():
    adapter = build_adapter((2, 8, 4, 4), (2, 16, 4, 4))
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    adapter(x).pow(2).mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in adapter.parameters())


def test_identity_refuses_mismatch_with_both_shapes_and_fix():
    with pytest.raises(ShapeMismatchError) as err:
        build_adapter((2, 16, 8, 8), (2, 32, 4, 4), kind="identity")
    msg = str(err.value)
    assert "(2, 16, 8, 8)" in msg and "(2, 32, 4, 4)" in msg and "conv 16→32" in msg


def test_describe_and_unbridgeable():
    assert "linear" in describe_adapter((2, 10), (2, 20))
    with pytest.raises(ShapeMismatchError, match="no adapter"):
        build_adapter((2, 10), (2, 3, 4, 4))
