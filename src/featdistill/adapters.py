"""Shape bridges between a student feature and a teacher feature, built by probing one batch.

Why probe instead of declaring channel counts: the shapes of intermediate features depend on the input
size, the architecture and the tap, and users get them wrong.  The engine runs one batch through both
networks, reads the actual shapes, and :func:`build_adapter` picks the bridge:

| student            | teacher            | adapter                                                        |
|--------------------|--------------------|----------------------------------------------------------------|
| map (B,C,H,W)      | map (B,C',H',W')   | 1×1 conv + BN (3×3 stride-2 conv if H = 2H', transposed conv if |
|                    |                    | H = H'/2, bilinear resize otherwise)                            |
| vector (B,D)       | vector (B,D')      | linear                                                          |
| tokens (B,N,D)     | tokens (B,N',D')   | linear on D (token count resized by interpolation if N ≠ N')   |
| tokens (B,N,D)     | map (B,C,H,W)      | drop class token, tokens → grid, then the map bridge            |
| map (B,C,H,W)      | tokens (B,N,D)     | map → grid of tokens, then linear                              |
| map (B,C,H,W)      | vector (B,D)       | global average pool + linear                                   |

Adapters are trained with the student (they are parameters of the method) and are dropped when the
student is exported.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["build_adapter", "describe_adapter", "ShapeMismatchError", "AdapterKind"]

AdapterKind = Literal["auto", "identity", "conv", "linear", "tokens_to_map", "map_to_tokens", "pool"]


class ShapeMismatchError(ValueError):
    """Student and teacher features differ in shape and no adapter was allowed to bridge them."""


def _fmt(shape: torch.Size | tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MapAdapter(nn.Module):
    """Feature map → feature map: channel mixing plus a spatial bridge (FitNets' ConvReg, generalised)."""

    def __init__(self, c_in: int, c_out: int, hw_in: tuple[int, int], hw_out: tuple[int, int]) -> None:
        super().__init__()
        self.hw_out = hw_out
        (hi, wi), (ho, wo) = hw_in, hw_out
        self.resize = False
        if (hi, wi) == (2 * ho, 2 * wo):
            self.conv: nn.Module = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        elif (2 * hi, 2 * wi) == (ho, wo):
            self.conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)
        else:
            self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
            self.resize = (hi, wi) != (ho, wo)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if self.resize:
            x = F.interpolate(x, size=self.hw_out, mode="bilinear", align_corners=False)
        return x


