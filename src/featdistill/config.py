"""Experiment configs: YAML → validated pydantic objects, with one clear message per bad key.

Why this module exists: a distillation run is only reproducible if every number ships with the config
that produced it, and a config is only trustworthy if a typo fails loudly.  YAML is read with
:mod:`featdistill.yaml_safe` (``safe_load``-based: no tags that execute code; bounded size, depth and alias
expansion; duplicate keys refused); every model has ``extra="forbid"``; a
:class:`ConfigError` names the key, the value given and the fix, never a bare traceback.

Shape of a config (``featdistill train cfg.yaml``)::

    experiment: kd-mnist
    seed: 0
    data: {name: mnist5k, batch_size: 128, augment: {pad_crop: 2}}
    teacher: {model: convnet, kwargs: {width: 64}, checkpoint: runs/teacher/student.safetensors}
    student: {model: convnet, kwargs: {width: 8}}
    method: {name: kd, params: {temperature: 4}, weights: {kd: 0.9}, ce_weight: 0.1}
    train: {epochs: 5, lr: 0.05}
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from featdistill.train.config import TrainConfig
from featdistill.validation import format_validation_error
from featdistill.yaml_safe import YAMLLoadError, check_expanded_size, load_yaml_file, load_yaml_text, short_repr

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "DataConfig",
    "ModelConfig",
    "ComponentConfig",
    "HFConfig",
    "TaskConfig",
    "TeacherConfig",
    "MethodConfig",
    "AugmentConfig",
    "load_config",
    "apply_overrides",
    "dump_config",
]


def _dataset_names() -> tuple[str, ...]:
    from featdistill.data.datasets import DATASETS as REGISTERED

    return tuple(REGISTERED)


DATASETS = ("digits", "mnist5k", "cifar10", "cifar100", "mnist-idx", "image-folder", "synthetic")  # classification


class ConfigError(ValueError):
    """An invalid experiment config; the message names each bad key, its value and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AugmentConfig(_Strict):
    """Replayable train-time augmentation (see :mod:`featdistill.data.views`)."""

    pad_crop: int = Field(0, ge=0, description="random crop of the input size after zero padding by this much")
    flip: bool = False
    resized_crop: tuple[float, float] | None = Field(None, description="scale range of a random resized crop")


