"""SSKD: KD on the batch and on its rotated copies, plus transfer of the teacher's rotation-contrastive similarities."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featdistill.losses.logit_variants import cosine_similarity_matrix, error_rejection_rows, sskd_similarity_loss
from featdistill.losses.logits import kd_loss
from featdistill.methods._util import model_device, unregistered
from featdistill.methods.base import Features, Method, register_method
from featdistill.seeding import seeded
from featdistill.taps import Taps, TapSpec

__all__ = ["SSKD", "ProjectionHead", "rotated_copies", "contrastive_targets"]


class ProjectionHead(nn.Sequential):
    """SSKD's ``proj_head``: ``Linear(D, D) → ReLU → Linear(D, D)`` on the pooled embedding (``wrapper.py``)."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def rotated_copies(x: torch.Tensor) -> torch.Tensor:
    """The 90°, 180° and 270° rotations of ``(B, C, H, W)`` images, rotation-major: row ``(r − 1)·B + i`` is image
    ``i`` rotated by ``r·90°`` (square images only)."""
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"sskd: rotations need square images (B, C, H, W), got {tuple(x.shape)}")
    return torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in (1, 2, 3)])


def contrastive_targets(b: int, device: torch.device | None = None) -> torch.Tensor:
    """For each of the ``3B`` rotated rows, the index of its own un-rotated image among the ``B`` normal ones."""
    return torch.arange(b, device=device).repeat(3)


