"""DMAE: masked feature distillation for ViTs — teacher and student see the same visible patches; the teacher runs
only up to its tapped block, on the visible patches only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.methods._util import model_device, unregistered
from featdistill.methods.base import Features, Method, register_method
from featdistill.seeding import generator
from featdistill.taps import Taps, TapSpec

__all__ = ["DMAE", "MaskedViT", "random_keep", "patchify", "masked_reconstruction_loss", "feature_l1", "vit_block_macs"]


# ---------------------------------------------------------------------------------------------------------------
# The ViT contract DMAE needs, and a small reference implementation
# ---------------------------------------------------------------------------------------------------------------


class MaskedViT(nn.Module):
    """A small ViT that accepts ``keep`` (``(B, n_keep)`` visible patch indices): the contract DMAE relies on.

    ``forward(x, keep=None)`` → logits.  Attributes: ``patch_size``, ``num_patches``, ``embed_dim``, ``depth``,
    ``stage_paths`` (``blocks.i``), ``embedding_path`` (``pool``), ``classifier_path`` (``head``).  Block outputs
    are ``(B, 1 + n_visible, D)`` (CLS first).  The zoo's ``vit_tiny`` is expected to honour the same contract.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        patch_size: int = 4,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"MaskedViT: image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch_size, self.embed_dim, self.depth = patch_size, embed_dim, depth
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    embed_dim,
                    num_heads,
                    4 * embed_dim,
                    dropout=0.0,
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.pool = nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes)
        self.stage_paths = [f"blocks.{i}" for i in range(depth)]
        self.embedding_path = "pool"
        self.classifier_path = "head"

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        if keep is not None:
            t = t.gather(1, keep[:, :, None].expand(-1, -1, t.shape[2]))
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        for blk in self.blocks:
            t = blk(t)
        return self.head(self.pool(self.norm(t)[:, 0]))


def random_keep(
    sample_id: torch.Tensor,
    view_id: torch.Tensor,
    num_patches: int,
    mask_ratio: float,
    seed: int = 0,
    epoch: int = 0,
) -> torch.Tensor:
    """Sorted visible patch indices ``(B, n_keep)``, one random mask per view, from explicit generators derived
    from ``(seed, sample_id, view_id, epoch)``: the same view gets the same mask every time it is asked for."""
    n_keep = max(1, int(round(num_patches * (1.0 - mask_ratio))))
    rows = []
    for sid, vid in zip(sample_id.tolist(), view_id.tolist()):
        g = generator(seed, "dmae-mask", sid, vid, epoch)
        rows.append(torch.randperm(num_patches, generator=g)[:n_keep].sort().values)
    return torch.stack(rows)


def patchify(img: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, N, p·p·C)`` in row-major patch order (MAE convention)."""
    b, c, h, w = img.shape
    x = img.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """MAE ``L_rec``: per-patch mean squared error, averaged over the **masked** patches only (``masked`` = 1)."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    m = masked.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


