"""Build and run one experiment from a validated :class:`~featdistill.config.ExperimentConfig`.

This is the only place where config sections turn into objects (dataset, views, loaders, models, teacher
source, method, Distiller, Trainer), so the CLI, the demo and the benchmarks all run the same code.
Model selection uses the validation split carved from train; the test split is evaluated once, after the
last epoch, and that last-epoch number is what reports show.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featdistill.components import build_model_from_config, load_weights, sha256_file
from featdistill.config import ConfigError, ExperimentConfig, ModelConfig, dump_config

__all__ = [
    "RunResult",
    "run_experiment",
    "build_model_from_config",
    "build_model",
    "build_data",
    "load_data",
    "load_weights",
    "evaluate_accuracy",
    "sha256_file",
]


@dataclass
class RunResult:
    """What one run gives: the task's metrics on test (last epoch), validation (last and best) and cost.

    ``test`` holds every metric of the task (``top1`` and ``loss`` for classification; ``miou``, ``pixel_acc``
    for segmentation; ``perplexity`` for causal LM; ``mse``/``mae``; ``psnr``/``ssim``); ``primary_metric``
    names the one tables report first. ``test_top1`` and friends exist only for classification tasks.
    """

    run_dir: Path
    task: str
    primary_metric: str
    test: dict[str, float]
    val: dict[str, float] | None
    best_val: dict[str, float] | None
    best_epoch: int | None
    train_seconds: float
    images_per_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def test_primary(self) -> float:
        return self.test[self.primary_metric]

    @property
    def test_top1(self) -> float | None:
        return self.test.get("top1")

    @property
    def val_top1(self) -> float | None:
        return (self.val or {}).get("top1")

    @property
    def best_val_top1(self) -> float | None:
        return (self.best_val or {}).get("top1")

    def to_dict(self) -> dict[str, Any]:
        """``result.json``: the task's metrics by name (``test_<metric>``), never a metric the task lacks."""
        key = self.primary_metric
        out: dict[str, Any] = {"run_dir": str(self.run_dir), "task": self.task, "primary_metric": key}
        out.update({f"test_{k}": v for k, v in self.test.items()})
        out[f"val_{key}"] = (self.val or {}).get(key)
        out[f"best_val_{key}"] = (self.best_val or {}).get(key)
        out.update(
            best_epoch=self.best_epoch,
            train_seconds=self.train_seconds,
            images_per_s=self.images_per_s,
            test=self.test,
            val=self.val,
            extra=self.extra,
        )
        return out