@register_method
class SSKD(Method):
    """ "Knowledge Distillation Meets Self-Supervision" (Xu et al., ECCV 2020), code ``xuguodong03/SSKD``
    (``student.py``, ``wrapper.py``, ``command.sh``).

    Every image also goes through the networks rotated by 90/180/270° (3 extra copies: the batch is 4× for both
    networks).  Terms, with the code's defaults: ``kd`` — T²·KL on the un-rotated images (T 4, weight 0.9; CE
    0.1); ``tf`` — T²·KL on the rotated images (T 4, weight 2.7), keeping the rows whose class the teacher ranks
    first plus ``ratio_tf`` (1.0) of the others; ``ss`` — T²·KL between the teachers' and the student's
    softmax(cos-similarity / 0.5) of each rotated image's projection to the ``B`` un-rotated ones (weight 10),
    keeping the rows where the teacher finds the right image plus ``ratio_ss`` (0.75) of the others, ranked.
    The student's projection head is an adapter (trained with it, dropped at export).  The teacher's projection
    head is trained first, by :meth:`fit` (``run_experiment`` calls it): ``t_epochs`` (60) epochs of
    cross-entropy over the similarities with the teacher's backbone frozen, SGD lr 0.05, momentum 0.9, wd 5e-4,
    ×0.1 at 30 and 45 — then frozen (a buffer-like submodule: checkpointed, not optimised).

    Differences from the code: the rotated copies are a second forward of the student (and of the live teacher) —
    the code runs the 4B images in one forward, so BatchNorm batch statistics differ; the rows are rotation-major;
    rank ties are broken by row order (stable sort).  Needs the live teacher (rotated views are not in a store).
    """

    name = "sskd"
    paper = "Knowledge Distillation Meets Self-Supervision (Xu et al., ECCV 2020)"
    default_weights = {"kd": 0.9, "tf": 2.7, "ss": 10.0}
    default_ce_weight = 0.1

    def __init__(
        self,
        kd_temperature: float = 4.0,
        tf_temperature: float = 4.0,
        ss_temperature: float = 0.5,
        ratio_tf: float = 1.0,
        ratio_ss: float = 0.75,
        t_epochs: int = 60,
        t_lr: float = 0.05,
        t_milestones: tuple[int, ...] = (30, 45),
        seed: int = 0,
        weights: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weights)
        self.kd_temperature, self.tf_temperature, self.ss_temperature = kd_temperature, tf_temperature, ss_temperature
        self.ratio_tf, self.ratio_ss = ratio_tf, ratio_ss
        self.t_epochs, self.t_lr, self.t_milestones, self.seed = t_epochs, t_lr, tuple(t_milestones), seed
        self.teacher_head: ProjectionHead | None = None
        self._student = unregistered(None)
        self._teacher = unregistered(None)
        self._s_taps: Taps | None = None
        self._t_taps: Taps | None = None

    # -- wiring --------------------------------------------------------------------------------------------
    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        for role, model in (("student", student), ("teacher", teacher)):
            if model is None or not getattr(model, "embedding_path", None):
                raise ValueError(f"sskd: the {role} needs an `embedding_path` (its pooled embedding) and must be live")
        self._student, self._teacher = unregistered(student), unregistered(teacher)

    def student_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self._student().embedding_path)}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {"emb": TapSpec(self._teacher().embedding_path), "logits": TapSpec("")}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        e = student_feats["emb"].flatten(1)
        self.adapters["proj"] = ProjectionHead(e.shape[1]).to(e.device)

    def _teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen teacher's logits and embedding on ``x`` (eval mode, no gradient)."""
        if self._t_taps is None:
            self._t_taps = Taps(self._teacher(), {"emb": self.teacher_taps()["emb"], "logits": TapSpec("")})
        was = self._teacher().training
        self._teacher().eval()
        with torch.no_grad():
            _, feats = self._t_taps(x)
        self._teacher().train(was)
        return feats["logits"].float(), feats["emb"].flatten(1).float()

    # -- stage 1: the teacher's projection head ------------------------------------------------------------
    def fit(self, teacher: Any, loader: Iterable[Mapping[str, torch.Tensor]], num_classes: int | None = None) -> None:
        """Train the teacher's projection head on rotation contrast (the backbone frozen), then freeze it."""
        if not isinstance(teacher, nn.Module):
            raise ValueError("sskd: needs the live teacher (rotated views are not in a teacher store)")
        self._teacher = unregistered(teacher)
        self._t_taps = None
        device = model_device(teacher)
        with seeded(self.seed, "sskd-teacher-head"):
            head: ProjectionHead | None = None
            opt = sched = None
            for _ in range(self.t_epochs):
                for batch in loader:
                    x = batch["input"].to(device)
                    _, e_n = self._teacher_outputs(x)
                    _, e_r = self._teacher_outputs(rotated_copies(x))
                    if head is None:
                        head = ProjectionHead(e_n.shape[1]).to(device)
                        opt = torch.optim.SGD(head.parameters(), lr=self.t_lr, momentum=0.9, weight_decay=5e-4)
                        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(self.t_milestones), gamma=0.1)
                    sim = cosine_similarity_matrix(head(e_r), head(e_n))
                    loss = F.cross_entropy(sim, contrastive_targets(x.shape[0], sim.device))
                    opt.zero_grad()  # type: ignore[union-attr]
                    loss.backward()
                    opt.step()  # type: ignore[union-attr]
                if sched is not None:
                    sched.step()
        if head is None:
            raise ValueError("sskd: fit got no batches (or t_epochs = 0)")
        head.zero_grad(set_to_none=True)
        head.requires_grad_(False).eval()
        self.teacher_head = head

    # -- the step ------------------------------------------------------------------------------------------
    def _student_rotated(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._s_taps is None:
            self._s_taps = Taps(self._student(), {"emb": self.student_taps()["emb"], "logits": TapSpec("")})
        _, feats = self._s_taps(rotated_copies(x))
        return feats["logits"].float(), feats["emb"].flatten(1).float()

    def forward(
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        if self.teacher_head is None:
            raise RuntimeError("sskd: call method.fit(teacher, train_loader) first (it trains the teacher's head)")
        x, y = batch["input"], batch["target"]
        b = y.shape[0]
        z_s, z_t = student_feats["logits"], teacher_feats["logits"]
        zr_s, er_s = self._student_rotated(x)
        zr_t, er_t = self._teacher_outputs(rotated_copies(x))
        kd = kd_loss(z_s, z_t, self.kd_temperature)
        rows_tf = error_rejection_rows(zr_t, y.repeat(3), self.ratio_tf)
        tf = kd_loss(zr_s[rows_tf], zr_t[rows_tf], self.tf_temperature) if rows_tf.numel() else z_s.sum() * 0
        proj = self.adapters["proj"]
        s_sim = cosine_similarity_matrix(proj(er_s), proj(student_feats["emb"].flatten(1)))
        with torch.no_grad():
            t_sim = cosine_similarity_matrix(
                self.teacher_head(er_t), self.teacher_head(teacher_feats["emb"].flatten(1))
            )
        rows_ss = error_rejection_rows(t_sim, contrastive_targets(b, t_sim.device), self.ratio_ss)
        ss = sskd_similarity_loss(s_sim, t_sim, rows_ss, self.ss_temperature) if rows_ss.numel() else z_s.sum() * 0
        return {"kd": kd, "tf": tf, "ss": ss}
