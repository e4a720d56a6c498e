"""The small DETR: Hungarian matching, the set loss, decoding, extra queries and taps."""

from __future__ import annotations

import itertools

import torch

from featdistill.models import build_model
from featdistill.models.detection_api import PAD_LABEL
from featdistill.models.detr_loss import generalized_box_iou, hungarian_match, match_cost
from featdistill.taps import Taps


def toy_batch(n: int = 4, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with one or two filled rectangles (class = channel lit); padded pixel xyxy targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, size, size)
    boxes = torch.zeros(n, 2, 4)
    labels = torch.full((n, 2), PAD_LABEL)
    for i in range(n):
        for j in range(1 + i % 2):
            x1, y1 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
            w, h = (int(v) for v in torch.randint(6, size // 2, (2,), generator=g))
            c = int(torch.randint(0, 3, (1,), generator=g))
            x[i, c, y1 : y1 + h, x1 : x1 + w] = 1.0
            boxes[i, j] = torch.tensor([x1, y1, x1 + w, y1 + h], dtype=torch.float)
            labels[i, j] = c
    return x, boxes, labels


def test_hungarian_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    for q, m in [(3, 2), (4, 4), (5, 3)]:
        logits = torch.randn(1, q, 4, generator=g)
        boxes = torch.rand(1, q, 4, generator=g) * 0.5 + 0.25
        lab = torch.randint(0, 3, (m,), generator=g)
        tb = torch.rand(m, 4, generator=g) * 0.5 + 0.25
        ((qi, ti),) = hungarian_match(logits, boxes, [(lab, tb)])
        cost = match_cost(logits[0], boxes[0], lab, tb, (1.0, 5.0, 2.0))
        best = min(sum(cost[p[j], j].item() for j in range(m)) for p in itertools.permutations(range(q), m))
        assert len(qi) == m and sorted(ti.tolist()) == list(range(m))
        assert abs(cost[qi, ti].sum().item() - best) < 1e-5


def test_giou_hand_case() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    # IoU 1/7, hull 9, union 7: GIoU = 1/7 − 2/9; identical boxes: 1
    assert torch.allclose(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 1.0]]))


def test_loss_decreases_on_toy_boxes() -> None:
    torch.manual_seed(0)
    model = build_model("detr_tiny", num_classes=3, in_channels=3, image_size=32, num_queries=8)
    x, boxes, labels = toy_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = last = 0.0
    for step in range(30):
        terms = model.detection_loss(model(x), boxes, labels)
        assert set(terms) == {"cls", "l1", "giou", "aux"}
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if step == 0 else first
        last = float(loss.detach())
    assert last < 0.75 * first, (first, last)


def test_decode_format_and_threshold() -> None:
    torch.manual_seed(0)
    model = build_model("detr_tiny", num_classes=3, image_size=32, num_queries=8).eval()
    x, _, _ = toy_batch(2)
    out = model(x)
    dets = model.decode(out, score_threshold=0.0, max_detections=5)
    assert len(dets) == 2
    for d in dets:
        assert d["boxes"].shape == (5, 4) and d["scores"].shape == (5,) and d["labels"].dtype == torch.long
        assert (d["scores"][:-1] >= d["scores"][1:]).all() and (d["labels"] < 3).all()
        assert (d["boxes"][:, 2:] >= d["boxes"][:, :2]).all() and d["boxes"].max() <= 32
    assert all(len(d["boxes"]) == 0 for d in model.decode(out, score_threshold=1.01))


def test_extra_queries_leave_detections_unchanged_and_taps_fire() -> None:
    torch.manual_seed(0)
    model = build_model("detr_tiny", num_classes=3, image_size=32, num_queries=8).eval()
    x, _, _ = toy_batch(2)
    extra = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.4]]]).expand(2, -1, -1)
    taps = {"mem": "encoder", "map": "memory_map", "dec0": "decoder.layers.0", "hs": "decoder.norm"}
    with Taps(model, taps) as t, torch.no_grad():
        plain, f0 = t(x)
        with_extra, f1 = t(x, extra_queries=extra)
    assert torch.allclose(plain["logits"], with_extra["logits"], atol=1e-6)
    assert torch.allclose(plain["boxes"], with_extra["boxes"], atol=1e-6)
    assert with_extra["extra_logits"].shape == (2, 2, 4) and plain["extra_logits"].shape == (2, 0, 4)
    assert f0["mem"].shape == (2, 16, 64) and f0["map"].shape == (2, 64, 4, 4)
    assert torch.equal(f0["map"].flatten(2).transpose(1, 2), f0["mem"])
    assert f1["dec0"].shape == (2, 10, 64) and f1["hs"].shape == (2, 2, 10, 64)
    # an extra query's output depends on its own box only, not on its neighbours
    alone = model(x, extra_queries=extra[:, :1])
    assert torch.allclose(alone["extra_logits"], with_extra["extra_logits"][:, :1], atol=1e-5)
    # at init the box head predicts the anchor itself (zero-initialised offset)
    assert torch.allclose(with_extra["extra_boxes"], extra, atol=1e-5)


def test_zoo_sizes() -> None:
    small = build_model("detr_small", num_classes=5, image_size=64)
    tiny = build_model("detr_tiny", num_classes=5, image_size=64)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(small) > 3 * n(tiny)
    assert small(torch.zeros(1, 3, 64, 64))["logits"].shape == (1, 24, 6)
