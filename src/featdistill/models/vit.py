"""A small Vision Transformer (pre-norm, class token, learned position embeddings) with patch masking.

Why it exists: feature distillation between CNNs and ViTs (OFA-KD, masked generative distillation) needs a
transformer whose token stages can be tapped by name (``blocks.{i}``, ``blocks.{i}.attn``,
``blocks.{i}.mlp``) and whose encoder can run on the visible patches only, so a masked student costs what its
visible tokens cost.

Masking. ``forward(x, mask=None, keep=None)`` takes ``mask``: a bool tensor ``(B, num_patches)``, ``True`` =
the patch is **kept** (visible). Every row must keep the same number of patches (tokens are batched densely).
Masked patches are *dropped* — not replaced by a mask token — after their position embedding is added, so the
encoder runs on ``1 + K`` tokens. ``keep`` gives the visible patches as indices ``(B, K)`` instead (the
``methods/dmae.py`` contract). ``forward_features(x, keep_idx=None)`` returns the normalised tokens for
explicit indices, in the order they should appear; ``mask_to_keep_idx`` converts a mask (ascending patch
order). With every patch kept the output equals the unmasked output.

Token layout of every ``blocks.{i}`` output: ``(B, 1 + K, dim)``, token 0 is the class token, tokens ``1:``
the (kept) patches in row-major grid order when unmasked. Pooled embedding ``(B, dim)`` at ``flatten`` (class
token after the final ``norm``, or the mean of patch tokens with ``pool="mean"``), logits at ``head``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches → ``dim`` tokens, ``(B, C, H, W) → (B, N, dim)``."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention via ``scaled_dot_product_attention`` (fused kernels where available)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"ViT dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Two-layer GELU MLP of the transformer block."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenPool(nn.Module):
    """``(B, 1 + K, D) → (B, D)``: the class token (``"cls"``) or the patch-token mean (``"mean"``)."""

    def __init__(self, mode: str = "cls"):
        super().__init__()
        if mode not in ("cls", "mean"):
            raise ValueError(f"ViT pool must be 'cls' or 'mean', got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0] if self.mode == "cls" else x[:, 1:].mean(dim=1)


def mask_to_keep_idx(mask: Tensor) -> Tensor:
    """Bool keep-mask ``(B, N)`` → long indices ``(B, K)`` of the kept patches, ascending.

    Raises ``ValueError`` if rows keep different numbers of patches (the visible tokens must form a
    dense batch).
    """
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a bool tensor (B, num_patches), got {mask.dtype} {tuple(mask.shape)}")
    counts = mask.sum(dim=1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(
            f"every row of mask must keep the same number of patches, got {counts.tolist()}; "
            "sample a fixed number of visible patches per image"
        )
    k = int(counts[0]) if counts.numel() else 0
    # Stable sort puts kept (False after ~) first in their original order.
    return torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :k]


class VisionTransformer(nn.Module):
    """ViT for ``image_size`` inputs with ``patch_size`` patches (must divide ``image_size``)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        pool: str = "cls",
    ):
        super().__init__()
        if image_size % patch_size != 0:
            divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
            raise ValueError(
                f"ViT patch_size={patch_size} does not divide image_size={image_size}; use one of {divisors}"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.num_prefix_tokens = 1
        self.embed_dim = dim
        self.depth = depth

        self.patch_embed = PatchEmbed(in_channels, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pool = TokenPool(pool)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(dim, num_classes)

        self.stage_paths: list[str] = [f"blocks.{i}" for i in range(depth)]
        self.embedding_path: str = "flatten"
        self.classifier_path: str = "head"
        self._init_weights()

    def _init_weights(self) -> None:
        """ViT/DeiT initialisation: truncated normal (std 0.02) for embeddings and linear weights."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor, keep_idx: Tensor | None = None) -> Tensor:
        """Normalised tokens ``(B, 1 + K, dim)``; ``keep_idx`` ``(B, K)`` picks the visible patches."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"ViT built for {self.image_size}×{self.image_size} inputs got {tuple(x.shape[-2:])}; "
                "rebuild it with image_size set to the input size"
            )
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:]
        if keep_idx is not None:
            if keep_idx.dim() != 2 or keep_idx.shape[0] != x.shape[0]:
                raise ValueError(f"keep_idx must be (B, K) = ({x.shape[0]}, K), got {tuple(keep_idx.shape)}")
            index = keep_idx.to(device=tokens.device, dtype=torch.long).unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            tokens = torch.gather(tokens, 1, index)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: Tensor, mask: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
        """Logits, the encoder running on the visible patches only when masked.

        ``mask``: bool ``(B, num_patches)``, True = keep. ``keep``: the same as indices ``(B, K)`` (the
        contract ``methods/dmae.py`` uses: teacher and student get the same ``keep``). Give at most one.
        """
        if mask is not None and keep is not None:
            raise ValueError("pass either mask (bool, True = keep) or keep (indices), not both")
        keep_idx = keep if mask is None else mask_to_keep_idx(mask)
        return self.head(self.flatten(self.pool(self.forward_features(x, keep_idx))))


@register_model("vit_tiny")
def vit_tiny(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    patch_size: int = 4,
    dim: int = 192,
    depth: int = 12,
    heads: int = 3,
    mlp_ratio: float = 4.0,
    pool: str = "cls",
) -> nn.Module:
    """DeiT-Ti-shaped ViT (dim 192, depth 12, 3 heads) with 4-px patches by default (64 tokens at 32×32)."""
    return VisionTransformer(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=mlp_ratio,
        pool=pool,
    )