def evaluate_accuracy(model: nn.Module, loader, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of a classifier over a loader of batch dicts (eval mode, no augmentation)."""
    from featdistill.train.trainer import evaluate

    return evaluate(model, loader, device=device)["top1"]


def _split(
    labels: torch.Tensor | None, n: int, fraction: float, seed: int, val_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, held out)`` positions: stratified by class where there are class labels, else uniform."""
    from featdistill.data import stratified_split
    from featdistill.data._seeding import generator_for

    if labels is not None:
        return stratified_split(labels, fraction, seed=seed, val_size=val_size)
    k = int(round(n * fraction)) if val_size is None else int(val_size)
    perm = torch.randperm(n, generator=generator_for("random_split", seed))
    return torch.sort(perm[k:]).values, torch.sort(perm[:k]).values


def load_data(cfg: ExperimentConfig) -> tuple[Any, Any]:
    """``(train, test)`` datasets of a config: a registered name, or the user's ``data.train``/``data.test``."""
    from featdistill.data import load_dataset

    d = cfg.data
    if d.train is not None and d.test is not None:
        from featdistill.components import instantiate
        from featdistill.data.batching import TorchDataset

        def wrap(section: Any, role: str) -> Any:
            ds = instantiate(section.class_path, section.init_args, f"data.{role}.class_path")
            if callable(getattr(ds, "batch", None)) and callable(getattr(ds, "fingerprint", None)):
                return ds  # already keeps the loader contract (an ArrayDataset / ImageDataset)
            identity = f"{section.class_path}|{sorted(section.init_args.items())}"
            return TorchDataset(ds, name=f"{section.class_path}-{role}", identity=identity)

        return wrap(d.train, "train"), wrap(d.test, "test")
    assert d.name is not None
    return load_dataset(d.name, root=d.root, **d.kwargs)


def build_data(cfg: ExperimentConfig, rank: int = 0, world_size: int = 1, num_views: int | None = None):
    """Dataset, split and loaders for a config: (train_set, test_set, train_loader, val_loader, test_loader)."""
    from featdistill.data import Augmenter, ViewConfig, ViewLoader, eval_loader

    d = cfg.data
    train_set, test_set = load_data(cfg)
    labels = getattr(train_set, "stratify_labels", None)
    if d.val_fraction > 0:
        tr_idx, val_idx = _split(labels, len(train_set), d.val_fraction, cfg.seed)
    else:
        tr_idx, val_idx = torch.arange(len(train_set)), None
    if d.subset is not None and labels is not None:
        n_classes = int(torch.as_tensor(labels).unique().numel())
        if d.subset < n_classes:
            raise ConfigError(
                f"data.subset = {d.subset} is smaller than the {n_classes} classes of "
                f"{getattr(train_set, 'name', 'the dataset')}: some classes would have no training sample; use "
                f"data.subset >= {n_classes}"
            )
    if d.subset is not None and d.subset < len(tr_idx):
        # a stratified, seeded subset (the indices are sorted by class in many datasets: never slice them)
        sub_labels = labels[tr_idx] if labels is not None else None
        keep, _ = _split(sub_labels, len(tr_idx), 0.0, cfg.seed, val_size=len(tr_idx) - d.subset)
        tr_idx = tr_idx[keep]
    aug = d.augment
    view_cfg = ViewConfig(pad_crop=aug.pad_crop, flip=aug.flip, resized_crop=aug.resized_crop)
    if not view_cfg.is_identity and not _is_image_data(train_set):
        raise ConfigError(
            f"data.augment = {aug.model_dump()} crops/flips images, but {getattr(train_set, 'name', 'the dataset')} "
            "has no image inputs; remove data.augment"
        )
    augmenter = Augmenter(view_cfg, seed=cfg.seed)
    if d.views != "fresh" and num_views is None:
        raise ConfigError(
            f"data.views = {d.views!r} replays the views stored in a teacher store, but this run has none "
            "(teacher.source is not 'store'); use data.views: fresh"
        )
    train_loader = ViewLoader(
        train_set,
        batch_size=d.batch_size // world_size,
        augmenter=augmenter,
        shuffle=True,
        seed=cfg.seed,
        policy=d.views,
        num_views=num_views,
        indices=tr_idx,
        rank=rank,
        world_size=world_size,
        num_workers=d.num_workers,
    )
    val_loader = (
        eval_loader(train_set, d.eval_batch_size, indices=val_idx, num_workers=d.num_workers)
        if val_idx is not None
        else None
    )
    test_loader = eval_loader(test_set, d.eval_batch_size, num_workers=d.num_workers)
    return train_set, test_set, augmenter, train_loader, val_loader, test_loader


def _is_image_data(ds: Any) -> bool:
    from featdistill.data import ImageDataset

    return isinstance(ds, ImageDataset) or bool(getattr(ds, "image_input", False))


def data_meta(cfg: ExperimentConfig, train_set: Any) -> dict[str, Any]:
    """What models are built for: classes, input shape, the task name and the dataset's ``info``."""
    info = dict(getattr(train_set, "info", {}) or {})
    if getattr(train_set, "mean", None) is not None and "mean" not in info:  # e.g. srnet de-normalises its skip
        info["mean"], info["std"] = list(train_set.mean), list(train_set.std)
    num_classes = int(getattr(train_set, "num_classes", 0) or info.get("vocab_size", 0) or 0)
    if cfg.task is not None and cfg.task.num_classes:
        num_classes = cfg.task.num_classes
    return {
        "num_classes": num_classes,
        "image_shape": tuple(getattr(train_set, "image_shape", ())),
        "task": cfg.task.name if cfg.task is not None else "classification",
        "info": info,
    }


def build_model(mc: ModelConfig, meta: dict[str, Any], seed: int, role: str) -> nn.Module:
    """:func:`featdistill.components.build_model_from_config` for this run's data (see :func:`data_meta`)."""
    return build_model_from_config(
        mc, meta["num_classes"], meta["image_shape"], seed, role, task=meta["task"], info=meta["info"]
    )


def build_teacher(cfg: ExperimentConfig, train_set, augmenter, num_classes: int | None = None):
    """The teacher source: a live frozen model, or a ``CachedTeacher`` over a validated store."""
    if cfg.teacher is None:
        return None, None
    t = cfg.teacher
    meta = data_meta(cfg, train_set)
    if num_classes is not None:
        meta["num_classes"] = num_classes
    if t.source == "store":
        from featdistill.cache import CachedTeacher, TeacherStore

        expect: dict[str, Any] = {"dataset": train_set, "augmentation": augmenter, "model_name": t.display_name}
        if t.checkpoint:  # with the weights at hand, also prove the store holds *this* teacher's outputs
            expect["teacher"] = build_model(t, meta, cfg.seed, "teacher")
        return CachedTeacher(TeacherStore.open(t.store, expect=expect)), None
    trained_hf = t.hf is not None and t.hf.path is not None
    if not t.checkpoint and not trained_hf:
        raise ConfigError(
            "teacher.checkpoint is required for a live teacher: a randomly initialised teacher teaches nothing "
            "(train one with `featdistill train` and point teacher.checkpoint at its student.safetensors, or give "
            "a trained Hugging Face folder as teacher.hf.path)"
        )
    from featdistill.components import check_same_tokenizer

    check_same_tokenizer(cfg.student, t)
    model = build_model(t, meta, cfg.seed, "teacher")
    return model, model


def _method_params(cfg: ExperimentConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """The method's params with every network parameter (a model section) built for this data, seeded."""
    from featdistill.methods import METHODS
    from featdistill.methods.base import module_parameters

    params = dict(cfg.method.params)
    for key in module_parameters(METHODS[cfg.method.name]) & set(params):
        mc = ModelConfig.model_validate(params[key])
        params[key] = build_model(mc, meta, cfg.seed, f"method.{key}")
    return params


def _example_call(task: Any, loader: Any, device: torch.device, n: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of the first ``n`` samples of ``loader`` (for MACs and latency of any model)."""
    from featdistill.data.batching import to_device

    batch = next(iter(loader))

    def head(v: Any) -> Any:
        if torch.is_tensor(v):
            return v[:n]
        if isinstance(v, dict):
            return {k: head(x) for k, x in v.items()}
        return v

    return task.model_arguments(to_device({k: head(v) for k, v in batch.items()}, device))


def run_experiment(
    cfg: ExperimentConfig,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Any] = (),
    extend: bool = False,
) -> RunResult:
    """Train the configured student (with its method and teacher) and write the run directory.

    ``callbacks`` are :class:`~featdistill.train.TrainerCallback` objects handed to the Trainer. ``extend=True``
    resumes a run (finished or not) with a larger ``train.epochs``: the epochs already done are the checkpoint's,
    the rest follow the longer schedule from the checkpoint's step on (``featdistill train --extend-to N``).

    The run directory is locked for the whole run (:mod:`featdistill.locks`): a second run into it while this
    one runs is refused (:class:`~featdistill.locks.DirectoryLockedError`).  A directory that already holds a
    run is refused before anything is built unless ``resume``; the resolved ``config.yaml`` is written only once
    the Trainer has accepted the run (a fresh directory, or a checkpoint that fits this config): at the end of
    its first step."""
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes (and locks) the directory
        return _run_experiment(cfg, resume or extend, progress, callbacks, extend)
    from featdistill.locks import directory_lock

    with directory_lock(cfg.resolved_run_dir(), "featdistill train"):
        return _run_experiment(cfg, resume or extend, progress, callbacks, extend)


class _WriteConfig:
    """Writes the resolved ``config.yaml`` once the Trainer has accepted the run: at the end of the first
    optimiser step, which comes after every refusal (a run already there, a checkpoint that does not fit)."""

    def __init__(self, run_dir: Path, text: str) -> None:
        self.run_dir, self.text, self.done = run_dir, text, False

    def _write(self) -> None:
        if not self.done:
            from featdistill.io import atomic_write_text

            atomic_write_text(self.run_dir / "config.yaml", self.text)
            self.done = True

    def on_step_end(self, trainer: Any, step: int) -> None:
        self._write()

    def on_epoch_end(self, trainer: Any, epoch: int, record: Any) -> None:
        self._write()


#: config sections that do not change a run's numbers (the Trainer compares ``train.*`` itself, with its own list)
_RESUME_IRRELEVANT = ("run_dir", "experiment", "train")
#: keys that change speed, not numbers (DataLoader workers render the same planned batches)
_RESUME_IRRELEVANT_KEYS = frozenset({"data.num_workers"})


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: value}


def check_resume_matches(cfg: ExperimentConfig, saved_path: Path) -> None:
    """Refuse to resume a run whose saved ``config.yaml`` differs in anything that changes the numbers — seed,
    data (augmentation, batch size, split, subset, views), task, models, teacher, method — naming each key.

    Why here and not only in the Trainer: its checkpoint records ``train.*``; a resume with another
    ``data.batch_size`` or ``seed`` would otherwise continue "exactly" on a different trajectory."""
    from featdistill.yaml_safe import load_yaml_file

    saved = load_yaml_file(saved_path)
    if not isinstance(saved, Mapping):
        raise ConfigError(f"{saved_path} is not a featdistill config (cannot compare it for --resume)")
    now = cfg.model_dump(mode="json")

    def relevant(key: str) -> bool:
        return (
            key.split(".")[0] not in _RESUME_IRRELEVANT
            and key not in _RESUME_IRRELEVANT_KEYS
            and not key.endswith("display_name")
        )

    a = {k: v for k, v in _flatten(saved).items() if relevant(k)}
    b = {k: v for k, v in _flatten(now).items() if relevant(k)}
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:8])
        more = f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""
        raise ConfigError(
            f"cannot resume {saved_path.parent}: the config differs from the run's in what changes the numbers "
            f"({shown}{more}); restore those values, or start a new run directory (--run-dir)"
        )


#: a trained weight larger than this in magnitude is a diverged run, not a model (no real network's weights come
#: near it; fp16 export overflows at 6.5e4, and values like 1e37 came out of ``lr=1e38`` with exit 0)
ABSURD_WEIGHT = 1e15


def _check_finite_result(student: nn.Module, test: Mapping[str, Any]) -> None:
    """A run whose weights or test metrics are not finite, or whose weights blew up to an absurd magnitude, failed:
    say so (exit 1), never report it as a result."""
    bad_metrics = [k for k, v in test.items() if isinstance(v, float) and not math.isfinite(v)]
    floats = {n: p for n, p in student.state_dict().items() if p.is_floating_point() and p.numel()}
    bad_params = [n for n, p in floats.items() if not torch.isfinite(p).all()]
    huge = {n: float(p.detach().abs().max()) for n, p in floats.items() if n not in bad_params}
    huge = {n: v for n, v in huge.items() if v > ABSURD_WEIGHT}
    if bad_metrics or bad_params or huge:
        problems = []
        if bad_metrics:
            problems.append(f"non-finite test metrics {bad_metrics}")
        if bad_params:
            problems.append(f"non-finite weights in {bad_params[:5]}")
        if huge:
            name, value = max(huge.items(), key=lambda kv: kv[1])
            problems.append(
                f"diverged weights: |{name}| reaches {value:.3g} (> {ABSURD_WEIGHT:.0e}) in {len(huge)} tensor(s)"
            )
        raise FloatingPointError(
            "the trained student is not usable: " + "; ".join(problems) + " — lower train.lr or set train.grad_clip"
        )


def _run_experiment(
    cfg: ExperimentConfig, resume: bool, progress: bool | None, callbacks: Sequence[Any], extend: bool = False
) -> RunResult:
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method
    from featdistill.report import plot_run, summarize_model, write_report
    from featdistill.train import Trainer
    from featdistill.train.distributed import init_distributed
    from featdistill.train.trainer import evaluate

    ctx = init_distributed(cfg.train.device)  # joins torchrun's process group when WORLD_SIZE > 1
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    run_dir = cfg.resolved_run_dir()
    config_text = dump_config(cfg)  # refuses an unbounded value before anything runs
    if ctx.is_main:
        from featdistill.train.checkpoint import list_checkpoints

        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and (list_checkpoints(run_dir) or (run_dir / "metrics.jsonl").exists()):
            raise FileExistsError(
                f"{run_dir} already holds a run (metrics.jsonl / checkpoints); continue it with "
                "`featdistill train CONFIG --resume` (resume=True in Python) or choose a new run directory "
                "(--run-dir)"
            )
        if resume and (run_dir / "config.yaml").is_file():
            check_resume_matches(cfg, run_dir / "config.yaml")

    num_views = None
    if cfg.teacher is not None and cfg.teacher.source == "store":
        from featdistill.cache import TeacherStore

        num_views = TeacherStore.peek_num_views(cfg.teacher.store)
        if cfg.data.views == "fresh":
            raise ConfigError(
                "data.views = 'fresh' cannot be used with a teacher store: the store holds "
                f"{num_views} view(s) per sample; set data.views to 'cycle' or 'sample'"
            )
    train_set, test_set, augmenter, train_loader, val_loader, test_loader = build_data(
        cfg, ctx.rank, ctx.world_size, num_views
    )
    meta = data_meta(cfg, train_set)
    assert cfg.task is not None
    task = cfg.task.build(meta["num_classes"] or None)
    student = build_model(cfg.student, meta, cfg.seed, "student")
    teacher, teacher_model = build_teacher(cfg, train_set, augmenter)
    m = cfg.method
    method = build_method(m.name, **_method_params(cfg, meta), weights=m.weights or None)
    distiller = Distiller(
        student,
        method,
        teacher,
        ce_weight=m.ce_weight,
        label_smoothing=m.label_smoothing,
        task=task,
        student_output=cfg.student.output,
        teacher_output=cfg.teacher.output if cfg.teacher is not None else None,
    )
    distiller.fit_data(train_loader, meta["num_classes"])
    distiller.student_spec = {
        "model": cfg.student.display_name,
        "kwargs": cfg.student.kwargs or cfg.student.init_args,
        "num_classes": meta["num_classes"],
        "image_shape": list(meta["image_shape"]),
        "task": task.name,
    }

    train_cfg = cfg.train if progress is None else cfg.train.model_copy(update={"progress": progress})
    hooks = [_WriteConfig(run_dir, config_text), *callbacks] if ctx.is_main else list(callbacks)
    trainer = Trainer(
        distiller, train_loader, val_loader, train_cfg, run_dir, resume=resume, callbacks=hooks, extend=extend
    )
    result = trainer.fit()

    device = next(student.parameters()).device
    test = evaluate(student, test_loader, device=device, task=task, output=cfg.student.output)
    _check_finite_result(student, test)
    key = task.primary_metric
    best = dict(result.best or {})
    out = RunResult(
        run_dir=run_dir,
        task=task.name,
        primary_metric=key,
        test=test,
        val=dict(result.last) if result.last else None,
        best_val=best or None,
        best_epoch=best.get("epoch"),
        train_seconds=result.train_seconds,
        images_per_s=result.images_per_s,
    )
    if ctx.is_main:
        summaries = []
        one = _example_call(task, test_loader, device, 1)
        many = _example_call(task, test_loader, device, 64)
        if teacher_model is not None:
            assert cfg.teacher is not None
            t_test = evaluate(teacher_model, test_loader, device=device, task=task, output=cfg.teacher.output)
            summaries.append(
                summarize_model("teacher", cfg.teacher.display_name, teacher_model, one, t_test[key], many, key)
            )
            out.extra["teacher_test"] = t_test
            out.extra[f"teacher_test_{key}"] = t_test[key]
        summaries.append(summarize_model("student", cfg.student.display_name, student, one, test[key], many, key))
        plots = plot_run(run_dir, metric=key)
        val_last, val_best = (out.val or {}).get(key), (out.best_val or {}).get(key)
        data_name = cfg.data.name or (cfg.data.train.class_path if cfg.data.train is not None else "data")
        better = "higher" if task.primary_mode == "max" else "lower"
        write_report(
            run_dir,
            f"{cfg.experiment}: {cfg.method.name} on {data_name} ({task.name})",
            summaries,
            extra={
                "task": f"{task.name} (primary metric: {key}, {better} is better)",
                "method": cfg.method.name,
                "test metrics (last epoch)": ", ".join(f"{k} {v:.4g}" for k, v in test.items()),
                f"validation {key} (last / best)": f"{val_last} / {val_best} (epoch {out.best_epoch})",
                "training time": f"{out.train_seconds:.1f} s",
                "throughput": f"{out.images_per_s:.0f} samples/s" if out.images_per_s else "–",
                "threads": str(torch.get_num_threads()),
            },
            plots=plots,
            metric=key,
        )
        (run_dir / "result.json").write_text(json.dumps(out.to_dict(), indent=2))
    return out