def feature_l1(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """``L1(normalize_lastdim(f_t), normalize_lastdim(f_s))`` over all tokens (visible + CLS)."""
    return F.l1_loss(F.normalize(student_tokens, dim=-1), F.normalize(teacher_tokens, dim=-1))


def vit_block_macs(n_tokens: int, dim: int, mlp_ratio: float = 4.0) -> int:
    """Multiply-accumulates of one ViT block on ``n_tokens``: QKV + proj + MLP (``(4 + 2r)·n·d²``) + attention
    (``2·n²·d``)."""
    return int((4 + 2 * mlp_ratio) * n_tokens * dim * dim + 2 * n_tokens * n_tokens * dim)


class _Decoder(nn.Module):
    """A light MAE decoder: embed visible tokens, insert mask tokens, add positions, one block, predict pixels."""

    def __init__(self, d_in: int, num_patches: int, patch_dim: int, d_dec: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d_dec)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_dec))
        self.pos = nn.Parameter(torch.zeros(1, num_patches, d_dec))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        heads = 4 if d_dec % 4 == 0 else 1
        self.block = nn.TransformerEncoderLayer(
            d_dec, heads, 4 * d_dec, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.out = nn.Linear(d_dec, patch_dim)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b = visible.shape[0]
        v = self.embed(visible)
        # under autocast the Linear gives bf16/fp16 while the mask token stays fp32: scatter needs one dtype
        full = self.mask_token.expand(b, self.pos.shape[1], -1).to(v.dtype).clone()
        full = full.scatter(1, keep[:, :, None].expand(-1, -1, v.shape[2]), v)
        return self.out(self.block(full + self.pos))


@register_method
class DMAE(Method):
    """ "Masked Autoencoders Enable Efficient Knowledge Distillers" (Bai et al., CVPR 2023).

    One random mask per view (ratio 0.75); **teacher and student see the same visible patches** (same ``keep``).
    The frozen teacher runs under inference mode only up to its tapped block (default: 3/4 of its depth, as
    block 18 of 24) and only on the visible tokens; the student (its block at 3/4 depth, e.g. 9 of 12) is
    projected by a Linear to the teacher's width.  ``feat = L1(normalize(f_t), normalize(Proj(f_s)))`` over
    visible tokens + CLS; ``rec`` = MAE pixel reconstruction of the masked patches by a light decoder on the
    student's last block.  The models must accept ``forward(x, keep=...)`` (:class:`MaskedViT` contract).
    DMAE is pre-training: CE is off by default (``ce_weight = 0``); the decoder and projector are dropped at export.
    :meth:`teacher_cost` reports the teacher MACs saved.
    """

    name = "dmae"
    paper = "Masked Autoencoders Enable Efficient Knowledge Distillers (Bai et al., CVPR 2023)"
    default_weights = {"feat": 1.0, "rec": 1.0}
    default_ce_weight = 0.0

    def __init__(
        self,
        mask_ratio: float = 0.75,
        student_block: int | None = None,
        teacher_block: int | None = None,
        decoder_dim: int = 64,
        seed: int = 0,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.mask_ratio, self.seed, self.decoder_dim = mask_ratio, seed, decoder_dim
        self.student_block, self.teacher_block = student_block, teacher_block
        self._student = unregistered(None)
        self._teacher = unregistered(None)
        self._s_taps: Taps | None = None
        self._t_taps: Taps | None = None
        self.last_keep: torch.Tensor | None = None

    @staticmethod
    def _check(model: nn.Module, role: str) -> None:
        missing = [a for a in ("patch_size", "num_patches", "embed_dim", "depth") if not hasattr(model, a)]
        if missing:
            raise TypeError(
                f"dmae: the {role} ({type(model).__name__}) lacks {missing}; DMAE needs a ViT with the MaskedViT "
                "contract: forward(x, keep=indices) and attributes patch_size, num_patches, embed_dim, depth"
            )

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if teacher is None:
            raise ValueError("dmae: needs the live teacher model (its forward is truncated at the tapped block)")
        self._check(student, "student")
        self._check(teacher, "teacher")
        if student.num_patches != teacher.num_patches:
            raise ValueError(
                f"dmae: student and teacher patch grids differ ({student.num_patches} vs "
                f"{teacher.num_patches}); they must see the same patches"
            )
        self.student_block = self.student_block if self.student_block is not None else (3 * student.depth) // 4 - 1
        self.teacher_block = self.teacher_block if self.teacher_block is not None else (3 * teacher.depth) // 4 - 1
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        self._student, self._teacher = unregistered(student), unregistered(teacher)

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        s, t = self._student(), self._teacher()
        dev = model_device(s)
        pe = getattr(s, "patch_embed", None)
        conv = pe if isinstance(pe, nn.Conv2d) else getattr(pe, "proj", None)
        in_ch = conv.in_channels if isinstance(conv, nn.Conv2d) else 3
        self.adapters["proj"] = nn.Linear(s.embed_dim, t.embed_dim).to(dev)
        patch_dim = s.patch_size * s.patch_size * in_ch
        self.adapters["decoder"] = _Decoder(s.embed_dim, s.num_patches, patch_dim, self.decoder_dim).to(dev)

    def student_taps(self) -> dict[str, TapSpec]:
        s = self._student()
        if s is None:  # not bound yet: the block paths come from the student
            return {}
        return {"feat": TapSpec(f"blocks.{self.student_block}"), "last": TapSpec(f"blocks.{s.depth - 1}")}

    def student_call_kwargs(self, batch: Mapping[str, Any], epoch: float) -> dict[str, Any]:
        """This step's mask: the Distiller's one student pass runs on the visible patches (``keep=``) and
        taps the recipe's blocks — no second, full-image student pass."""
        x = batch["input"]
        b = x.shape[0]
        sid = batch.get("sample_id", torch.arange(b))
        vid = batch.get("view_id", torch.zeros(b, dtype=torch.long))
        keep = random_keep(sid, vid, self._student().num_patches, self.mask_ratio, self.seed, int(epoch))
        self.last_keep = keep.to(x.device)
        return {"keep": self.last_keep}

    def _teacher_feat(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The frozen teacher, truncated after its tapped block, on the same visible patches."""
        t = self._teacher()
        if self._t_taps is None:
            self._t_taps = Taps(t, {"feat": f"blocks.{self.teacher_block}"}, stop_early=True)
        if model_device(t) != x.device:
            t.to(x.device)
        t.eval()
        with torch.inference_mode():
            _, tf = self._t_taps(x, keep=keep)
        return tf["feat"].clone()

    def _run(self, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Student (tapped block, last block) and teacher features on ``keep`` — a diagnostic outside training."""
        s = self._student()
        if self._s_taps is None:
            self._s_taps = Taps(s, {k: v.path for k, v in self.student_taps().items()}, stop_early=True)
        _, sf = self._s_taps(x, keep=keep)
        return sf["feat"], sf["last"], self._teacher_feat(x, keep)

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        x = batch["input"]
        s = self._student()
        b = x.shape[0]
        keep = self.last_keep
        if keep is None or keep.shape[0] != b:
            raise RuntimeError("dmae: the step's mask is missing; the Distiller calls student_call_kwargs first")
        f_s, last, f_t = student_feats["feat"], student_feats["last"], self._teacher_feat(x, keep)
        feat = feature_l1(self.adapters["proj"](f_s.float()), f_t.float())
        pred = self.adapters["decoder"](last[:, 1:].float(), keep)
        masked = torch.ones(b, s.num_patches, device=x.device)
        masked.scatter_(1, keep, 0.0)
        rec = masked_reconstruction_loss(pred, patchify(x.float(), s.patch_size), masked)
        return {"feat": feat, "rec": rec}

    def teacher_cost(self) -> dict[str, float]:
        """Teacher MACs per image (transformer blocks) for a full pass vs DMAE's truncated visible-only pass."""
        t = self._teacher()
        n = t.num_patches + 1
        n_vis = max(1, int(round(t.num_patches * (1.0 - self.mask_ratio)))) + 1
        full = t.depth * vit_block_macs(n, t.embed_dim)
        dmae = (self.teacher_block + 1) * vit_block_macs(n_vis, t.embed_dim)
        return {"full_macs": full, "dmae_macs": dmae, "fraction": dmae / full, "saved": 1.0 - dmae / full}
