"""CLoCKDistill: location-guided distillation of the DETR encoder memory + logit distillation at ground-truth
target-aware queries shared by the teacher and student decoders."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featdistill.losses.logits import kd_loss
from featdistill.methods.base import Features, Method, register_method
from featdistill.models.detection_api import PAD_LABEL
from featdistill.models.detr import pixel_boxes_to_anchors
from featdistill.models.detr_loss import box_cxcywh_to_xyxy, generalized_box_iou
from featdistill.taps import TapSpec

__all__ = ["CLoCKDistill", "ground_truth", "location_weights", "target_queries"]


def ground_truth(batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """The padded targets of a detection batch: ``batch["boxes"]``/``["labels"]`` or ``batch["target"]`` holding
    them (the :mod:`~featdistill.models.detection_api` contract)."""
    source = batch.get("target") if isinstance(batch.get("target"), Mapping) else batch
    if "boxes" not in source or "labels" not in source:  # type: ignore[operator]
        raise ValueError(
            "clockdistill needs ground-truth boxes: the batch must carry 'boxes' (B, M, 4) and 'labels' (B, M) "
            f"(or a 'target' mapping with them); it has {sorted(batch)} — use a detection task and dataset"
        )
    return source["boxes"], source["labels"]  # type: ignore[index]


def target_queries(boxes: Tensor, labels: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """GT pixel ``xyxy`` boxes → the target-aware query anchors ``(B, M, 4)`` (normalised ``cxcywh``, the format
    of a DETR's own queries) and the ``(B, M)`` mask of real (non-padding) rows."""
    valid = labels != PAD_LABEL
    anchors = pixel_boxes_to_anchors(boxes.float(), image_size)
    # padding rows get a harmless centred box; their outputs are masked out of every loss
    anchors = torch.where(valid[..., None], anchors, anchors.new_tensor([0.5, 0.5, 0.1, 0.1]))
    return anchors, valid


def location_weights(
    boxes: Tensor, labels: Tensor, image_size: tuple[int, int], grid: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Per memory position ``(B, h, w)`` foreground and background weights from the GT boxes (FGD's masks).

    A cell belongs to a box when it overlaps it (``floor(x1·s) … ceil(x2·s) − 1``); its foreground weight is
    ``1 / (cells of the box)`` — the largest such value when boxes overlap, so each object weighs 1 whatever its
    size. Every other cell has background weight ``1 / (background cells)``.
    """
    b, (h, w) = boxes.shape[0], grid
    sy, sx = h / image_size[0], w / image_size[1]
    fg = torch.zeros(b, h, w, device=boxes.device)
    for i in range(b):
        for box, lab in zip(boxes[i].tolist(), labels[i].tolist()):
            if lab == PAD_LABEL:
                continue
            x0 = min(max(math.floor(box[0] * sx), 0), w - 1)
            y0 = min(max(math.floor(box[1] * sy), 0), h - 1)
            x1 = min(max(math.ceil(box[2] * sx), x0 + 1), w)
            y1 = min(max(math.ceil(box[3] * sy), y0 + 1), h)
            region = fg[i, y0:y1, x0:x1]
            fg[i, y0:y1, x0:x1] = region.clamp_min(1.0 / ((y1 - y0) * (x1 - x0)))
    is_bg = fg == 0
    n_bg = is_bg.flatten(1).sum(1).clamp_min(1)[:, None, None]
    return fg, is_bg.float() / n_bg


@register_method
class CLoCKDistill(Method):
    """ "CLoCKDistill: Consistent Location-and-Context-aware Knowledge Distillation for DETRs" (Lan & Tian,
    arXiv 2502.10683 / WACV 2026), for the zoo DETRs (:mod:`featdistill.models.detr`) or any model with the same
    contract (``memory_map_path`` and ``forward(x, extra_queries=…)`` returning ``extra_logits``/``extra_boxes``).

    What is implemented (from the paper's description; the official code, lanqz7766/CLoCKDistill, was not
    readable here, so the constants are ours and named below):

    * **Location-and-context-aware memory distillation** (``memory``): the encoder output (memory, ``(B, D, h,
      w)``, global context) rather than backbone features, weighted by ground-truth locations —
      ``α Σ_p fg_p ‖m_t − a(m_s)‖²_p / D + β Σ_p bg_p ‖m_t − a(m_s)‖²_p / D`` averaged over images, with FGD's
      masks (:func:`location_weights`: each object weighs 1, the background together weighs 1), α = 1, β = 0.5
      (FGD's 2 : 1 ratio); ``a`` is a 1×1 adapter when the widths differ.
    * **Target-aware consistent logit distillation** (``query_cls``, ``query_l1``, ``query_giou``): each GT box
      becomes a query (:func:`target_queries`), **the same tensor fed to both decoders** through
      :meth:`student_call_kwargs` / :meth:`teacher_call_kwargs`, so both attend to the same, correct parts of
      their memories; the student's class distribution at those queries is distilled from the teacher's
      (``T²·KL``, T = 1, over the ``K + 1`` classes, mean over real GT queries) and its boxes matched to the
      teacher's (L1 + GIoU, weights 5 / 2 as DETR's box loss, mean over real queries). Padding rows are masked.
      The models keep their own queries and detections unchanged (the extra queries are masked from them).

    Departures, said plainly: the queries carry the GT *box* (as a DAB-style anchor, through each model's own
    anchor → query mapping, so a teacher never trained with them still reads them) but not a label embedding —
    an untrained label embedding in a teacher would be noise; the label selects the real rows and the memory
    weights. Only the last decoder layer is distilled; the paper's DINO/Deformable variants are out of scope.
    Needs a live teacher (a store cannot replay extra queries).
    """

    name = "clockdistill"
    paper = "CLoCKDistill: Consistent Location-and-Context-aware Knowledge Distillation for DETRs (Lan & Tian, 2025)"
    #: detection tasks only (image tasks named ``*detection*``): the recipe reads GT boxes and DETR outputs
    applies_to = frozenset({"detection"})
    default_weights = {"memory": 1.0, "query_cls": 1.0, "query_l1": 5.0, "query_giou": 2.0}
    default_ce_weight = 1.0

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.5,
        temperature: float = 1.0,
        adapter: str | None = "auto",
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        if alpha < 0 or beta < 0 or temperature <= 0:
            raise ValueError(
                f"clockdistill: alpha and beta must be >= 0 and temperature > 0, got {alpha}, {beta}, {temperature}"
            )
        self.alpha, self.beta, self.temperature, self.adapter = alpha, beta, temperature, adapter
        self.student_memory = self.teacher_memory = "memory_map"
        self._queries: Tensor | None = None
        self._valid: Tensor | None = None

    @classmethod
    def supports(cls, task: Any) -> bool:
        task_cls = task if isinstance(task, type) else type(task)
        return task_cls.modality == "image" and "detection" in task_cls.name

    @staticmethod
    def _check(model: nn.Module | None, role: str) -> str:
        path = getattr(model, "memory_map_path", None)
        if model is not None and not path:
            raise ValueError(
                f"clockdistill: the {role} ({type(model).__name__}) is not a DETR with the zoo contract "
                "(memory_map_path, forward(x, extra_queries=...)); use detr_tiny / detr_small"
            )
        return path or "memory_map"

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_memory = self._check(student, "student")
        if teacher is not None:
            self.teacher_memory = self._check(teacher, "teacher")

    def _taps(self, memory: str) -> dict[str, TapSpec]:
        return {
            "memory": TapSpec(memory),
            "q_logits": TapSpec("", select="extra_logits"),
            "q_boxes": TapSpec("", select="extra_boxes"),
        }

    def student_taps(self) -> dict[str, TapSpec]:
        return self._taps(self.student_memory)

    def teacher_taps(self) -> dict[str, TapSpec]:
        return self._taps(self.teacher_memory)

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        kind = None if self.adapter is None else self.adapter
        self.add_adapter("memory", student_feats["memory"], teacher_feats["memory"], kind)  # type: ignore[arg-type]

    # -- the shared target-aware queries --------------------------------------------------------------------
    def student_call_kwargs(self, batch: Mapping[str, Any], epoch: float) -> dict[str, Any]:
        """This step's target-aware queries, built once from the GT; :meth:`teacher_call_kwargs` returns the
        same tensor."""
        boxes, labels = ground_truth(batch)
        x = batch["input"]
        self._queries, self._valid = target_queries(boxes.to(x.device), labels.to(x.device), tuple(x.shape[-2:]))
        return {"extra_queries": self._queries}

    def teacher_call_kwargs(self, batch: Mapping[str, Any], epoch: float) -> dict[str, Any]:
        if self._queries is None:
            raise RuntimeError("clockdistill: the step's queries are missing; the Distiller asks the student first")
        return {"extra_queries": self._queries}

    # -- the loss -------------------------------------------------------------------------------------------
    def memory_loss(
        self, m_s: Tensor, m_t: Tensor, boxes: Tensor, labels: Tensor, image_size: tuple[int, int]
    ) -> Tensor:
        """The location-weighted memory term for ``(B, D, h, w)`` maps (student already adapted)."""
        fg, bg = location_weights(boxes, labels, image_size, tuple(m_t.shape[-2:]))
        err = (m_t - m_s).pow(2).mean(1)
        return ((self.alpha * fg + self.beta * bg) * err).flatten(1).sum(1).mean()

    def forward(  # type: ignore[override]
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, Any], epoch: float
    ) -> dict[str, Tensor]:
        boxes, labels = ground_truth(batch)
        x = batch["input"]
        boxes, labels = boxes.to(x.device), labels.to(x.device)
        m_s = self.adapters["memory"](student_feats["memory"])
        terms = {"memory": self.memory_loss(m_s, teacher_feats["memory"], boxes, labels, tuple(x.shape[-2:]))}
        valid = labels != PAD_LABEL
        s_log, t_log = student_feats["q_logits"], teacher_feats["q_logits"]
        if s_log.shape[:2] != valid.shape:
            raise RuntimeError(
                f"clockdistill: {tuple(s_log.shape[:2])} query outputs for {tuple(valid.shape)} GT rows; the models "
                "must answer extra_queries= with extra_logits / extra_boxes"
            )
        n = int(valid.sum())
        if n == 0:
            zero = s_log.sum() * 0.0
            return {**terms, "query_cls": zero, "query_l1": zero, "query_giou": zero}
        s_box, t_box = student_feats["q_boxes"][valid], teacher_feats["q_boxes"][valid]
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(s_box), box_cxcywh_to_xyxy(t_box)))
        terms["query_cls"] = kd_loss(s_log[valid], t_log[valid], self.temperature)
        terms["query_l1"] = F.l1_loss(s_box, t_box, reduction="sum") / n
        terms["query_giou"] = (1 - giou).sum() / n
        return terms
