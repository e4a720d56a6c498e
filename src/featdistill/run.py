"""Build and run one experiment from a validated :class:`~featdistill.config.ExperimentConfig`.

This is the only place where config sections turn into objects (dataset, views, loaders, models, teacher
source, method, Distiller, Trainer), so the CLI, the demo and the benchmarks all run the same code.
Model selection uses the validation split carved from train; the test split is evaluated once, after the
last epoch, and that last-epoch number is what reports show.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featdistill.config import ConfigError, ExperimentConfig, ModelConfig, dump_config
from featdistill.seeding import seeded

__all__ = ["RunResult", "run_experiment", "build_model_from_config", "load_weights", "evaluate_accuracy"]


@dataclass
class RunResult:
    run_dir: Path
    test_top1: float
    val_top1: float | None
    best_val_top1: float | None
    best_epoch: int | None
    train_seconds: float
    images_per_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None) -> nn.Module:
    """Load weights safely: safetensors, or a torch file with ``weights_only=True`` (never plain pickle)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"checkpoint {str(p)!r} does not exist; train the model first or fix the path")
    if sha256 is not None and sha256_file(p) != sha256.lower():
        raise ConfigError(f"checkpoint {p}: sha256 mismatch (expected {sha256}); refusing to load it")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        obj = torch.load(p, map_location="cpu", weights_only=True)
        state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {p} does not fit {type(model).__name__}: missing keys {missing[:5]}"
            f"{'…' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
        )
    return model


