"""A small DETR (Carion et al., ECCV 2020) for the zoo: CNN backbone → transformer encoder (memory) → decoder
over learned object queries → class and box heads, trained by Hungarian set matching.

Architecture (reference: facebookresearch/detr, read and re-written small):

* backbone: stride-2 ``conv3×3 → BN → ReLU`` stages, then a 1×1 projection to ``d_model``;
* 2-D **sine positional encoding** (DETR's ``PositionEmbeddingSine(normalize=True)``, temperature 10000, scale 2π)
  added to queries and keys of every attention over the memory;
* post-norm encoder and decoder layers as in DETR (``q = k = x + pos``; dropout 0 by default so that a run is
  deterministic at this scale; DETR uses 0.1);
* **queries are learned anchor boxes** (DAB-DETR, Liu et al., ICLR 2022): each query is a learned ``(cx, cy, w,
  h)`` whose sine embedding goes through a 2-layer MLP to the query position, with a zero content vector (DETR's
  ``tgt = 0``); the box head predicts an offset to the anchor (``σ(Δ + σ⁻¹(anchor))``, last layer zero-initialised).
  Anchors are kept fixed across layers (no iterative refinement, no modulated attention). Why anchors and not
  DETR's free query vectors: a ground-truth box can then be fed as a query through the same mapping the model
  trained its own queries with — what CLoCKDistill's target-aware queries need (``extra_queries=``);
* ``class_embed`` (``K + 1`` logits, the last "no object") and a 3-layer ``bbox_embed`` shared by all decoder
  layers; every layer's output is normalised by ``decoder.norm`` and supervised (auxiliary losses).

``forward(x, extra_queries=None)`` returns a dict of tensors: ``logits (B, Q, K+1)``, ``boxes (B, Q, 4)``
(normalised ``cxcywh``), ``aux_logits``/``aux_boxes`` ``(L-1, B, Q, ·)``, ``query_embed (B, Q, D)`` (the last
layer's normalised query embeddings), ``image_size`` ``(2,)`` = ``(H, W)``, and for the extra queries
``extra_logits (B, E, K+1)``, ``extra_boxes``, ``extra_embed`` (``E = 0`` when none are given, so the keys always
exist and taps on them always fire). ``extra_queries`` are ``(B, E, 4)`` normalised ``cxcywh`` anchors appended to
the learned ones behind an attention mask: learned and extra queries never see each other (the detections are
exactly those without extra queries) and an extra query attends only to itself among the queries (its output
depends on its own box and the memory, not on the padding next to it).

Tappable paths: ``backbone.i`` (stages), ``input_proj``, ``encoder.layers.i``, ``encoder`` (memory ``(B, HW,
D)``), ``memory_map`` (the same memory as ``(B, D, H, W)``), ``decoder.layers.i`` (``(B, Q+E, D)``, before the
shared norm), ``decoder.norm`` (``(L, B, Q+E, D)``).

Loss and decoding follow :mod:`featdistill.models.detection_api` (``detection_loss``, ``decode``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .detection_api import PAD_LABEL
from .detr_loss import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, hungarian_match, set_loss
from .registry import register_model

__all__ = ["DETR", "sine_position_map", "sine_box_embedding", "pixel_boxes_to_anchors"]


def sine_position_map(h: int, w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """DETR's normalised sine encoding of an ``h × w`` grid: ``(dim, h, w)``, ``y`` features then ``x``."""
    npf = dim // 2
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)[None, :].expand(h, w)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    dim_t = 10000 ** (2 * (torch.arange(npf, device=device) // 2) / npf)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack([px[..., 0::2].sin(), px[..., 1::2].cos()], dim=-1).flatten(-2)
    py = torch.stack([py[..., 0::2].sin(), py[..., 1::2].cos()], dim=-1).flatten(-2)
    return torch.cat([py, px], dim=-1).permute(2, 0, 1)


def sine_box_embedding(boxes: Tensor, feats_per_coord: int) -> Tensor:
    """DAB-DETR's sine embedding of normalised ``(…, 4)`` boxes: ``(…, 4·feats_per_coord)``."""
    dim_t = 10000 ** (2 * (torch.arange(feats_per_coord, device=boxes.device) // 2) / feats_per_coord)
    p = boxes[..., None] * (2 * math.pi) / dim_t
    p = torch.stack([p[..., 0::2].sin(), p[..., 1::2].cos()], dim=-1).flatten(-2)
    return p.flatten(-2)


def _inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def pixel_boxes_to_anchors(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Pixel ``xyxy`` boxes → normalised ``cxcywh`` in ``[0, 1]`` (the format of queries and predictions)."""
    h, w = image_size
    scale = boxes.new_tensor([w, h, w, h])
    return box_xyxy_to_cxcywh(boxes / scale).clamp(0.0, 1.0)


class _MLP(nn.Sequential):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, layers: int) -> None:
        mods: list[nn.Module] = []
        dims = [d_in] + [d_hidden] * (layers - 1) + [d_out]
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.ReLU())
        super().__init__(*mods)


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        q = src + pos
        src = self.norm1(src + self.drop(self.self_attn(q, q, src, need_weights=False)[0]))
        return self.norm2(src + self.drop(self.ffn(src)))


class Encoder(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(d, heads, ffn, dropout) for _ in range(depth)])

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return src


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, attn_mask: Tensor | None) -> Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, q, tgt, attn_mask=attn_mask, need_weights=False)[0]))
        cross = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.drop(cross))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


class Decoder(nn.Module):
    """Anchor boxes → query positions (sine embedding + MLP), zero content, ``depth`` layers, one shared norm."""

    def __init__(self, d: int, heads: int, ffn: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.d = d
        self.ref_point_head = _MLP(2 * d, d, d, 2)
        self.layers = nn.ModuleList([DecoderLayer(d, heads, ffn, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)

    def forward(self, anchors: Tensor, memory: Tensor, pos: Tensor, attn_mask: Tensor | None) -> Tensor:
        query_pos = self.ref_point_head(sine_box_embedding(anchors, self.d // 2))
        tgt = torch.zeros_like(query_pos)
        hs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, attn_mask)
            hs.append(tgt)
        return self.norm(torch.stack(hs))  # (L, B, Q', D): one call, so ``decoder.norm`` is tappable


def query_mask(n_learned: int, n_extra: int, device: torch.device) -> Tensor | None:
    """Self-attention mask (``True`` = blocked): learned queries see each other only; an extra query sees only
    itself."""
    if n_extra == 0:
        return None
    n = n_learned + n_extra
    mask = torch.ones(n, n, dtype=torch.bool, device=device)
    mask[:n_learned, :n_learned] = False
    idx = torch.arange(n_learned, n, device=device)
    mask[idx, idx] = False
    return mask


class DETR(nn.Module):
    """See the module docstring. ``widths``: backbone stage widths (each stage halves the resolution)."""

    def __init__(
        self,
        num_classes: int = 3,
        in_channels: int = 3,
        image_size: int = 64,
        widths: tuple[int, ...] = (16, 32, 64),
        d_model: int = 64,
        heads: int = 4,
        ffn: int = 128,
        enc_layers: int = 1,
        dec_layers: int = 2,
        num_queries: int = 16,
        dropout: float = 0.0,
        eos_coef: float = 0.1,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        if d_model % heads or d_model % 4:
            raise ValueError(f"DETR: d_model={d_model} must be a multiple of 4 and of heads={heads}")
        if num_queries < 1 or enc_layers < 1 or dec_layers < 1:
            raise ValueError(
                f"DETR: num_queries, enc_layers and dec_layers must be >= 1, got {num_queries}, {enc_layers}, "
                f"{dec_layers}"
            )
        self.num_classes, self.num_queries, self.d_model = num_classes, num_queries, d_model
        self.eos_coef, self.aux_loss, self.image_size = eos_coef, aux_loss, image_size
        stages, c = [], in_channels
        for wd in widths:
            stages.append(nn.Sequential(nn.Conv2d(c, wd, 3, 2, 1, bias=False), nn.BatchNorm2d(wd), nn.ReLU()))
            c = wd
        self.backbone = nn.Sequential(*stages)
        self.input_proj = nn.Conv2d(c, d_model, 1)
        self.encoder = Encoder(d_model, heads, ffn, enc_layers, dropout)
        self.memory_map = nn.Identity()
        self.decoder = Decoder(d_model, heads, ffn, dec_layers, dropout)
        anchors = torch.empty(num_queries, 4)
        anchors[:, :2].uniform_(0.05, 0.95)
        anchors[:, 2:] = 0.25
        self.query_anchors = nn.Parameter(_inverse_sigmoid(anchors))
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.bbox_embed = _MLP(d_model, d_model, 4, 3)
        nn.init.zeros_(self.bbox_embed[-1].weight)
        nn.init.zeros_(self.bbox_embed[-1].bias)
        self.stage_paths = [f"backbone.{i}" for i in range(len(widths))]
        self.memory_path, self.memory_map_path = "encoder", "memory_map"
        self.embedding_path, self.classifier_path = "decoder.norm", "class_embed"

    def forward(self, x: Tensor, extra_queries: Tensor | None = None) -> dict[str, Tensor]:
        b = x.shape[0]
        f = self.input_proj(self.backbone(x))
        _, d, h, w = f.shape
        pos = sine_position_map(h, w, d, f.device).to(f.dtype).flatten(1).T[None].expand(b, -1, -1)
        memory = self.encoder(f.flatten(2).transpose(1, 2), pos)
        self.memory_map(memory.transpose(1, 2).reshape(b, d, h, w))
        learned = self.query_anchors.sigmoid()[None].expand(b, -1, -1)
        n_extra = 0 if extra_queries is None else int(extra_queries.shape[1])
        if n_extra:
            if extra_queries.shape[0] != b or extra_queries.shape[2] != 4:  # type: ignore[union-attr]
                raise ValueError(
                    f"DETR: extra_queries must be (B={b}, E, 4) normalised cxcywh boxes, got "
                    f"{tuple(extra_queries.shape)}"  # type: ignore[union-attr]
                )
            anchors = torch.cat([learned, extra_queries.to(learned.dtype)], dim=1)  # type: ignore[union-attr]
        else:
            anchors = learned
        hs = self.decoder(anchors, memory, pos, query_mask(self.num_queries, n_extra, x.device))
        logits = self.class_embed(hs)
        boxes = (self.bbox_embed(hs) + _inverse_sigmoid(anchors)[None]).sigmoid()
        q = self.num_queries
        return {
            "logits": logits[-1, :, :q],
            "boxes": boxes[-1, :, :q],
            "aux_logits": logits[:-1, :, :q],
            "aux_boxes": boxes[:-1, :, :q],
            "query_embed": hs[-1, :, :q],
            "extra_logits": logits[-1, :, q:],
            "extra_boxes": boxes[-1, :, q:],
            "extra_embed": hs[-1, :, q:],
            "image_size": torch.tensor([x.shape[2], x.shape[3]], device=x.device),
        }

    # -- the detection contract (featdistill.models.detection_api.Detector) ----------------------------------
    def _targets(self, output: dict[str, Tensor], boxes: Tensor, labels: Tensor) -> list[tuple[Tensor, Tensor]]:
        h, w = (int(v) for v in output["image_size"].tolist())
        out = []
        for bx, lab in zip(boxes, labels):
            keep = lab != PAD_LABEL
            out.append((lab[keep], pixel_boxes_to_anchors(bx[keep].float(), (h, w))))
        return out

    def match(self, output: dict[str, Tensor], boxes: Tensor, labels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The final layer's Hungarian matches ``(query_idx, target_idx)`` per image (padded pixel targets)."""
        return hungarian_match(output["logits"], output["boxes"], self._targets(output, boxes, labels))

    def detection_loss(self, output: dict[str, Tensor], boxes: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``{"cls", "l1", "giou"}`` of the last decoder layer (weights 1/5/2, no-object weight ``eos_coef``) and
        ``"aux"``: the same three summed over the other layers, each matched anew (DETR's auxiliary losses)."""
        targets = self._targets(output, boxes, labels)
        terms = set_loss(
            output["logits"],
            output["boxes"],
            targets,
            hungarian_match(output["logits"], output["boxes"], targets),
            self.eos_coef,
        )
        if self.aux_loss and output["aux_logits"].shape[0]:
            aux = output["logits"].new_zeros(())
            for lg, bx in zip(output["aux_logits"], output["aux_boxes"]):
                layer = set_loss(lg, bx, targets, hungarian_match(lg, bx, targets), self.eos_coef)
                aux = aux + sum(layer.values())
            terms["aux"] = aux
        return terms

    @torch.no_grad()
    def decode(
        self, output: dict[str, Tensor], score_threshold: float = 0.05, max_detections: int = 100
    ) -> list[dict[str, Tensor]]:
        """One detection per query (DETR's ``PostProcess``): the best real class and its probability, boxes in
        input pixels ``xyxy`` clipped to the image; those at or above ``score_threshold``, the ``max_detections``
        best first."""
        h, w = (int(v) for v in output["image_size"].tolist())
        prob = output["logits"].float().softmax(-1)[..., :-1]
        scores, labels = prob.max(-1)
        scale = output["boxes"].new_tensor([w, h, w, h]).float()
        boxes = (box_cxcywh_to_xyxy(output["boxes"].float()).clamp(0.0, 1.0)) * scale  # clipped to the image
        out = []
        for s, lab, bx in zip(scores, labels, boxes):
            keep = (s >= score_threshold).nonzero().flatten()
            keep = keep[s[keep].argsort(descending=True)][:max_detections]
            out.append({"boxes": bx[keep], "scores": s[keep], "labels": lab[keep]})
        return out


def _zoo(num_classes: int, in_channels: int, image_size: int, **cfg: object) -> DETR:
    return DETR(num_classes, in_channels, image_size, **cfg)  # type: ignore[arg-type]


@register_model("detr_tiny")
def detr_tiny(
    num_classes: int = 3,
    in_channels: int = 3,
    image_size: int = 64,
    widths: tuple[int, ...] = (16, 32, 64),
    d_model: int = 64,
    heads: int = 4,
    ffn: int = 128,
    enc_layers: int = 1,
    dec_layers: int = 2,
    num_queries: int = 16,
    dropout: float = 0.0,
    eos_coef: float = 0.1,
    aux_loss: bool = True,
) -> DETR:
    """Backbone 16/32/64 (stride 8), d 64, 4 heads, 1 encoder + 2 decoder layers, 16 queries (~0.2 M params)."""
    return _zoo(
        num_classes,
        in_channels,
        image_size,
        widths=tuple(widths),
        d_model=d_model,
        heads=heads,
        ffn=ffn,
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        num_queries=num_queries,
        dropout=dropout,
        eos_coef=eos_coef,
        aux_loss=aux_loss,
    )


@register_model("detr_small")
def detr_small(
    num_classes: int = 3,
    in_channels: int = 3,
    image_size: int = 64,
    widths: tuple[int, ...] = (32, 64, 128),
    d_model: int = 128,
    heads: int = 8,
    ffn: int = 256,
    enc_layers: int = 2,
    dec_layers: int = 3,
    num_queries: int = 24,
    dropout: float = 0.0,
    eos_coef: float = 0.1,
    aux_loss: bool = True,
) -> DETR:
    """Backbone 32/64/128 (stride 8), d 128, 8 heads, 2 encoder + 3 decoder layers, 24 queries."""
    return _zoo(
        num_classes,
        in_channels,
        image_size,
        widths=tuple(widths),
        d_model=d_model,
        heads=heads,
        ffn=ffn,
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        num_queries=num_queries,
        dropout=dropout,
        eos_coef=eos_coef,
        aux_loss=aux_loss,
    )
