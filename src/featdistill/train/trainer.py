"""The training loop: one place that owns optimisation, precision, logging, evaluation and checkpoints.

The :class:`Trainer` drives any module that keeps the Distiller contract (``docs/architecture.md``):
``forward(batch, epoch=float) -> (student_logits, {name: weighted loss})``, ``trainable_parameters()``,
``export_student()`` and an attribute ``student``.  The loader yields batch dicts and has ``set_epoch(e)``
and ``len()``; it must be a pure function of (seed, epoch), which is what makes resume exact.

One step: move the batch, autocast (bf16 where it helps), ``distiller(batch, epoch=e + i/len)``, total =
sum of the named terms, backward, optional grad-norm clipping, optimiser step, scheduler step (per
iteration).  Loss values are read back to the host only every ``log_every`` steps and at epoch end, so
on a GPU the loop does not synchronise every step.

Records in ``run_dir/metrics.jsonl`` (one JSON object per line):

- ``{"type": "step", "step", "epoch" (epochs done so far, fractional), "lr", "total", "losses": {name: value},
  "images_per_s"}`` every ``log_every`` steps;
- ``{"type": "epoch", "epoch" (completed epochs, 1-based), "step", "lr" (of its last step), "total", "losses",
  "images_per_s", "time_s"}`` after every epoch (means over the epoch and over ranks);
- ``{"type": "eval", "epoch", "step", **metrics ("top1", "loss", "n"), "best_<metric>", "best_epoch"}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from featdistill.data.batching import batch_size_of, to_device
from featdistill.train import checkpoint as ckpt
from featdistill.train.config import (
    TRAJECTORY_IRRELEVANT_KEYS,
    TrainConfig,
    has_slow_channels_last_norm,
    resolve_channels_last,
    resolve_precision,
)
from featdistill.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    current_context,
    rank_synced_keys,
    wrap_ddp,
)
from featdistill.train.schedule import build_scheduler

__all__ = ["Trainer", "TrainResult", "TrainerCallback", "evaluate", "build_optimizer", "EvalFn"]

log = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
#: ``eval_fn(student, eval_loader) -> {metric: value}``; called in eval mode under inference_mode/autocast.
EvalFn = Callable[[nn.Module, Iterable[Batch]], Mapping[str, float]]


class TrainerCallback:
    """Hooks into the loop (subclass and override).  Raising from a hook stops training — tests use this
    to simulate a crash."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After optimiser step ``step`` (1-based global step count)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: Mapping[str, Any]) -> None:
        """After epoch ``epoch`` (1-based) was evaluated and checkpointed; ``record`` is its history entry."""


