"""The task contract: what a run is about, so nothing below it assumes "an image and a class id".

A task says

* **how a batch calls a model** — ``batch["input"]`` positionally when it is a tensor, as keyword arguments when
  it is a mapping (Hugging Face ``input_ids``/``attention_mask``/``pixel_values``), or the batch keys named in
  ``inputs``; the keys are checked once against the model's ``forward`` signature;
* **how the prediction is read** from the output — a tensor, a tuple element (``output: 0``) or a dict /
  ``ModelOutput`` key (``output: logits``); ``None`` = automatic (tensor as is, ``"logits"`` of a mapping, the
  first element of a tuple);
* **the task loss and the valid positions** (ignore index, padding);
* **its metrics** (torchmetrics), accumulated over batches and ranks as sums, never as per-batch means;
* **which family of methods applies**: ``"class"`` tasks predict a class distribution at each valid position,
  so every logit method (KD, DKD, DIST…) acts there; ``"output"`` tasks (regression, image-to-image) predict
  values, matched to the teacher by output losses (``output`` method).

Tasks are registered by name in :data:`TASKS` (``@register_task``), like methods and models.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "Task",
    "TaskError",
    "TaskMetrics",
    "TASKS",
    "register_task",
    "build_task",
    "list_tasks",
    "read_output",
    "Selector",
]

Selector = int | str | None
Family = Literal["class", "output"]


class TaskError(ValueError):
    """A batch, a target or a model output that does not fit the task; the message says what was expected."""


def _keys_of(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [str(k) for k in value.keys()]
    return []


def read_output(output: Any, select: Selector, where: str = "model") -> Tensor:
    """The prediction tensor inside a model output (see the module docstring for ``select``)."""
    value = output
    if select is None:
        if torch.is_tensor(value):
            return value
        if isinstance(value, Mapping):
            if "logits" in value and torch.is_tensor(value["logits"]):
                return value["logits"]
            raise TaskError(
                f"{where} returned a {type(value).__name__} with keys {_keys_of(value)} and no 'logits'; "
                "say which one is the prediction with the model's `output:` key (e.g. output: last_hidden_state)"
            )
        if isinstance(value, (tuple, list)) and value and torch.is_tensor(value[0]):
            return value[0]
        raise TaskError(f"{where} returned a {type(value).__name__}, not a tensor; set `output:` to select it")
    try:
        picked = value[select]
    except (KeyError, IndexError, TypeError):
        keys = _keys_of(value)
        desc = f"keys {keys}" if keys else (f"{len(value)} elements" if hasattr(value, "__len__") else "no parts")
        raise TaskError(
            f"{where}: output selector {select!r} does not exist in its {type(value).__name__} ({desc}); "
            "set `output:` to one of those"
        ) from None
    if not torch.is_tensor(picked):
        raise TaskError(f"{where}: output[{select!r}] is a {type(picked).__name__}, not a tensor")
    return picked


def _forward_parameters(model: nn.Module) -> tuple[list[str], bool]:
    """Names ``forward`` accepts (``self`` excluded) and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return [], True
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL,)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return [p.name for p in params if p.kind is not p.VAR_KEYWORD], var_kw