class ComponentConfig(_Strict):
    """A user's own class (or function), LightningCLI-style: ``{class_path: "pkg.mod:Name", init_args: {...}}``.

    Naming a ``class_path`` runs that code (it is imported and called); a config without one runs none."""

    class_path: str = Field(..., min_length=1, description="'package.module:Name' or 'package.module.Name'")
    init_args: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Strict):
    name: str | None = Field(None, description="a registered dataset (default mnist5k unless train/test are given)")
    train: ComponentConfig | None = Field(None, description="your own training Dataset (class_path + init_args)")
    test: ComponentConfig | None = Field(None, description="your own test Dataset (class_path + init_args)")
    root: str | None = Field(None, description="folder with the dataset files (cifar*, mnist-idx, image-folder)")
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held out of train for model selection")
    subset: int | None = Field(None, gt=0, description="use only this many training samples (quick runs)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    views: Literal["fresh", "cycle", "sample"] = Field(
        "fresh", description="which augmented view an epoch uses (cycle/sample need teacher.store's V)"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra loader arguments")
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes rendering whole batches (lazy folders, user datasets)"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        names = _dataset_names()
        if v is not None and v not in names:
            close = difflib.get_close_matches(v, names, n=2)
            raise ValueError(
                f"unknown dataset; choose one of {list(names)}"
                + (f" (did you mean {close[0]}?)" if close else "")
                + ", or give your own as data.train / data.test: {class_path, init_args}"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.train is None) != (self.test is None):
            raise ValueError("give both data.train and data.test (each {class_path, init_args}), or neither")
        if self.train is not None and self.name is not None:
            raise ValueError(f"data.name = {self.name!r} and data.train/test both name the data; keep one")
        if self.train is None and self.name is None:
            self.name = "mnist5k"
        return self


class HFConfig(_Strict):
    """A Hugging Face ``transformers`` model: built from a config, or loaded from a LOCAL folder (never a download)."""

    config: dict[str, Any] | None = Field(
        None, description="kwargs of AutoConfig.for_model, with model_type (e.g. {model_type: bert, hidden_size: 64})"
    )
    path: str | None = Field(None, description="a local folder written by save_pretrained (from_pretrained offline)")
    auto: str | None = Field(None, description="Auto class, e.g. AutoModelForCausalLM (default: from the task)")

    @model_validator(mode="after")
    def _one(self) -> HFConfig:
        if (self.config is None) == (self.path is None):
            raise ValueError("give exactly one of hf.config (build from a config) and hf.path (a local folder)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("hf.config needs model_type (e.g. bert, gpt2, llama)")
        return self


class ModelConfig(_Strict):
    """A network: a zoo name (``model`` + ``kwargs``), your own class (``class_path`` + ``init_args``) or a
    Hugging Face model (``hf``); optional weights; ``output`` selects the prediction from its output."""

    model: str | None = Field(None, description="zoo model name (featdistill models)")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    class_path: str | None = Field(None, description="your own nn.Module, 'package.module:Name' (runs that code)")
    init_args: dict[str, Any] = Field(default_factory=dict)
    hf: HFConfig | None = None
    output: int | str | None = Field(None, description="prediction selector: tuple index or output key (logits)")
    checkpoint: str | None = Field(None, description="weights: .safetensors, or a torch file (weights_only)")
    sha256: str | None = Field(None, description="expected sha256 of the checkpoint file")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        from featdistill.models import MODELS

        if v is not None and v not in MODELS:
            close = difflib.get_close_matches(v, list(MODELS), n=3)
            raise ValueError(
                "unknown model"
                + (f"; did you mean {', '.join(close)}?" if close else "")
                + " (`featdistill models` lists the zoo; your own class: class_path: 'pkg.mod:Name')"
            )
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> ModelConfig:
        given = [k for k in ("model", "class_path", "hf") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of model (a zoo name), class_path (your own nn.Module) or hf (a Hugging Face "
                f"model); got {given or 'none'}"
            )
        if self.kwargs and self.model is None:
            raise ValueError("kwargs are for zoo models; a class_path model takes init_args")
        if self.init_args and self.class_path is None:
            raise ValueError("init_args go with class_path (zoo models take kwargs)")
        return self

    @property
    def display_name(self) -> str:
        """What reports and store manifests call the model."""
        if self.model is not None:
            return self.model
        if self.class_path is not None:
            return self.class_path
        assert self.hf is not None
        return f"hf:{self.hf.config['model_type']}" if self.hf.config else f"hf:{self.hf.path}"


class TeacherConfig(ModelConfig):
    source: Literal["live", "store"] = "live"
    store: str | None = Field(None, description="teacher store folder (featdistill cache) when source=store")

    @model_validator(mode="after")
    def _store_needs_path(self) -> TeacherConfig:
        if self.source == "store" and not self.store:
            raise ValueError("teacher.source = 'store' needs teacher.store: the folder written by `featdistill cache`")
        return self


class TaskConfig(_Strict):
    """What the run is about (``featdistill.tasks``): the task name and how batches meet the models."""

    class_path: str | None = Field(None, description="your own Task subclass, 'pkg.mod:MyTask' (runs that code)")
    name: str = Field("classification", description="a registered task (featdistill tasks lists them)")
    init_args: dict[str, Any] = Field(default_factory=dict, description="extra constructor arguments of the task")
    inputs: list[str] | None = Field(None, description="batch keys passed to the models as keyword arguments")
    output: int | str | None = Field(None, description="prediction selector for both models (tuple index / key)")
    ignore_index: int | None = Field(None, description="target value never scored (default: the task's)")
    num_classes: int | None = Field(None, ge=1, description="default: the dataset's")

    @field_validator("name")
    @classmethod
    def _known_task(cls, v: str, info: Any) -> str:
        from featdistill.tasks import TASKS

        if v not in TASKS and not (info.data or {}).get("class_path"):
            close = difflib.get_close_matches(v, list(TASKS), n=2, cutoff=0.4)
            raise ValueError(
                "unknown task" + (f"; did you mean {', '.join(close)}?" if close else "") + f"; known: {sorted(TASKS)}"
            )
        return v

    @model_validator(mode="after")
    def _user_task(self) -> TaskConfig:
        if self.class_path is not None:
            cls = self.task_class()
            self.name = cls.name  # the user's task names itself; methods are checked against it
        elif self.init_args:
            raise ValueError("task.init_args go with task.class_path")
        return self

    def task_class(self) -> Any:
        """The task's class: registered by name, or imported from ``class_path`` (a ``Task`` subclass)."""
        from featdistill.tasks import TASKS, Task

        if self.class_path is None:
            return TASKS[self.name]
        from featdistill.components import import_object

        cls = import_object(self.class_path, "task.class_path")
        if not (isinstance(cls, type) and issubclass(cls, Task)) or not cls.name:
            raise ValueError(
                f"task.class_path = {self.class_path!r} must name a featdistill.tasks.Task subclass with a `name`"
            )
        return cls

    def build(self, num_classes: int | None = None) -> Any:
        return self.task_class()(
            num_classes=self.num_classes or num_classes or None,
            inputs=self.inputs,
            output=self.output,
            ignore_index=self.ignore_index,
            **self.init_args,
        )


class MethodConfig(_Strict):
    name: str = "kd"
    params: dict[str, Any] = Field(default_factory=dict)
    weights: dict[str, Any] = Field(default_factory=dict)
    ce_weight: float | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _check_method(self) -> MethodConfig:
        from featdistill.methods import METHODS

        if self.name not in METHODS:
            close = difflib.get_close_matches(self.name, list(METHODS), n=3, cutoff=0.3)
            raise ValueError(
                f"unknown method {self.name!r}"
                + (f"; did you mean {', '.join(close)}?" if close else "")
                + f"; known: {sorted(METHODS)}"
            )
        cls = METHODS[self.name]
        sig = inspect.signature(cls.__init__)
        accepted = [p for p in sig.parameters if p not in ("self", "weights")]
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        bad = [k for k in self.params if k not in accepted]
        if bad and not has_var_kw:
            raise ValueError(f"method {self.name!r} has no parameter(s) {bad}; its parameters are {accepted}")
        from featdistill.methods.base import module_parameters

        for key in module_parameters(cls) & set(self.params):
            value = self.params[key]
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"method {self.name!r}: {key} is a network; give it as a model section, "
                    f"e.g. {key}: {{model: resnet8, kwargs: {{}}}}"
                )
            try:
                ModelConfig.model_validate(value)
            except ValidationError as err:
                raise ValueError(format_validation_error(err, ModelConfig, prefix=f"method.params.{key}")) from None
        unknown_terms = set(self.weights) - set(cls.default_weights)
        if unknown_terms:
            raise ValueError(
                f"method {self.name!r} has no loss term(s) {sorted(unknown_terms)} to weight; "
                f"its terms are {sorted(cls.default_weights)}"
            )
        return self


class ExperimentConfig(_Strict):
    experiment: str = "run"
    seed: int = Field(0, ge=0)
    run_dir: str | None = Field(None, description="where the run is written (default runs/<experiment>)")
    data: DataConfig = Field(default_factory=DataConfig)
    student: ModelConfig
    teacher: TeacherConfig | None = None
    task: TaskConfig | None = Field(None, description="default: the dataset's task, else classification")
    method: MethodConfig = Field(default_factory=lambda: MethodConfig(name="none"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    cache: dict[str, Any] | None = Field(
        None, description="teacher-store build settings read by `featdistill cache` (ignored by `train`)"
    )

    @model_validator(mode="after")
    def _teacher_present(self) -> ExperimentConfig:
        from featdistill.methods import METHODS

        if METHODS[self.method.name].needs_teacher and self.teacher is None:
            raise ValueError(f"method {self.method.name!r} needs a teacher: add a `teacher:` section")
        if self.task is None:
            from featdistill.data.task_registry import TASK_OF_DATASET

            self.task = TaskConfig(name=TASK_OF_DATASET.get(self.data.name or "", "classification"))
        _check_method_task(self.method, self.task)
        return self

    @field_validator("task", mode="before")
    @classmethod
    def _task_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.experiment


def _check_method_task(method: MethodConfig, task: TaskConfig) -> None:
    """Refuse, when the config is read, a method that cannot apply to the task (naming those that can)."""
    from featdistill.methods import METHODS
    from featdistill.methods.base import unsupported_task_message

    task_cls = task.task_class()
    names = [method.name]
    if method.name == "compose":
        names = [str(p.get("name")) for p in method.params.get("parts", []) if isinstance(p, Mapping)]
    for n in names:
        if n in METHODS and not METHODS[n].supports(task_cls):
            raise ValueError(unsupported_task_message(n, task_cls))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {p!r} holds {short_repr(nxt)}, not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars/lists) to a raw config dict."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"the top level of a config must be a mapping of sections (data, student, …), not {type(data).__name__}"
        )
    out = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml_text(raw, f"--set {key.strip()}") if raw != "" else None
        except YAMLLoadError as err:
            raise ConfigError(f"--set {key}: cannot parse value {short_repr(raw)}: {err}") from None
        _set_dotted(out, key.strip(), value)
    return out


def parse_config(data: Mapping[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, ExperimentConfig)) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment config safely, apply ``--set`` overrides and validate it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = load_yaml_file(p) or {}
    except YAMLLoadError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (data, student, teacher, method, train)")
    return parse_config(apply_overrides(data, overrides))


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what the run directory keeps next to its numbers).

    Free-form values (``data.kwargs``, ``method.params``, ``init_args``…) are size-checked first: a config
    built in Python with shared references (an alias bomb) is refused instead of expanded by ``model_dump``."""
    _check_free_form(cfg, "")
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _check_free_form(model: BaseModel, prefix: str) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            _check_free_form(value, key + ".")
        elif isinstance(value, (Mapping, list, tuple)):
            try:
                check_expanded_size(value)
            except YAMLLoadError as err:
                raise ConfigError(f"{key}: {err}") from None