class _Loader(Protocol):
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    ``final`` (alias ``last``) are the eval metrics of the **last** epoch (what a paper table should
    report); ``best`` holds the metrics of the best epoch plus ``"epoch"`` (also in ``best_epoch``), recorded
    separately for diagnosis only — picking the best epoch on the evaluation split is tuning on it.
    ``history`` has one entry per epoch: train loss means, lr, throughput and (when evaluated) ``"eval"``.
    """

    final: dict[str, float]
    best: dict[str, float]
    best_epoch: int | None
    history: list[dict[str, Any]]
    epochs_completed: int
    global_step: int
    run_dir: Path
    student_path: Path | None = None
    resumed_from: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> dict[str, float]:
        return self.final

    @property
    def train_seconds(self) -> float:
        """Training seconds summed over epochs (no eval, no checkpointing), resumed parts included."""
        return float(sum(h.get("time_s", 0.0) for h in self.history))

    @property
    def images_per_s(self) -> float | None:
        """Training throughput over the whole run (all ranks together)."""
        t = self.train_seconds
        return sum(h.get("images", 0) for h in self.history) / t if t > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "final": self.final,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "epochs_completed": self.epochs_completed,
            "global_step": self.global_step,
            "run_dir": str(self.run_dir),
            "student_path": None if self.student_path is None else str(self.student_path),
            "resumed_from": None if self.resumed_from is None else str(self.resumed_from),
            "settings": self.settings,
            "train_seconds": self.train_seconds,
            "images_per_s": self.images_per_s,
        }


# ---------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------


def build_optimizer(
    params: Sequence[nn.Parameter] | Sequence[dict[str, Any]], config: TrainConfig
) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW with decoupled weight decay, from the config.

    ``params`` may be parameter groups; a group's ``lr_scale`` sets its lr to ``config.lr × lr_scale`` (the
    schedule then multiplies every group by the same factor, so the ratio holds throughout).
    """
    params = [{**g, "lr": config.lr * float(g.get("lr_scale", 1.0))} if isinstance(g, dict) else g for g in params]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
    if config.optimizer == "dot":  # separate task / distillation momenta (featdistill.train.dot)
        from featdistill.train.dot import DOT

        return DOT.from_delta(
            params, lr=config.lr, momentum=config.momentum, delta=config.dot_delta, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _to_device(batch: Batch, device: torch.device, channels_last: bool) -> dict[str, Any]:
    """The batch on ``device``, nested structures included (a Hugging Face ``input`` mapping)."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        v = to_device(v, device)
        if k == "input" and channels_last and torch.is_tensor(v) and v.dim() == 4:
            v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    task: Any = None,
    output: int | str | None = None,
    sync: bool = False,
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``loader`` (default task: classification — ``top1``, mean CE ``loss``).

    The model is put in eval mode and restored afterwards; predictions are read in fp32 even under autocast.
    Metrics accumulate sums over the batches (torchmetrics states); ``sync=True`` combines them over DDP ranks
    (each rank evaluates its shard). ``n`` is the number of samples.
    """
    from featdistill.tasks.classification import Classification

    task = task if task is not None else Classification()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = task.new_metrics(device, sync=sync)
    try:
        with torch.inference_mode():
            for batch in loader:
                b = _to_device(batch, device, channels_last)
                with _autocast(device, amp_dtype):
                    pred = task.predict(model, b, output)
                metrics.update(pred.float(), b)
    finally:
        model.train(was_training)
    return metrics.compute()


class _MetricsLog:
    """Append-only JSONL file (rank 0 only); each line is flushed so a crash loses at most one record."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._f = None if path is None else open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: Mapping[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record, allow_nan=True) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _truncate_metrics(path: Path, epoch: int, step: int) -> None:
    """Drop records written after the checkpoint we resume from (the killed run's partial epoch), so
    ``metrics.jsonl`` reads as if the run had never stopped.  Unparsable lines (a write cut by the kill)
    are dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("type") == "step" and rec.get("step", 0) > step:
            continue
        if rec.get("type") in ("epoch", "eval") and rec.get("epoch", 0) > epoch:
            continue
        kept.append(line)
    ckpt.atomic_write_text(path, "".join(line + "\n" for line in kept))


class _Progress:
    """A rich progress bar with loss terms and images/s; a no-op when disabled or not on a terminal."""

    def __init__(self, enabled: bool, total_epochs: int) -> None:
        self._p = None
        self.total_epochs = total_epochs
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task("", total=1, info="")

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self._p is not None:
            self._p.reset(self._task, total=steps, description=f"epoch {epoch + 1}/{self.total_epochs}", info="")

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def info(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, info=text)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


def _fmt_terms(losses: Mapping[str, float], ips: float | None = None) -> str:
    s = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
    return s if ips is None else f"{s} | {ips:,.0f} img/s"


# ---------------------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------------------


class Trainer:
    """Trains a distiller; see the module docstring for the loop and the metrics records.

    Args:
        distiller: the module to train (keeps the Distiller contract).
        train_loader: batch dicts; ``set_epoch(e)`` is called before epoch ``e`` (0-based); under DDP it
            must already be sharded for this rank (per-rank batch = global batch / world size).
        eval_loader: batch dicts for evaluation (rank 0 evaluates it whole), or ``None`` for no evaluation.
        config: :class:`TrainConfig`.
        run_dir: where ``metrics.jsonl``, ``checkpoints/``, ``student.safetensors`` go.
        eval_fn: ``eval_fn(student, eval_loader) -> metrics``; default :func:`evaluate` (top-1 and CE).
        resume: continue from the newest checkpoint in ``run_dir`` (start fresh if there is none).  The
            rebuilt distiller must be constructed as before (same student/method/teacher); the config may
            differ only in logging keys (:data:`TRAJECTORY_IRRELEVANT_KEYS`).
        dist: the process's :class:`DistContext`; default: the initialised process group, if any.
        callbacks: :class:`TrainerCallback` objects.
    """

    def __init__(
        self,
        distiller: nn.Module,
        train_loader: _Loader,
        eval_loader: Iterable[Batch] | None,
        config: TrainConfig,
        run_dir: Path | str,
        eval_fn: EvalFn | None = None,
        *,
        resume: bool = False,
        dist: DistContext | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        extend: bool = False,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}; use TrainConfig(**dict)")
        for attr in ("trainable_parameters", "export_student"):
            if not callable(getattr(distiller, attr, None)):
                raise TypeError(
                    f"{type(distiller).__name__} has no {attr}(); the Trainer needs a module keeping the "
                    "Distiller contract (forward(batch, epoch) -> (logits, losses), trainable_parameters(), "
                    "export_student())"
                )
        self.distiller = distiller
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.config = config
        self.run_dir = Path(run_dir)
        self.eval_fn = eval_fn
        self.resume = resume
        #: resume may raise ``epochs`` (and only that): the epochs already done come from the checkpoint as
        #: they are, the rest follow the schedule of the new length from the checkpoint's step on
        self.extend = extend
        self.dist = dist if dist is not None else current_context(config.device)
        self.callbacks = list(callbacks)
        self.device = self.dist.device
        #: the distiller's task (how batches call the student, its metrics); ``None`` = classification
        self.task = getattr(distiller, "task", None)
        self.student_output = getattr(getattr(distiller, "_student_taps", None), "specs", {}).get("logits")
        self.student_output = None if self.student_output is None else self.student_output.select
        if config.threads is not None:  # measured: oversubscribed cores made 2-core runs 10-20x slower
            torch.set_num_threads(int(config.threads))
        self.amp_dtype = resolve_precision(config.precision, self.device)
        teacher_model = self._teacher_model()
        self.channels_last = resolve_channels_last(
            config.channels_last, self.device, self.amp_dtype, distiller, teacher_model
        )
        if config.channels_last is True and has_slow_channels_last_norm(distiller, teacher_model):
            log.warning("channels_last=true with GroupNorm/InstanceNorm runs the slow eager path (efficiency.md §10.3)")
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, float] = {}
        self.best_epoch: int | None = None
        self.resumed_from: Path | None = None
        self._epoch_record: dict[str, Any] = {}

    # -- helpers -----------------------------------------------------------------------------------------
    @property
    def student(self) -> nn.Module:
        s = getattr(self.distiller, "student", None)
        return s if isinstance(s, nn.Module) else self.distiller.export_student()

    def _teacher_model(self) -> nn.Module | None:
        teacher = getattr(self.distiller, "teacher", None)
        if isinstance(teacher, nn.Module):
            return teacher
        model = getattr(teacher, "model", None)
        return model if isinstance(model, nn.Module) else None

    def settings(self) -> dict[str, Any]:
        """The resolved "auto" settings (also written to ``run_dir/train_settings.json``)."""
        return {
            "device": str(self.device),
            "precision": "bf16" if self.amp_dtype == torch.bfloat16 else "fp32",
            "channels_last": self.channels_last,
            "world_size": self.dist.world_size,
            "steps_per_epoch": len(self.train_loader),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "task": getattr(self.task, "name", "classification"),
            "torch": torch.__version__,
        }

    def _prepare_model(self) -> None:
        """Device, adapters (probe), memory format — in that order, and all before the optimiser exists."""
        d = self.distiller
        d.to(self.device)
        teacher = getattr(d, "teacher", None)
        if (
            teacher is not None
            and not isinstance(teacher, nn.Module)
            and type(d)._apply is nn.Module._apply  # the real Distiller's _apply moves its live teacher
            and callable(getattr(teacher, "to", None))
        ):
            teacher.to(self.device)  # an unregistered teacher object is not moved by d.to()
        if callable(getattr(d, "prepare", None)) and not getattr(d, "prepared", False):
            # Adapters are built by probing one batch; they must exist before the optimiser and DDP see the
            # parameters.  Epoch 0's first batch, so a resumed run probes the same shapes.
            if callable(getattr(self.train_loader, "set_epoch", None)):
                self.train_loader.set_epoch(0)
            probe = _to_device(next(iter(self.train_loader)), self.device, False)
            d.prepare(probe, seed=self.config.seed)
            d.to(self.device)
        self.channels_last = resolve_channels_last(
            self.config.channels_last, self.device, self.amp_dtype, d, self._teacher_model()
        )
        if self.channels_last:
            d.to(memory_format=torch.channels_last)
        if callable(getattr(d, "configure", None)):
            d.configure(channels_last=self.channels_last)
        elif teacher is not None and callable(getattr(teacher, "configure", None)):
            teacher.configure(channels_last=self.channels_last)

    def _seed(self) -> None:
        # The library draws from explicit generators; the global RNGs are seeded for user code (dropout).
        # seed + rank: ranks must not draw identical dropout masks for different samples.
        s = self.config.seed + self.dist.rank
        torch.manual_seed(s)
        np.random.seed(s % (2**32))
        random.seed(s)

    def _check_steps(self) -> int:
        try:
            steps = len(self.train_loader)
        except TypeError:
            raise TypeError("the train loader must define len() (batches per epoch) for per-step schedules") from None
        if steps < 1:
            raise ValueError("the train loader is empty (len() == 0); check the dataset and batch size")
        if self.dist.enabled:
            t = torch.tensor([steps, -steps], dtype=torch.long, device=self.device)
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
            if int(t[0]) != steps or -int(t[1]) != steps:
                raise ValueError(
                    f"ranks disagree on batches per epoch (this rank {steps}, "
                    f"range {-int(t[1])}..{int(t[0])}); "
                    "shard with drop_last so every rank takes the same number of steps"
                )
        return steps

    def _gather_rng(self) -> list[dict[str, Any]]:
        state = ckpt.capture_rng_state()
        if not self.dist.enabled:
            return [state]
        out: list[Any] = [None] * self.dist.world_size
        tdist.all_gather_object(out, state)
        return out

    def _check_resume_config(self, saved: Mapping[str, Any], path: Path) -> None:
        now = self.config.model_dump(mode="json")
        diff = {
            k: (saved.get(k), now.get(k))
            for k in sorted(set(now) | set(saved))
            if k not in TRAJECTORY_IRRELEVANT_KEYS and saved.get(k) != now.get(k)
        }
        if self.extend and "epochs" in diff:
            old, new = diff.pop("epochs")
            if not isinstance(old, int) or new <= old:
                raise ckpt.CheckpointError(
                    f"cannot extend {path}: train.epochs must grow (the run has {old}, asked {new})"
                )
            log.warning(
                "extending the run from %d to %d epochs: epochs 1..%d are the checkpoint's, the rest follow the "
                "%d-epoch schedule from the checkpoint's step on",
                old,
                new,
                old,
                new,
            )
        if diff:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ckpt.CheckpointError(
                f"cannot resume from {path}: the config changed ({lines}); exact resume needs the same "
                "trajectory settings. Restore them or start a new run directory."
            )

    def _load(self, path: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        state = ckpt.load_checkpoint(path, map_location=self.device)
        self._check_resume_config(state["config"], path)
        allowed = ckpt.frozen_state_keys(self.distiller)
        model_keys = self.distiller.state_dict().keys()
        missing, unexpected = ckpt.iter_state_mismatch(model_keys, state["model"].keys(), allowed)
        if missing or unexpected:
            raise ckpt.CheckpointError(
                f"checkpoint {path} does not fit this distiller: missing {missing[:8]}, unexpected "
                f"{unexpected[:8]}; rebuild the distiller (student, method, adapters) exactly as for the "
                "saved run"
            )
        self.distiller.load_state_dict(state["model"], strict=False)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise ckpt.CheckpointError(f"checkpoint {path}: optimizer state does not fit ({e})") from e
        scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            log.warning(
                "checkpoint %s was written by %d rank(s), this run has %d: RNG streams (and sharding) "
                "differ, "
                "so the resumed run is not bit-identical",
                path,
                len(rng),
                self.dist.world_size,
            )
        ckpt.restore_rng_state(rng[self.dist.rank] if self.dist.rank < len(rng) else rng[0])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state.get("history", []))
        best = state.get("best", {}) or {}
        self.best = dict(best.get("metrics", {}))
        self.best_epoch = best.get("epoch")
        self.resumed_from = path

    def _save(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        rng = self._gather_rng()  # collective: every rank takes part
        if not self.dist.is_main:
            return
        payload = {
            "model": ckpt.trainable_state_dict(self.distiller),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "rng": rng,
            "world_size": self.dist.world_size,
            "config": self.config.model_dump(mode="json"),
            "history": self.history,
            "best": {"metrics": self.best, "epoch": self.best_epoch},
        }
        ckpt.save_checkpoint(ckpt.checkpoint_path(self.run_dir, self.epoch), payload)
        ckpt.prune_checkpoints(self.run_dir, self.config.keep_checkpoints)

    def _evaluate(self) -> dict[str, float]:
        """Eval metrics, identical on every rank.

        An eval loader sharded for this job (``eval_loader.world_size == world_size``, e.g.
        ``featdistill.data.eval_loader(..., rank=r, world_size=n)``) is evaluated by every rank on its shard
        and the default metrics are combined exactly (sums of correct, CE and counts); any other eval loader
        is evaluated whole by rank 0 and the result broadcast.
        """
        ctx, student = self.dist, self.student
        sharded = ctx.enabled and getattr(self.eval_loader, "world_size", 1) == ctx.world_size
        kw = {
            "device": self.device,
            "amp_dtype": self.amp_dtype,
            "channels_last": self.channels_last,
            "task": self.task,
            "output": self.student_output,
        }
        if self.eval_fn is None and sharded:  # every rank its shard; torchmetrics combines the states exactly
            return evaluate(student, self.eval_loader or [], sync=True, **kw)
        metrics: dict[str, float] | None = None
        if ctx.is_main:
            if self.eval_fn is None:
                metrics = evaluate(student, self.eval_loader or [], **kw)
            else:
                was = student.training
                student.eval()
                try:
                    with torch.inference_mode(), _autocast(self.device, self.amp_dtype):
                        out = self.eval_fn(student, self.eval_loader or [])
                    metrics = {k: float(v) for k, v in out.items()}
                finally:
                    student.train(was)
        return broadcast_object(metrics, ctx)

    @property
    def best_metric(self) -> str:
        """``train.best_metric``, or the task's primary metric (top-1, mIoU, perplexity, MSE, PSNR…)."""
        return self.config.best_metric or (self.task.primary_metric if self.task is not None else "top1")

    @property
    def best_mode(self) -> str:
        if self.config.best_mode is not None:
            return self.config.best_mode
        return self.task.primary_mode if self.task is not None and not self.config.best_metric else "max"

    def _update_best(self, metrics: Mapping[str, float]) -> None:
        key = self.best_metric
        if key not in metrics:
            raise KeyError(
                f"train.best_metric = {key!r} is not among the eval metrics {sorted(metrics)}; "
                "set best_metric to one of them"
            )
        v = metrics[key]
        b = self.best.get(key)
        better = b is None or (v > b if self.best_mode == "max" else v < b)
        if better and not math.isnan(v):
            self.best = dict(metrics)
            self.best_epoch = self.epoch

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train ``config.epochs`` epochs (or the rest of them after resume), then export the student."""
        cfg, ctx = self.config, self.dist
        metrics_path = self.run_dir / "metrics.jsonl"
        if not self.resume and (ckpt.list_checkpoints(self.run_dir) or metrics_path.exists()):
            raise FileExistsError(
                f"{self.run_dir} already holds a run (metrics.jsonl / checkpoints); continue it with "
                "`featdistill train CONFIG --resume` (resume=True in Python) or choose a new run directory"
            )
        steps = self._check_steps()
        self._prepare_model()
        params = list(self.distiller.trainable_parameters())
        if not params:
            raise ValueError("distiller.trainable_parameters() is empty: nothing to train")
        frozen = [p for p in params if not p.requires_grad]
        if frozen:
            raise ValueError(f"{len(frozen)} parameter(s) from trainable_parameters() have requires_grad=False")
        groups = self.distiller.param_groups() if hasattr(self.distiller, "param_groups") else None
        optimizer = build_optimizer(groups if groups is not None else params, cfg)
        scheduler = build_scheduler(optimizer, cfg, steps)

        latest = ckpt.latest_checkpoint(self.run_dir) if self.resume else None
        if latest is not None:
            self._load(latest, optimizer, scheduler)
            log.info("resumed from %s (epoch %d, step %d)", latest, self.epoch, self.global_step)
        else:
            self._seed()
        barrier(ctx)  # every rank has read the checkpoint before rank 0 may prune it

        writer = None
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:  # drop what a killed run wrote after its last checkpoint (all of it if none)
                _truncate_metrics(metrics_path, self.epoch, self.global_step)
            ckpt.atomic_write_text(
                self.run_dir / "train_settings.json",
                json.dumps({"config": cfg.model_dump(mode="json"), "resolved": self.settings()}, indent=2) + "\n",
            )
            if cfg.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as e:
                    raise ImportError(
                        "train.tensorboard = true needs the tensorboard package: "
                        "pip install 'featdistill[tensorboard]'"
                        " (or set tensorboard: false)"
                    ) from e
                writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        mlog = _MetricsLog(metrics_path if ctx.is_main else None)
        progress = _Progress(cfg.progress and ctx.is_main, cfg.epochs)
        ignore = ckpt.frozen_state_keys(self.distiller) | rank_synced_keys(self.distiller)
        model = wrap_ddp(self.distiller, ctx, ignore=ignore)
        try:
            while self.epoch < cfg.epochs:
                self._train_epoch(model, optimizer, scheduler, params, steps, mlog, writer, progress)
                self._end_epoch(optimizer, scheduler, mlog, writer)
        finally:
            progress.close()
            mlog.close()
            if writer is not None:
                writer.close()

        student_path = None
        if ctx.is_main:
            spec = getattr(self.distiller, "student_spec", None)
            student_path = ckpt.export_student(self.distiller.export_student(), self.run_dir, spec)
        barrier(ctx)
        final = dict(self.history[-1].get("eval", {})) if self.history else {}
        return TrainResult(
            final=final,
            best={**self.best, "epoch": self.best_epoch} if self.best else {},
            best_epoch=self.best_epoch,
            history=list(self.history),
            epochs_completed=self.epoch,
            global_step=self.global_step,
            run_dir=self.run_dir,
            student_path=student_path,
            resumed_from=self.resumed_from,
            settings=self.settings(),
        )

    def _train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        params: list[nn.Parameter],
        steps: int,
        mlog: _MetricsLog,
        writer: Any,
        progress: _Progress,
    ) -> None:
        cfg, ctx, epoch = self.config, self.dist, self.epoch
        if callable(getattr(self.train_loader, "set_epoch", None)):
            self.train_loader.set_epoch(epoch)
        model.train()
        progress.start_epoch(epoch, steps)
        names: list[str] | None = None
        sums: torch.Tensor | None = None  # [total, *terms] summed over the epoch's steps
        images = 0
        win_images, win_t0 = 0, time.perf_counter()
        t0 = win_t0
        n_batches = 0
        last_lr = optimizer.param_groups[0]["lr"]
        for i, batch in enumerate(self.train_loader):
            n_batches += 1
            b = _to_device(batch, self.device, self.channels_last)
            with _autocast(self.device, self.amp_dtype):
                _, losses = model(b, epoch=epoch + i / steps)
            if not losses:
                raise ValueError("the distiller returned no loss terms; nothing to optimise")
            if names is None:
                names = list(losses)
                sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=self.device)
            elif list(losses) != names:
                raise ValueError(f"loss terms changed between steps: {names} then {list(losses)}")
            terms = torch.stack([losses[k].detach().float().reshape(()) for k in names])
            total = sum(losses[k].float() for k in names)
            lr = last_lr = optimizer.param_groups[0]["lr"]
            if cfg.optimizer == "dot":  # two backward passes: distillation terms, then the task term
                from featdistill.train.dot import dot_step

                if ctx.world_size > 1:
                    raise ValueError("train.optimizer = 'dot' runs in one process only (two backward passes per step)")
                dot_step(optimizer, losses, getattr(self.distiller, "task_term", "ce"))  # type: ignore[arg-type]
            else:
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
            scheduler.step()
            self.global_step += 1
            step_vals = torch.cat([total.detach().reshape(1), terms]).double()
            assert sums is not None
            sums += step_vals
            bsz = batch_size_of(b)
            images += bsz
            win_images += bsz
            progress.advance()
            if self.global_step % cfg.log_every == 0:
                now = time.perf_counter()
                vec = torch.cat([step_vals, torch.tensor([float(win_images)], dtype=torch.float64, device=self.device)])
                all_reduce_sum(vec, ctx)
                vals = (vec[:-1] / ctx.world_size).tolist()
                ips = vec[-1].item() / max(now - win_t0, 1e-9)
                if not math.isfinite(vals[0]):
                    raise FloatingPointError(
                        f"non-finite loss at step {self.global_step} (epoch {epoch + i / steps:.3f}): "
                        f"{dict(zip(names, vals[1:]))}; lower train.lr or set train.grad_clip"
                    )
                rec = {
                    "type": "step",
                    "step": self.global_step,
                    "epoch": epoch + (i + 1) / steps,
                    "lr": lr,
                    "total": vals[0],
                    "losses": dict(zip(names, vals[1:])),
                    "images_per_s": ips,
                }
                mlog.write(rec)
                if writer is not None:
                    writer.add_scalar("train/total", vals[0], self.global_step)
                    for k, v in rec["losses"].items():
                        writer.add_scalar(f"train/{k}", v, self.global_step)
                    writer.add_scalar("train/lr", lr, self.global_step)
                    writer.add_scalar("train/images_per_s", ips, self.global_step)
                progress.info(_fmt_terms(rec["losses"], ips))
                win_images, win_t0 = 0, time.perf_counter()
            for cb in self.callbacks:
                cb.on_step_end(self, self.global_step)
        if n_batches != steps:
            raise ValueError(
                f"the train loader yielded {n_batches} batches in epoch {epoch} but len() said {steps}; "
                "len() must be exact (the lr schedule and DDP depend on it)"
            )
        elapsed = time.perf_counter() - t0
        assert sums is not None and names is not None
        vec = torch.cat([sums, torch.tensor([float(images)], dtype=torch.float64, device=self.device)])
        all_reduce_sum(vec, ctx)
        means = (vec[:-1] / (steps * ctx.world_size)).tolist()
        if not math.isfinite(means[0]):
            raise FloatingPointError(
                f"non-finite mean loss in epoch {epoch + 1}: {dict(zip(names, means[1:]))}; "
                "lower train.lr or set train.grad_clip"
            )
        self.epoch = epoch + 1
        rec = {
            "type": "epoch",
            "epoch": self.epoch,
            "step": self.global_step,
            "lr": last_lr,
            "total": means[0],
            "losses": dict(zip(names, means[1:])),
            "images": int(vec[-1].item()),
            "images_per_s": vec[-1].item() / max(elapsed, 1e-9),
            "time_s": elapsed,
        }
        mlog.write(rec)
        if writer is not None:
            writer.add_scalar("epoch/total", means[0], self.epoch)
            for k, v in rec["losses"].items():
                writer.add_scalar(f"epoch/{k}", v, self.epoch)
        progress.info(_fmt_terms(rec["losses"], rec["images_per_s"]))
        self._epoch_record = rec

    def _end_epoch(self, optimizer: torch.optim.Optimizer, scheduler: Any, mlog: _MetricsLog, writer: Any) -> None:
        cfg = self.config
        last = self.epoch == cfg.epochs
        train_rec = self._epoch_record
        entry: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.global_step,
            "lr": train_rec["lr"],
            "total": train_rec["total"],
            "losses": train_rec["losses"],
            "images": train_rec["images"],
            "images_per_s": train_rec["images_per_s"],
            "time_s": train_rec["time_s"],
        }
        if self.eval_loader is not None and (last or self.epoch % cfg.eval_every == 0):
            metrics = self._evaluate()
            self._update_best(metrics)
            entry["eval"] = metrics
            key = self.best_metric
            mlog.write(
                {
                    "type": "eval",
                    "epoch": self.epoch,
                    "step": self.global_step,
                    **metrics,
                    f"best_{key}": self.best.get(key),
                    "best_epoch": self.best_epoch,
                }
            )
            if writer is not None:
                for k, v in metrics.items():
                    writer.add_scalar(f"eval/{k}", v, self.epoch)
        self.history.append(entry)
        if last or self.epoch % cfg.checkpoint_every == 0:
            self._save(optimizer, scheduler)
        for cb in self.callbacks:
            cb.on_epoch_end(self, self.epoch, entry)
