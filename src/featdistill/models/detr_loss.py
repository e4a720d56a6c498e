"""DETR's set loss: box operations, the Hungarian matcher and the criterion (CE + L1 + GIoU, auxiliary layers).

Reference numerics: facebookresearch/detr (``models/matcher.py``, ``models/detr.py::SetCriterion``,
``util/box_ops.py``) — read, re-written here:

* matching cost ``C = w_cls·(−p(c_i)) + w_l1·‖b − b̂‖₁ + w_giou·(−GIoU(b, b̂))`` with ``(1, 5, 2)``, boxes as
  normalised ``(cx, cy, w, h)`` for the L1 and as ``xyxy`` for the GIoU; one ``linear_sum_assignment`` per image;
* loss: CE over ``K + 1`` classes (the last is "no object", weight ``eos_coef = 0.1``, every unmatched query's
  target) averaged with the class weights as ``F.cross_entropy(weight=…)`` does; L1 and ``1 − GIoU`` summed over
  the matched pairs and divided by the number of target boxes in the batch (at least 1); weights ``1 / 5 / 2``;
  the same loss on every auxiliary decoder layer (each matched anew).

scipy (``linear_sum_assignment``) comes with scikit-learn; it is imported on first use so that the package's core
needs nothing beyond torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_iou",
    "generalized_box_iou",
    "hungarian_match",
    "set_loss",
]


def box_cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def _area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)


def box_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU ``(N, M)`` of ``xyxy`` boxes, and the union (GIoU needs it)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return inter / union.clamp_min(1e-12), union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU ``(N, M)`` (Rezatofighi et al., 2019): ``IoU − (|C| − |A∪B|) / |C|``, C the enclosing box."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp_min(0).prod(-1)
    return iou - (hull - union) / hull.clamp_min(1e-12)


def match_cost(
    logits: Tensor, boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor, weights: tuple[float, float, float]
) -> Tensor:
    """The ``(Q, M)`` matching cost of one image (normalised ``cxcywh`` boxes)."""
    w_cls, w_l1, w_giou = weights
    prob = logits.float().softmax(-1)
    cost_cls = -prob[:, tgt_labels]
    cost_l1 = torch.cdist(boxes.float(), tgt_boxes.float(), p=1)
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes.float()), box_cxcywh_to_xyxy(tgt_boxes.float()))
    return w_cls * cost_cls + w_l1 * cost_l1 + w_giou * cost_giou


@torch.no_grad()
def hungarian_match(
    logits: Tensor,
    boxes: Tensor,
    targets: list[tuple[Tensor, Tensor]],
    weights: tuple[float, float, float] = (1.0, 5.0, 2.0),
) -> list[tuple[Tensor, Tensor]]:
    """Per image ``(query_idx, target_idx)`` of the minimum-cost one-to-one assignment.

    ``logits (B, Q, K+1)``, ``boxes (B, Q, 4)`` normalised ``cxcywh``; ``targets`` per image ``(labels (M,),
    boxes (M, 4))`` in the same box format.
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:  # pragma: no cover - scipy comes with scikit-learn
        raise ImportError("DETR's Hungarian matching needs scipy: pip install scipy") from err
    out = []
    for b, (lab, tb) in enumerate(targets):
        if lab.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=logits.device)
            out.append((empty, empty))
            continue
        cost = match_cost(logits[b], boxes[b], lab, tb, weights).cpu()
        qi, ti = linear_sum_assignment(cost.numpy())
        out.append(
            (
                torch.as_tensor(qi, dtype=torch.long, device=logits.device),
                torch.as_tensor(ti, dtype=torch.long, device=logits.device),
            )
        )
    return out


def set_loss(
    logits: Tensor,
    boxes: Tensor,
    targets: list[tuple[Tensor, Tensor]],
    matches: list[tuple[Tensor, Tensor]],
    eos_coef: float = 0.1,
    weights: tuple[float, float, float] = (1.0, 5.0, 2.0),
) -> dict[str, Tensor]:
    """Weighted ``{"cls", "l1", "giou"}`` of one decoder layer for given matches (DETR's ``SetCriterion``)."""
    n_cls = logits.shape[-1]
    target_cls = torch.full(logits.shape[:2], n_cls - 1, dtype=torch.long, device=logits.device)
    src_b, src_t, m_lab = [], [], []
    for b, ((lab, tb), (qi, ti)) in enumerate(zip(targets, matches)):
        target_cls[b, qi] = lab[ti]
        src_b.append(boxes[b, qi])
        src_t.append(tb[ti])
        m_lab.append(lab[ti])
    class_weight = torch.ones(n_cls, device=logits.device)
    class_weight[-1] = eos_coef
    ce = F.cross_entropy(logits.float().transpose(1, 2), target_cls, weight=class_weight)
    num_boxes = max(sum(int(lab.numel()) for lab, _ in targets), 1)
    pred = torch.cat(src_b).float() if src_b else boxes.new_zeros(0, 4)
    gt = torch.cat(src_t).float() if src_t else boxes.new_zeros(0, 4)
    l1 = F.l1_loss(pred, gt, reduction="sum") / num_boxes
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(gt)))
    w_cls, w_l1, w_giou = weights
    return {"cls": w_cls * ce, "l1": w_l1 * l1, "giou": w_giou * (1 - giou).sum() / num_boxes}