def build_model_from_config(mc: ModelConfig, num_classes: int, image_shape: tuple[int, ...], seed: int, role: str):
    """Build a zoo model with seeded initialisation (reproducible, no global RNG side effects)."""
    from featdistill.models import build_model

    c, h = image_shape[0], image_shape[-1]
    with seeded(seed, role):
        model = build_model(mc.model, num_classes=num_classes, in_channels=c, image_size=h, **mc.kwargs)
    if mc.checkpoint:
        load_weights(model, mc.checkpoint, mc.sha256)
    return model


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` over a loader of batch dicts (eval mode, no augmentation)."""
    was = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        logits = model(batch["input"].to(device))
        correct += int((logits.argmax(1) == batch["target"].to(device)).sum())
        total += int(batch["target"].numel())
    model.train(was)
    return correct / max(total, 1)


def build_data(cfg: ExperimentConfig, rank: int = 0, world_size: int = 1, num_views: int | None = None):
    """Dataset, split and loaders for a config: (train_set, test_set, train_loader, val_loader, test_loader)."""
    from featdistill.data import Augmenter, ViewConfig, ViewLoader, eval_loader, load_dataset, stratified_split

    d = cfg.data
    train_set, test_set = load_dataset(d.name, root=d.root, **d.kwargs)
    if d.val_fraction > 0:
        tr_idx, val_idx = stratified_split(train_set.targets, d.val_fraction, seed=cfg.seed)
    else:
        tr_idx, val_idx = torch.arange(len(train_set)), None
    if d.subset is not None and d.subset < len(tr_idx):
        # a stratified, seeded subset (the indices are sorted by class in many datasets: never slice them)
        keep, _ = stratified_split(
            train_set.targets[tr_idx], 1.0 - d.subset / len(tr_idx), seed=cfg.seed, val_size=len(tr_idx) - d.subset
        )
        tr_idx = tr_idx[keep]
    aug = d.augment
    view_cfg = ViewConfig(pad_crop=aug.pad_crop, flip=aug.flip, resized_crop=aug.resized_crop)
    augmenter = Augmenter(view_cfg, seed=cfg.seed)
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
    )
    val_loader = eval_loader(train_set, d.eval_batch_size, indices=val_idx) if val_idx is not None else None
    test_loader = eval_loader(test_set, d.eval_batch_size)
    return train_set, test_set, augmenter, train_loader, val_loader, test_loader


def build_teacher(cfg: ExperimentConfig, train_set, augmenter, num_classes: int):
    """The teacher source: a live frozen model, or a ``CachedTeacher`` over a validated store."""
    if cfg.teacher is None:
        return None, None
    t = cfg.teacher
    if t.source == "store":
        from featdistill.cache import CachedTeacher, TeacherStore

        expect: dict[str, Any] = {"dataset": train_set, "augmentation": augmenter, "model_name": t.model}
        if t.checkpoint:  # with the weights at hand, also prove the store holds *this* teacher's outputs
            expect["teacher"] = build_model_from_config(
                t, num_classes, tuple(train_set.image_shape), cfg.seed, "teacher"
            )
        return CachedTeacher(TeacherStore.open(t.store, expect=expect)), None
    if not t.checkpoint:
        raise ConfigError(
            "teacher.checkpoint is required for a live teacher: a randomly initialised teacher teaches nothing "
            "(train one with `featdistill train` and point teacher.checkpoint at its student.safetensors)"
        )
    model = build_model_from_config(t, num_classes, tuple(train_set.image_shape), cfg.seed, "teacher")
    return model, model


def _method_params(cfg: ExperimentConfig, num_classes: int, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """The method's params with every network parameter (a model section) built for this data, seeded."""
    from featdistill.methods import METHODS
    from featdistill.methods.base import module_parameters

    params = dict(cfg.method.params)
    for key in module_parameters(METHODS[cfg.method.name]) & set(params):
        mc = ModelConfig.model_validate(params[key])
        params[key] = build_model_from_config(mc, num_classes, image_shape, cfg.seed, f"method.{key}")
    return params


def run_experiment(cfg: ExperimentConfig, resume: bool = False, progress: bool | None = None) -> RunResult:
    """Train the configured student (with its method and teacher) and write the run directory."""
    from featdistill.distiller import Distiller
    from featdistill.methods import build_method
    from featdistill.report import plot_run, summarize_model, write_report
    from featdistill.train import Trainer
    from featdistill.train.distributed import init_distributed

    ctx = init_distributed(cfg.train.device)  # joins torchrun's process group when WORLD_SIZE > 1
    run_dir = cfg.resolved_run_dir()
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))

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
    num_classes = train_set.num_classes
    image_shape = tuple(train_set.image_shape)
    student = build_model_from_config(cfg.student, num_classes, image_shape, cfg.seed, "student")
    teacher, teacher_model = build_teacher(cfg, train_set, augmenter, num_classes)
    m = cfg.method
    method = build_method(m.name, **_method_params(cfg, num_classes, image_shape), weights=m.weights or None)
    distiller = Distiller(student, method, teacher, ce_weight=m.ce_weight, label_smoothing=m.label_smoothing)
    distiller.fit_data(train_loader, num_classes)
    distiller.student_spec = {
        "model": cfg.student.model,
        "kwargs": cfg.student.kwargs,
        "num_classes": num_classes,
        "image_shape": list(image_shape),
    }

    train_cfg = cfg.train if progress is None else cfg.train.model_copy(update={"progress": progress})
    trainer = Trainer(distiller, train_loader, val_loader, train_cfg, run_dir, resume=resume)
    result = trainer.fit()

    device = next(student.parameters()).device
    test_top1 = evaluate_accuracy(student, test_loader, device)
    out = RunResult(
        run_dir=run_dir,
        test_top1=test_top1,
        val_top1=(result.last or {}).get("top1"),
        best_val_top1=(result.best or {}).get("top1"),
        best_epoch=(result.best or {}).get("epoch"),
        train_seconds=result.train_seconds,
        images_per_s=result.images_per_s,
    )
    if ctx.is_main:
        summaries = []
        shape = image_shape
        if teacher_model is not None:
            t_acc = evaluate_accuracy(teacher_model, test_loader, device)
            summaries.append(summarize_model("teacher", cfg.teacher.model, teacher_model, shape, t_acc))
            out.extra["teacher_test_top1"] = t_acc
        summaries.append(summarize_model("student", cfg.student.model, student, shape, test_top1))
        plots = plot_run(run_dir)
        write_report(
            run_dir,
            f"{cfg.experiment}: {cfg.method.name} on {cfg.data.name}",
            summaries,
            extra={
                "method": cfg.method.name,
                "validation top-1 (last / best)": f"{out.val_top1} / {out.best_val_top1} (epoch {out.best_epoch})",
                "training time": f"{out.train_seconds:.1f} s",
                "throughput": f"{out.images_per_s:.0f} images/s" if out.images_per_s else "–",
            },
            plots=plots,
        )
        (run_dir / "result.json").write_text(
            json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in out.__dict__.items()}, indent=2)
        )
    return out