class LinearAdapter(nn.Module):
    """Vectors or tokens: a linear map on the last dimension; token counts resized if they differ."""

    def __init__(self, d_in: int, d_out: int, n_in: int | None = None, n_out: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        self.n_out = n_out if (n_in is not None and n_in != n_out) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if self.n_out is not None:  # (B, N, D) → (B, N', D)
            x = F.interpolate(x.transpose(1, 2), size=self.n_out, mode="linear", align_corners=False)
            x = x.transpose(1, 2)
        return x


def _grid_side(n_tokens: int) -> tuple[int, bool]:
    """Return (side, has_class_token) for a token sequence from a square patch grid."""
    for drop in (0, 1):
        side = math.isqrt(n_tokens - drop)
        if side * side == n_tokens - drop and side > 0:
            return side, bool(drop)
    raise ShapeMismatchError(f"cannot view {n_tokens} tokens as a square patch grid (with or without one class token)")


class TokensToMap(nn.Module):
    """ViT tokens (B, N, D) → CNN map (B, C, H, W): drop the class token, fold the grid, bridge."""

    def __init__(self, n_tokens: int, d: int, c_out: int, hw_out: tuple[int, int]) -> None:
        super().__init__()
        self.side, self.has_cls = _grid_side(n_tokens)
        self.map = MapAdapter(d, c_out, (self.side, self.side), hw_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_cls:
            x = x[:, 1:]
        b, n, d = x.shape
        x = x.transpose(1, 2).reshape(b, d, self.side, self.side)
        return self.map(x)


class MapToTokens(nn.Module):
    """CNN map (B, C, H, W) → ViT tokens (B, N, D): pool to the teacher's grid, flatten, project."""

    def __init__(self, c_in: int, n_tokens: int, d_out: int) -> None:
        super().__init__()
        self.side, self.has_cls = _grid_side(n_tokens)
        self.proj = nn.Linear(c_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, self.side).flatten(2).transpose(1, 2)
        x = self.proj(x)
        if self.has_cls:  # the mean token stands in for the class token
            x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        return x


class PoolLinear(nn.Module):
    """Map (B, C, H, W) → vector (B, D): global average pooling then a linear projection."""

    def __init__(self, c_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(c_in, d_out) if c_in != d_out else Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def _choose(s: tuple[int, ...], t: tuple[int, ...]) -> AdapterKind:
    """Pick the bridge from per-sample shapes: map = (C, H, W), tokens = (N, D), vector = (D,)."""
    if s == t:
        return "identity"
    if len(s) == 3 and len(t) == 3:
        return "conv"
    if len(s) in (1, 2) and len(s) == len(t):
        return "linear"
    if len(s) == 2 and len(t) == 3:
        return "tokens_to_map"
    if len(s) == 3 and len(t) == 2:
        return "map_to_tokens"
    if len(s) == 3 and len(t) == 1:
        return "pool"
    raise ShapeMismatchError(
        f"no adapter bridges a student feature of shape (B, {', '.join(map(str, s))}) to a teacher feature "
        f"of shape (B, {', '.join(map(str, t))}); tap a feature of compatible rank (maps, tokens or vectors)"
    )


def describe_adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> str:
    """Human description of the adapter :func:`build_adapter` would build (used in error messages)."""
    s, t = tuple(student_shape[1:]), tuple(teacher_shape[1:])
    kind = _choose(s, t)
    if kind == "identity":
        return "none needed"
    if kind == "conv":
        resize = f", resize {s[1]}×{s[2]}→{t[1]}×{t[2]}" if s[1:] != t[1:] else ""
        return f"adapter 'conv' (conv {s[0]}→{t[0]} channels + BN{resize})"
    if kind == "linear":
        return f"adapter 'linear' ({s[-1]}→{t[-1]})"
    if kind == "tokens_to_map":
        return f"adapter 'tokens_to_map' ({s[0]} tokens of {s[1]} → {t[0]}×{t[1]}×{t[2]} map)"
    if kind == "map_to_tokens":
        return f"adapter 'map_to_tokens' ({s[0]}-channel map → {t[0]} tokens of {t[1]})"
    return f"adapter 'pool' (global pool + linear {s[0]}→{t[0]})"


def build_adapter(
    student_shape: tuple[int, ...] | torch.Size,
    teacher_shape: tuple[int, ...] | torch.Size,
    kind: AdapterKind = "auto",
) -> nn.Module:
    """Build the module mapping a student feature (batch dim included) to the teacher feature's shape."""
    s, t = tuple(student_shape[1:]), tuple(teacher_shape[1:])
    if kind == "auto":
        kind = _choose(s, t)
    if kind == "identity":
        if s != t:
            raise ShapeMismatchError(
                f"student feature {_fmt(tuple(student_shape))} ≠ teacher feature {_fmt(tuple(teacher_shape))}"
                f"; set adapter 'auto' to build {describe_adapter(tuple(student_shape), tuple(teacher_shape))}"
            )
        return Identity()
    if kind == "conv":
        return MapAdapter(s[0], t[0], (s[1], s[2]), (t[1], t[2]))
    if kind == "linear":
        if len(s) == 1:
            return LinearAdapter(s[0], t[0])
        return LinearAdapter(s[1], t[1], s[0], t[0])
    if kind == "tokens_to_map":
        return TokensToMap(s[0], s[1], t[0], (t[1], t[2]))
    if kind == "map_to_tokens":
        return MapToTokens(s[0], t[0], t[1])
    if kind == "pool":
        return PoolLinear(s[0], t[0])
    raise ValueError(f"unknown adapter kind {kind!r}; choose one of {AdapterKind.__args__}")