class Task:
    """Base class; subclasses set the class attributes and override :meth:`loss`, :meth:`positions`, metrics.

    Args:
        num_classes: classes of a ``"class"`` task (inferred from the prediction's class dim when ``None``).
        inputs: batch keys passed to the model as keyword arguments (``None``: ``batch["input"]``, positionally
            when a tensor, as keyword arguments when a mapping).
        output: the prediction selector (``None`` = automatic; see :func:`read_output`).
        ignore_index: target value that is not scored (class tasks).
    """

    name: ClassVar[str] = ""
    family: ClassVar[Family] = "class"
    #: metric that defines "best" and that tables report first, and whether larger is better
    primary_metric: ClassVar[str] = ""
    primary_mode: ClassVar[Literal["max", "min"]] = "max"
    #: the modality of inputs; feature methods that need image maps (AT) check it
    modality: ClassVar[Literal["image", "sequence", "vector"]] = "image"
    default_ignore_index: ClassVar[int | None] = None
    #: what the description of the prediction shape says in errors, e.g. "(B, C)"
    prediction_shape: ClassVar[str] = ""
    #: the dimension of the prediction that holds the classes (class tasks)
    class_dim: ClassVar[int] = 1
    #: a class prediction per position (pixel, token) rather than per sample: logit methods see the valid
    #: positions as rows, and KD takes its one-pass backward path over them (``view["per_position"]``)
    per_position: ClassVar[bool] = False
    #: the task loss (at no label smoothing) is exactly the mean CE over the rows :meth:`method_view` gives, so a
    #: method may compute it together with its own term (KD from a top-k store shares the student's softmax)
    ce_over_rows: ClassVar[bool] = False
    #: the name of the task-loss term in the logs (``ce`` for class tasks)
    loss_name: ClassVar[str] = "ce"

    def __init__(
        self,
        num_classes: int | None = None,
        inputs: Sequence[str] | None = None,
        output: Selector = None,
        ignore_index: int | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.inputs = list(inputs) if inputs else None
        self.output = output
        self.ignore_index = self.default_ignore_index if ignore_index is None else ignore_index
        self._checked: set[int] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes}, inputs={self.inputs}, output={self.output!r})"

    # -- calling a model -------------------------------------------------------------------------------------
    def model_arguments(self, batch: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` to call a model with for this batch."""
        if self.inputs is not None:
            source = batch["input"] if isinstance(batch.get("input"), Mapping) else batch
            missing = [k for k in self.inputs if k not in source]
            if missing:
                raise TaskError(
                    f"task {self.name!r}: task.inputs names {missing} but the batch has {sorted(source)}; "
                    "fix task.inputs or the dataset"
                )
            return (), {k: source[k] for k in self.inputs}
        if "input" not in batch:
            raise TaskError(
                f"task {self.name!r}: the batch has keys {sorted(batch)} but no 'input'; a featdistill loader "
                "yields {'input', 'target', 'sample_id', 'view_id'} — or name the model's inputs in task.inputs"
            )
        x = batch["input"]
        if isinstance(x, Mapping):
            return (), dict(x)
        return (x,), {}

    def check_call(self, model: nn.Module, batch: Mapping[str, Any], role: str = "model") -> None:
        """Refuse (once per model) keyword inputs that the model's ``forward`` does not take."""
        if id(model) in self._checked:
            return
        _, kwargs = self.model_arguments(batch)
        if kwargs:
            params, var_kw = _forward_parameters(model)
            bad = [k for k in kwargs if k not in params]
            if bad and not var_kw:
                raise TaskError(
                    f"the {role} ({type(model).__name__}) cannot take the batch's inputs: the batch gives "
                    f"{sorted(kwargs)} but forward() takes {params}; rename the dataset's keys or set "
                    "task.inputs to the ones it takes"
                )
        self._checked.add(id(model))

    def call(self, model: nn.Module, batch: Mapping[str, Any]) -> Any:
        args, kwargs = self.model_arguments(batch)
        return model(*args, **kwargs)

    def predict(self, model: nn.Module, batch: Mapping[str, Any], output: Selector = None) -> Tensor:
        """The model's prediction for the batch (call + select)."""
        return read_output(self.call(model, batch), self.output if output is None else output, type(model).__name__)

    # -- loss, positions, targets ------------------------------------------------------------------------------
    def check_target(self, pred: Tensor, target: Tensor) -> None:
        """Raise :class:`TaskError` naming the task, what was expected and what was given."""

    def loss(self, pred: Tensor, batch: Mapping[str, Any], label_smoothing: float = 0.0) -> Tensor:
        raise NotImplementedError

    def positions(self, pred: Tensor, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Class tasks: ``(logits (N, C), targets (N,))`` at every valid position (the view logit methods use)."""
        raise TaskError(f"task {self.name!r} has no class positions")

    def valid_positions(self, pred: Tensor, batch: Mapping[str, Any]) -> Tensor | None:
        """Boolean mask over the prediction's positions (``None`` = every position is valid)."""
        return None

    def flatten(self, pred: Tensor, mask: Tensor | None) -> Tensor:
        """Class logits at the valid positions as ``(N, C)`` (``mask`` from :meth:`valid_positions`)."""
        return pred

    def flatten_last(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """A class-last tensor ``(B, *positions, …)`` (a stored top-k record) at the valid positions."""
        return x if mask is None else x[mask]

    def feature_mask(self, batch: Mapping[str, Any]) -> Tensor | None:
        """``(B, L)`` mask of valid input positions for sequence features (padding excluded), else ``None``."""
        return None

    def method_view(
        self, s_logits: Tensor, t_logits: Tensor | None, batch: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
        """What logit methods see: logits and targets at valid positions (classification: unchanged)."""
        mask = self.valid_positions(s_logits, batch)
        s = self.flatten(s_logits, mask)
        t = self.flatten(t_logits, mask) if t_logits is not None else None
        view = dict(batch)
        if self.family == "class":
            view["target"] = self.flatten_target(s_logits, batch, mask)
        view["position_mask"] = self.feature_mask(batch)
        view["per_position"] = self.per_position
        return s, t, view

    def flatten_target(self, pred: Tensor, batch: Mapping[str, Any], mask: Tensor | None) -> Tensor:
        return batch["target"]

    # -- metrics ---------------------------------------------------------------------------------------------
    def new_metrics(self, device: torch.device | str = "cpu", sync: bool = False) -> TaskMetrics:
        return TaskMetrics(self, torch.device(device), sync)

    def build_metrics(self, pred: Tensor, **kw: Any) -> dict[str, Any]:
        """``{name: torchmetrics.Metric}``; called once with the first prediction (to infer sizes). ``kw``
        (``sync_on_compute``) goes to every metric's constructor."""
        raise NotImplementedError

    def update_metrics(self, metrics: Mapping[str, Any], pred: Tensor, batch: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def infer_classes(self, pred: Tensor) -> int:
        return int(self.num_classes or pred.shape[1])


class TaskMetrics:
    """The task's torchmetrics, built lazily from the first prediction; ``compute()`` → ``{name: float}``.

    Every metric keeps sums (counts, confusion matrices, summed errors) as its state, so the result over
    several batches — and, with ``sync=True``, over DDP ranks (torchmetrics all-gathers the states) — is the
    metric of the whole split, never a mean of per-batch ratios. ``n`` counts the samples.
    """

    def __init__(self, task: Task, device: torch.device, sync: bool) -> None:
        self.task, self.device, self.sync = task, device, sync
        self.metrics: dict[str, Any] | None = None
        self.n = 0

    def update(self, pred: Tensor, batch: Mapping[str, Any]) -> None:
        if self.metrics is None:
            built = self.task.build_metrics(pred, sync_on_compute=self.sync)
            self.metrics = {k: m.to(self.device) for k, m in built.items()}
        self.task.update_metrics(self.metrics, pred, batch)
        from featdistill.data.batching import batch_size_of

        self.n += batch_size_of(batch)

    def compute(self) -> dict[str, float]:
        if self.metrics is None:
            raise ValueError("the eval loader yielded no samples; cannot compute metrics")
        out = {k: float(m.compute()) for k, m in self.metrics.items()}
        n = float(self.n)
        if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([n], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            n = float(t.item())
        out["n"] = n
        return out


def micro_accuracy(num_classes: int, **kw: Any) -> Any:
    """Accuracy over every scored position of the split: torchmetrics' stat scores (exact integer counts,
    ignore index honoured), divided once in float64 — so 951 correct of 1,000 reads 0.951, not its float32
    neighbour."""
    from torchmetrics.classification import MulticlassStatScores

    class MicroAccuracy(MulticlassStatScores):
        def compute(self) -> Tensor:  # type: ignore[override]
            tp, _, _, fn, _ = super().compute()
            return tp.double() / (tp + fn).clamp_min(1).double()

    return MicroAccuracy(num_classes=num_classes, average="micro", **kw)


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator adding a task to :data:`TASKS` (a duplicate name is an error)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    if cls.name in TASKS:
        raise ValueError(f"task name {cls.name!r} already registered by {TASKS[cls.name].__name__}")
    TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    return sorted(TASKS)


def build_task(name: str, **kwargs: Any) -> Task:
    """Instantiate a registered task; an unknown name lists the close ones."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=3, cutoff=0.4)
        raise KeyError(
            f"unknown task {name!r}" + (f"; did you mean {close}?" if close else "") + f"; known: {list_tasks()}"
        )
    return TASKS[name](**kwargs)
