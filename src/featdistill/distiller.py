"""The Distiller: student + method + teacher source as one ``nn.Module`` usable in any training loop.

``forward(batch, epoch)`` returns ``(student_logits, {term: weighted loss})``; the total loss is the sum of
the values, and every term is logged by name.  The teacher is not a registered submodule: its weights are
frozen, never saved in checkpoints and never handed to the optimiser or to DDP.  Adapters live in the
method and train with the student; :meth:`Distiller.export_student` drops them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from featdistill.methods.base import FUSED_TASK_LOSS, Method
from featdistill.seeding import seeded
from featdistill.taps import LOGITS, Taps, TapSpec, as_tap_spec
from featdistill.tasks.base import Task, TaskError
from featdistill.teacher import LiveTeacher, TeacherSource

__all__ = ["Distiller"]


_SPARSE_FIELDS = ("logits_topk_logp", "logits_topk_idx", "logits_rest_logp")


def _with_select(spec: Any, select: int | str | None) -> TapSpec:
    """The model's prediction tap (path ``""``) reads the output with the model's selector."""
    spec = as_tap_spec(spec)
    if spec.path == LOGITS and spec.select is None and select is not None:
        return TapSpec(LOGITS, spec.kind, select)
    return spec


def _check_same_classes(s: torch.Tensor, t: torch.Tensor, task: Task) -> None:
    d = task.class_dim
    if s.ndim != t.ndim or s.shape[d] != t.shape[d]:
        raise TaskError(
            f"task {task.name!r}: the student predicts {tuple(s.shape)} but the teacher {tuple(t.shape)}; their class "
            "dimensions must match for logit distillation (same num_classes / vocabulary)"
        )


class Distiller(nn.Module):
    """Student, method and teacher source wired together.

    Args:
        student: the network being trained.
        method: a recipe (``featdistill.methods``); ``None`` trains the student alone.
        teacher: an ``nn.Module`` (wrapped in a :class:`LiveTeacher` with the method's taps) or any
            :class:`TeacherSource` (e.g. a ``CachedTeacher``).
        ce_weight: weight of the task-loss term (cross-entropy for class tasks); ``None`` uses the method's
            reference value.
        label_smoothing: for the cross-entropy term.
        task: a :class:`~featdistill.tasks.Task` (default: classification) — how the batch calls the models,
            what the prediction and the task loss are, and at which positions logit methods act.
        student_output, teacher_output: prediction selectors of each model (``None``: the task's ``output``).
    """

    def __init__(
        self,
        student: nn.Module,
        method: Method | None = None,
        teacher: nn.Module | TeacherSource | None = None,
        ce_weight: float | None = None,
        label_smoothing: float = 0.0,
        task: Task | None = None,
        student_output: int | str | None = None,
        teacher_output: int | str | None = None,
    ) -> None:
        super().__init__()
        from featdistill.methods.baseline import StudentOnly
        from featdistill.tasks.classification import Classification

        self.student = student
        self.method = method if method is not None else StudentOnly()
        self.task = task if task is not None else Classification()
        self.method.check_task(self.task)
        self.ce_weight = self.method.default_ce_weight if ce_weight is None else ce_weight
        self.label_smoothing = label_smoothing
        self.task_term = self.task.loss_name
        teacher_model = teacher if isinstance(teacher, nn.Module) else getattr(teacher, "model", None)
        self.method.bind(student, teacher_model)
        t_select = self.task.output if teacher_output is None else teacher_output
        t_taps = {k: _with_select(v, t_select) for k, v in self.method.teacher_taps().items()}
        if self.method.needs_teacher and teacher is None:
            raise ValueError(f"method {self.method.name!r} needs a teacher; pass teacher=")
        source: TeacherSource | None
        if isinstance(teacher, nn.Module):
            source = LiveTeacher(teacher, t_taps, task=self.task) if t_taps else None
        else:
            source = teacher
            if source is not None:
                missing = set(t_taps) - set(source.tap_names)
                if missing:
                    raise ValueError(
                        f"method {self.method.name!r} needs teacher outputs {sorted(missing)} that the teacher "
                        f"source does not provide (it has {sorted(source.tap_names)}); rebuild the store with "
                        "those taps or use the live teacher"
                    )
                narrow = getattr(source, "only", None)  # optional: serve just what the method reads
                if callable(narrow):
                    sparse = self.method.sparse_logits and "logits" in t_taps
                    source = narrow(set(t_taps), sparse_logits=sparse) if sparse else narrow(set(t_taps))
        # Not registered as a submodule on purpose (see module docstring).
        object.__setattr__(self, "teacher", source)
        s_select = self.task.output if student_output is None else student_output
        s_taps = {k: _with_select(v, s_select) for k, v in self.method.student_taps().items()}
        self._student_taps = Taps(student, {"logits": TapSpec("", select=s_select), **s_taps})
        self.prepared = False
        self.channels_last = False

    # -- setup ------------------------------------------------------------------------------------------
    def prepare(self, batch: Mapping[str, torch.Tensor], seed: int = 0) -> None:
        """Probe one batch to build the method's adapters (before creating the optimiser).

        Adapter initialisation is seeded from ``seed`` without touching the caller's global RNG.
        """
        if self.prepared:
            return
        self.task.check_call(self.student, batch, "student")
        if isinstance(self.teacher, LiveTeacher):
            self.task.check_call(self.teacher.model, batch, "teacher")
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            t_feats = self.teacher(batch) if self.teacher is not None else {}
            args, kwargs = self.task.model_arguments(batch)
            _, s_feats = self._student_taps(*args, **kwargs)
        self.student.train(was_training)
        if "target" in batch:  # a target of the wrong kind fails here, with the task and both shapes named
            self.task.check_target(s_feats["logits"], batch["target"])
            if "logits" in t_feats and self.task.family == "class":
                _check_same_classes(s_feats["logits"], t_feats["logits"], self.task)
        with seeded(seed, "adapters"):
            self.method.setup(s_feats, t_feats)
        device = next(self.student.parameters()).device
        self.method.to(device)
        self.prepared = True

    def fit_data(self, loader: Any, num_classes: int) -> None:
        """Let the method gather its statistics of the training data (e.g. ND's teacher class means)."""
        teacher = self.teacher.model if isinstance(self.teacher, LiveTeacher) else self.teacher
        self.method.fit(teacher, loader, num_classes)

    def configure(self, channels_last: bool = False) -> None:
        """Switch student, adapters and live teacher to channels_last memory format."""
        self.channels_last = channels_last
        if channels_last:
            self.student.to(memory_format=torch.channels_last)
            self.method.to(memory_format=torch.channels_last)
        if isinstance(self.teacher, LiveTeacher):
            self.teacher.configure(channels_last)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Distiller:
        # .to(device) / .cuda() must move the unregistered live teacher too.
        super()._apply(fn, *args, **kwargs)
        if isinstance(self.teacher, LiveTeacher):
            self.teacher.model._apply(fn)
        return self

    # -- the step ---------------------------------------------------------------------------------------
    def teacher_outputs(
        self, batch: Mapping[str, torch.Tensor], extra: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            return {}
        if not extra:
            return self.teacher(batch)
        if not isinstance(self.teacher, LiveTeacher):
            raise ValueError(
                f"method {self.method.name!r} runs the teacher with extra inputs {sorted(extra)}, which a "
                f"{type(self.teacher).__name__} cannot replay; use the live teacher"
            )
        return self.teacher(batch, **extra)

    def forward(  # type: ignore[override]
        self, batch: Mapping[str, torch.Tensor], epoch: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not self.prepared:
            self.prepare(batch)
        args, kwargs = self.task.model_arguments(batch)
        extra = self.method.student_call_kwargs(batch, epoch)  # e.g. DMAE's visible patches
        if extra:
            kwargs = {**kwargs, **extra}
        if self.channels_last and args and torch.is_tensor(args[0]) and args[0].dim() == 4:
            args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        t_feats = self.teacher_outputs(batch, self.method.teacher_call_kwargs(batch, epoch))  # e.g. CLoCK queries
        output, s_feats = self._student_taps(*args, **kwargs)
        pred = s_feats["logits"]
        losses: dict[str, torch.Tensor] = {}
        fuse = (
            bool(self.ce_weight)
            and not self.label_smoothing
            and self.task.ce_over_rows
            and self.method.fuses_task_loss(t_feats)
        )
        if fuse:  # the method computes the task CE with its own term; the slot keeps the terms' order
            self.task.check_target(pred, batch["target"])
            losses[self.task_term] = pred.new_zeros(())
        elif self.ce_weight:
            losses[self.task_term] = self.ce_weight * self.task.loss(pred, batch, self.label_smoothing)
        s_feats = {k: v.float() if v.is_floating_point() else v for k, v in s_feats.items()}
        view: Mapping[str, Any] = batch
        if self.task.family == "class":
            # logit methods act over the class dim at every valid position (per pixel, per token)
            s_feats["logits"], t_logits, view = self.task.method_view(s_feats["logits"], t_feats.get("logits"), batch)
            if t_logits is not None:
                t_feats = {**t_feats, "logits": t_logits}
            if "logits_topk_logp" in t_feats:  # a sparse top-k record: the same valid positions, class dim last
                mask = self.task.valid_positions(pred, batch)
                t_feats = {
                    **t_feats,
                    **{k: self.task.flatten_last(t_feats[k], mask) for k in _SPARSE_FIELDS},
                }
        elif self.task.family == "output":
            view = {**batch, "position_mask": self.task.feature_mask(batch)}
        if fuse:
            view = {**view, "fuse_task_loss": True}
        terms = self.method(s_feats, t_feats, view, epoch)
        if fuse:
            losses[self.task_term] = self.ce_weight * terms.pop(FUSED_TASK_LOSS)
        for name, value in terms.items():
            losses[name] = self.method.weight(name, epoch) * value
        return pred, losses

    # -- parameters and export --------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student and adapter parameters (what the optimiser updates)."""
        return (p for p in self.parameters() if p.requires_grad)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: ``main`` (everything, at the base lr) plus one group per adapter a method scales
        (:attr:`Method.lr_scales`, also inside ``compose``), each with its ``lr_scale``. The groups partition
        :meth:`trainable_parameters`, deterministically ordered, so a checkpoint's optimiser state keeps fitting."""
        scaled: dict[int, tuple[str, float]] = {}
        for prefix, module in self.method.named_modules():
            if not isinstance(module, Method):
                continue
            for key, scale in module.lr_scales.items():
                if key not in module.adapters:
                    continue  # not built (e.g. disabled by an option)
                name = f"{prefix}.{key}" if prefix else key
                for p in module.adapters[key].parameters():
                    scaled[id(p)] = (name, float(scale))
        groups: dict[str, dict[str, Any]] = {"main": {"name": "main", "lr_scale": 1.0, "params": []}}
        for p in self.trainable_parameters():
            name, scale = scaled.get(id(p), ("main", 1.0))
            groups.setdefault(name, {"name": name, "lr_scale": scale, "params": []})["params"].append(p)
        return [g for g in groups.values() if g["params"]]

    def export_student(self) -> nn.Module:
        """The student alone, without adapters or auxiliary heads (what ships)."""
        return self.student
