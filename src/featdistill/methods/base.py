"""The recipe contract: a method is data (which taps, which adapters) plus a loss.

A method never owns a training loop.  The :class:`~featdistill.distiller.Distiller` runs the student
(and asks the teacher source) with the method's taps, calls :meth:`Method.setup` once with probe
features so the method can build its adapters from real shapes, then calls :meth:`Method.forward` every
step for the *unweighted* loss terms, which it weights with :attr:`Method.weights` (schedules in epochs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from featdistill.adapters import AdapterKind, ShapeMismatchError, build_adapter, describe_adapter
from featdistill.losses.schedule import Schedule
from featdistill.taps import TapSpec

__all__ = [
    "FUSED_TASK_LOSS",
    "Method",
    "METHODS",
    "register_method",
    "build_method",
    "list_methods",
    "middle_stage",
]

Features = dict[str, torch.Tensor]

#: the term a method returns when it computed the task loss itself (see :meth:`Method.fuses_task_loss`)
FUSED_TASK_LOSS = "__task_loss__"


class Method(nn.Module):
    """Base class of every recipe.  Subclasses set ``name``, ``default_weights`` and override hooks."""

    name: ClassVar[str] = ""
    #: the paper (title, venue) — shown by ``featdistill methods`` and in docs/methods.md
    paper: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    #: unweighted term name → default weight (a float or a Schedule spec like {"value": 1, "warmup": 20})
    default_weights: ClassVar[dict[str, Any]] = {}
    #: the cross-entropy weight this method's reference recipe uses (the Distiller's default)
    default_ce_weight: ClassVar[float] = 1.0
    #: the tasks a recipe applies to (checked when a config is read, and by the Distiller):
    #: ``"any"``; ``"class"`` — every task predicting a class distribution per valid position (logit methods
    #: act per pixel / per token); ``"output"`` — value-predicting tasks (regression, image-to-image);
    #: ``"image"`` — any task on image inputs (spatial feature maps); ``"image-classification"`` — one class per
    #: image (recipes built on pooled embeddings, per-image class statistics or image transforms)
    applies_to: ClassVar[frozenset[str]] = frozenset({"image-classification"})
    #: the recipe reads a top-k teacher record (``logits_topk_logp``/``_idx``/``logits_rest_logp``) when the
    #: teacher store serves one, instead of dense ``logits`` (KD: no ``(N, C)`` teacher tensor per step)
    sparse_logits: ClassVar[bool] = False
    #: adapter key → learning-rate multiplier for a separate optimiser group (e.g. MEAL V2's discriminator,
    #: trained at 1e-4 while the student starts at 1e-2); set per instance in ``__init__``
    lr_scales: dict[str, float]

    def __init__(self, weights: Mapping[str, Any] | None = None, logit_standardization: bool = False) -> None:
        super().__init__()
        unknown = set(weights or {}) - set(self.default_weights)
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no loss term(s) {sorted(unknown)}; "
                f"its terms are {sorted(self.default_weights)}"
            )
        merged = {**self.default_weights, **dict(weights or {})}
        self.weights: dict[str, Schedule] = {k: Schedule.parse(v) for k, v in merged.items()}
        self.adapters = nn.ModuleDict()
        self.lr_scales = {}
        #: z-score the logits before the distillation loss (Sun et al., CVPR 2024); see :meth:`standardized`
        self.logit_standardization = bool(logit_standardization)
        if self.logit_standardization and type(self).__init__ is Method.__init__:
            raise ValueError(f"method {self.name!r} has no logit distillation term to standardise")

    # -- tasks -------------------------------------------------------------------------------------------
    @classmethod
    def supports(cls, task: Any) -> bool:
        """Whether this recipe applies to ``task`` (a Task instance or class); see :attr:`applies_to`."""
        from featdistill.tasks.classification import Classification

        task_cls = task if isinstance(task, type) else type(task)
        kinds = cls.applies_to
        return (
            "any" in kinds
            or ("class" in kinds and task_cls.family == "class")
            or ("output" in kinds and task_cls.family == "output")
            or ("image" in kinds and task_cls.modality == "image")
            or (
                "image-classification" in kinds
                and issubclass(task_cls, Classification)
                and task_cls.modality == "image"
            )
        )

    def check_task(self, task: Any) -> None:
        """Refuse a task this recipe cannot apply to, naming the recipes that can."""
        if not type(self).supports(task):
            raise ValueError(unsupported_task_message(self.name, task))

    def student_call_kwargs(self, batch: Mapping[str, Any], epoch: float) -> dict[str, Any]:
        """Extra keyword arguments for this step's one student forward (default none).

        Why: a recipe that must run the student differently (DMAE: on the visible patches only, ``keep=``)
        would otherwise run its own second student pass beside the Distiller's, paying for the student twice.
        With this hook the Distiller's single pass is the recipe's pass, and its taps are the recipe's taps.
        """
        return {}

    def teacher_call_kwargs(self, batch: Mapping[str, Any], epoch: float) -> dict[str, Any]:
        """Extra keyword arguments for this step's live-teacher forward (default none), the symmetric of
        :meth:`student_call_kwargs`; asked right after it, in the same step.

        Why: a recipe that feeds both models the same extra inputs (CLoCKDistill's ground-truth target-aware
        queries) must reach the teacher's one pass too, so its taps see those inputs. A teacher store cannot
        replay an input it was not built with, so a non-empty answer needs a live teacher.
        """
        return {}

    def fuses_task_loss(self, teacher_feats: Features) -> bool:
        """Whether, for these teacher outputs, this recipe computes the task CE together with its own term.

        Asked by the Distiller only where the task loss is the plain mean CE over the rows logit methods see
        (``Task.ce_over_rows``, no label smoothing); the method then receives ``batch["fuse_task_loss"] = True``
        and returns the unweighted task loss under :data:`FUSED_TASK_LOSS`. KD from a top-k store at T = 1 does
        it: both normalise the student over the vocabulary, so sharing that is most of the step's cost.
        """
        return False

    # -- wiring -----------------------------------------------------------------------------------------
    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Resolve default tap paths from the models (e.g. their ``stage_paths``).  Called once."""

    def student_taps(self) -> dict[str, TapSpec]:
        return {}

    def teacher_taps(self) -> dict[str, TapSpec]:
        return {}

    def setup(self, student_feats: Features, teacher_feats: Features) -> None:
        """Build adapters from probe shapes.  Called once, before the optimiser is created."""

    def fit(self, teacher: Any, loader: Any, num_classes: int | None = None) -> None:
        """One pass over the training data before training, for recipes that need statistics of it
        (ND/KD++: the teacher's class means).  ``teacher`` is the live ``nn.Module`` or the teacher source.
        Most recipes need nothing."""

    def forward(  # type: ignore[override]
        self, student_feats: Features, teacher_feats: Features, batch: Mapping[str, torch.Tensor], epoch: float
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------------------------
    def add_adapter(
        self, key: str, student_feat: torch.Tensor, teacher_feat: torch.Tensor, kind: AdapterKind | None = "auto"
    ) -> None:
        """Register the adapter bridging ``student_feat`` to ``teacher_feat`` under ``key``.

        ``kind=None`` forbids adapters: a shape mismatch then raises with both shapes and the adapter that
        would fix it.
        """
        s, t = tuple(student_feat.shape), tuple(teacher_feat.shape)
        if kind is None:
            if s[1:] != t[1:]:
                raise ShapeMismatchError(
                    f"method {self.name!r}, feature {key!r}: student shape {s} ≠ teacher shape {t}; "
                    f"enable an adapter (adapter: auto) to build {describe_adapter(s, t)}"
                )
            kind = "identity"
        self.adapters[key] = build_adapter(s, t, kind).to(student_feat.device)

    def standardized(self, *logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The logits as the distillation loss should see them: z-scored per row when the recipe was built
        with ``logit_standardization=True`` ("Logit Standardization in KD", Sun et al., CVPR 2024;
        :func:`~featdistill.losses.logit_variants.standardize_logits`), unchanged otherwise.

        The one place the switch is applied: a logit recipe accepts ``logit_standardization`` and passes it to
        ``Method.__init__``, then routes the student and teacher logits of its distillation terms (never of a
        hard-label CE term) through this. Rows are the valid positions ``(N, C)``, so it acts per pixel / per
        token on dense tasks; the recipe's temperature becomes the paper's base temperature.
        """
        if not self.logit_standardization:
            return logits
        from featdistill.losses.logit_variants import standardize_logits

        return tuple(standardize_logits(z) for z in logits)

    def weight(self, term: str, epoch: float) -> float:
        return self.weights[term](epoch) if term in self.weights else 1.0


def unsupported_task_message(method: str, task: Any) -> str:
    """``method 'dkd' does not apply to task 'regression' …; methods that do: …`` (one line)."""
    task_cls = task if isinstance(task, type) else type(task)
    able = sorted(n for n, c in METHODS.items() if n not in ("compose",) and c.supports(task_cls))
    why = {
        "class": "it distils class distributions",
        "output": "it matches value outputs",
        "image": "it needs image feature maps",
        "image-classification": "it needs one class per image",
    }
    kinds = METHODS[method].applies_to if method in METHODS else frozenset()
    reason = "; ".join(why[k] for k in sorted(kinds) if k in why) or "it declares no such task"
    return f"method {method!r} does not apply to task {task_cls.name!r} ({reason}); methods that do: {', '.join(able)}"


def middle_stage(model: nn.Module) -> str:
    """The FitNets default hint: the middle stage of a zoo model (``stage_paths[len // 2]``)."""
    stages = getattr(model, "stage_paths", None)
    if not stages:
        raise ValueError(
            f"{type(model).__name__} has no `stage_paths`; give the tap path explicitly "
            "(featdistill inspect MODEL lists them)"
        )
    return stages[(len(stages) - 1) // 2]


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a recipe to :data:`METHODS` (a duplicate name is an error)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    if cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} already registered by {METHODS[cls.name].__name__}")
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(METHODS)


def module_parameters(cls: type[Method]) -> set[str]:
    """Constructor parameters of a recipe that take a network (annotated ``nn.Module``, e.g. collaborative's
    ``peer``). A YAML config gives them as a model section (``{model, kwargs, checkpoint}``) and
    :func:`featdistill.run.run_experiment` builds the network for the run's data."""
    import inspect

    sig = inspect.signature(cls.__init__)
    return {n for n, p in sig.parameters.items() if "Module" in str(p.annotation)}


def build_method(name: str, **kwargs: Any) -> Method:
    """Instantiate a registered recipe; an unknown name lists the close ones."""
    import difflib

    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.3)
        raise KeyError(f"unknown method {name!r}; did you mean {close}? Known: {list_methods()}")
    return METHODS[name](**kwargs)
