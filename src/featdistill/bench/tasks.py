"""Suite ``tasks``: every built-in task, trained for real — teacher, student alone, KD (or output matching) and one
feature method — over three seeds, all through :func:`featdistill.run.run_experiment`.

Why one suite for all tasks: the task seam promises that a method means the same thing on every task (KD per
valid position, FitNets hints that skip padding, output matching for value-predicting tasks). Unit tests prove
the plumbing; only real runs show that distillation *does something sensible* on each task, and they are what
``docs/benchmarks.md`` reports.

Protocol (the same on every task): the teacher is trained per seed (so its randomness is part of the spread);
each student step starts from the same seeded initialisation and data order; every number is the task's
primary metric on the test split at the *last* epoch (no test-set model selection). The hyper-parameters in
:data:`TASK_SPECS` were chosen on the validation split (``data.val_fraction``, carved from train) with seed 0
(classification reuses the demo's, chosen the same way) and are then fixed across seeds; each row also
carries the last-epoch validation metric so the choice can be checked against what was selected on.

Token classification has no built-in dataset, so this module carries a small real one,
:func:`pystdlib_tags`: the Python standard library's source, BPE-tokenised as in ``pystdlib-lm``, every token
tagged with the lexical category Python's own :mod:`tokenize` gives the character it starts with (name,
keyword, operator, number, string, comment, layout). A word is a ``string`` inside a docstring and a ``name``
in code, so the tag depends on context, not only on the token — a real sequence-labelling problem, offline.
"""

from __future__ import annotations

import functools
import io
import keyword
import statistics
import tempfile
import time
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featdistill.bench import markdown_table, register_suite, write_atomic

__all__ = [
    "STEPS",
    "TASK_SPECS",
    "TAG_NAMES",
    "TaskSpec",
    "bench_tasks",
    "pystdlib_tags",
    "step_label",
    "task_configs",
    "verdict",
]

# ------------------------------------------------------------------------------------------------------
# a real offline token-classification dataset: lexical tags of Python source
# ------------------------------------------------------------------------------------------------------

#: tag ids in order; ``layout`` covers whitespace, newlines, indentation and the end-of-file token
TAG_NAMES: tuple[str, ...] = ("layout", "name", "keyword", "operator", "number", "string", "comment")
_TAG_OF_TYPE = {
    tokenize.OP: 3,
    tokenize.NUMBER: 4,
    tokenize.STRING: 5,
    tokenize.COMMENT: 6,
}
for _t in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END"):  # Python 3.12+ splits f-strings into parts
    if hasattr(tokenize, _t):
        _TAG_OF_TYPE[getattr(tokenize, _t)] = 5


def _char_tags(text: str) -> np.ndarray | None:
    """The lexical tag of every character of ``text`` (``None`` when Python cannot tokenize the file)."""
    lines = text.splitlines(keepends=True)
    starts = np.cumsum([0] + [len(line) for line in lines])
    tags = np.zeros(len(text), dtype=np.int64)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NAME:
                tag = 2 if keyword.iskeyword(tok.string) or keyword.issoftkeyword(tok.string) else 1
            else:
                tag = _TAG_OF_TYPE.get(tok.type, 0)
            if tag:
                (r0, c0), (r1, c1) = tok.start, tok.end
                tags[starts[r0 - 1] + c0 : starts[r1 - 1] + c1] = tag
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        return None
    return tags


def _token_tags(text: str, offsets: list[tuple[int, int]], char_tags: np.ndarray) -> np.ndarray:
    """A BPE token's tag is the tag of its first non-space character (``layout`` when it is all whitespace)."""
    out = np.zeros(len(offsets), dtype=np.int64)
    for i, (s, e) in enumerate(offsets):
        for j in range(s, e):
            if not text[j].isspace():
                out[i] = char_tags[j]
                break
    return out


@functools.lru_cache(maxsize=4)
def _tag_splits(seq_len: int, vocab_size: int, max_chars: int, test_fraction: float, seed: int) -> tuple[Any, Any]:
    """Both splits at once (cached: a config builds train and test separately, the tokenizer is trained once)."""
    from featdistill.data.arrays import ArrayDataset
    from featdistill.data.text import EOS_ID, PAD_ID, _split_files, _windows, read_stdlib_corpus, train_tokenizer

    corpus = read_stdlib_corpus(max_chars)
    usable = tuple((rel, text) for rel, text in corpus.files if _char_tags(text) is not None)
    train_files, test_files = _split_files(usable, test_fraction, seed, "pystdlib-tags-split")
    tok = train_tokenizer([t for _, t in train_files], vocab_size, seed)
    out = []
    for name, files in (("train", train_files), ("test", test_files)):
        ids_parts, tag_parts = [], []
        for (_, text), enc in zip(files, tok.encode_batch([t for _, t in files])):
            char_tags = _char_tags(text)
            assert char_tags is not None  # unusable files were dropped above
            ids_parts += [np.asarray(enc.ids, dtype=np.int64), np.asarray([EOS_ID], dtype=np.int64)]
            tag_parts += [_token_tags(text, enc.offsets, char_tags), np.zeros(1, dtype=np.int64)]
        ids, mask = _windows(np.concatenate(ids_parts), seq_len, seq_len)
        tags, _ = _windows(np.concatenate(tag_parts), seq_len, seq_len)
        labels = torch.where(mask.bool(), tags, torch.full_like(tags, -100))
        info = {
            "vocab_size": tok.get_vocab_size(),
            "pad_token_id": PAD_ID,
            "seq_len": seq_len,
            "corpus_sha256": corpus.sha256,
            "files": len(files),
            "split": name,
        }
        out.append(
            ArrayDataset(
                {"input_ids": ids, "attention_mask": mask},
                labels,
                name=f"pystdlib-tags-{name}",
                target_kind="tokens",
                classes=list(TAG_NAMES),
                ignore_index=-100,
                info=info,
            )
        )
    return out[0], out[1]


def pystdlib_tags(
    split: str = "train",
    seq_len: int = 64,
    vocab_size: int = 1024,
    max_chars: int = 400_000,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Any:
    """Token classification on the stdlib's source: each BPE token tagged with its Python lexical category.

    Files are split by file (test files are never seen in training, as in ``pystdlib-lm``), the tokenizer is
    trained on the train files, files that Python cannot tokenize are dropped, and each split's token stream is
    cut into windows of ``seq_len`` (``<eos>`` between files, tagged ``layout``; padding of the last window is
    -100 and masked). Use it as ``data.train`` / ``data.test``:
    ``{class_path: featdistill.bench.tasks:pystdlib_tags, init_args: {split: train}}``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"pystdlib_tags: split must be 'train' or 'test', got {split!r}")
    train, test = _tag_splits(int(seq_len), int(vocab_size), int(max_chars), float(test_fraction), int(seed))
    return train if split == "train" else test


# ------------------------------------------------------------------------------------------------------
# the experiments
# ------------------------------------------------------------------------------------------------------


def _bert(hidden: int, layers: int, heads: int, seq_len: int) -> dict[str, Any]:
    return {
        "hf": {
            "config": {
                "model_type": "bert",
                "hidden_size": hidden,
                "num_hidden_layers": layers,
                "num_attention_heads": heads,
                "intermediate_size": 4 * hidden,
                "max_position_embeddings": seq_len,
            }
        }
    }


def _gpt2(embd: int, layers: int, heads: int, seq_len: int) -> dict[str, Any]:
    return {
        "hf": {
            "config": {"model_type": "gpt2", "n_embd": embd, "n_layer": layers, "n_head": heads, "n_positions": seq_len}
        }
    }


@dataclass(frozen=True)
class TaskSpec:
    """One task's experiment: data, the shared train settings, the two models and the two distillation steps.

    ``epochs`` are (teacher, student) epochs; ``quick`` overrides data and epochs for ``--quick``. ``distill``
    is the logit step (``kd``) or, for value-predicting tasks, output matching; ``feature`` the feature step.
    ``chosen`` says how the hyper-parameters were picked (copied into the markdown).
    """

    task: str
    dataset: str
    data: dict[str, Any]
    train: dict[str, Any]
    teacher: dict[str, Any]
    student: dict[str, Any]
    epochs: tuple[int, int]
    distill: dict[str, Any]
    feature: dict[str, Any]
    feature_label: str
    chosen: str
    quick_data: dict[str, Any] = field(default_factory=dict)
    quick_epochs: tuple[int, int] = (1, 1)
    #: train settings of the teacher step only (e.g. its own learning rate: a wide net diverges where a thin
    #: one needs a large step); every student step shares ``train``
    teacher_train: dict[str, Any] = field(default_factory=dict)
    #: what a reader of the table must know about the data (printed under the task's table)
    note: str = ""


_ADAMW = {"optimizer": "adamw", "weight_decay": 0.0, "schedule": "cosine"}
_SEQ = 64
_TAG_CHARS = 800_000
_BERT_HINT = {"student_path": "bert.encoder.layer.0", "teacher_path": "bert.encoder.layer.1"}
_GPT2_HINT = {"student_path": "transformer.h.0", "teacher_path": "transformer.h.1"}
_TEXT_VAL = (
    "Validation windows come from the *train files* (the split is carved per window), test from unseen files, so "
    "validation scores read much better than test"
)
_RULE = (
    "seed 0, last-epoch validation metric: learning rates (teacher and student alone, separately) from a ×3 grid, "
    "then the distill step's weight/temperature and the feature weight from a small grid"
)


def _kd(temperature: float, weight: float) -> dict[str, Any]:
    return {"name": "kd", "params": {"temperature": temperature}, "weights": {"kd": weight}}


def _output(weight: float) -> dict[str, Any]:
    return {"name": "output", "weights": {"output": weight}}


def _fitnet(weight: float, paths: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"name": "fitnet", "params": dict(paths or {}), "weights": {"hint": weight}}


def _step(*parts: dict[str, Any]) -> dict[str, Any]:
    """A method section: one part as is, several as ``compose``; the task loss always keeps weight 1."""
    if len(parts) == 1:
        return {**parts[0], "ce_weight": 1.0}
    return {"name": "compose", "params": {"parts": list(parts)}, "ce_weight": 1.0}


TASK_SPECS: dict[str, TaskSpec] = {
    s.task: s
    for s in (
        TaskSpec(
            task="classification",
            dataset="mnist5k",
            data={"name": "mnist5k", "batch_size": 64, "augment": {"pad_crop": 2}},
            train={"optimizer": "sgd", "lr": 0.05, "schedule": "cosine", "weight_decay": 5e-4},
            teacher={"model": "convnet", "kwargs": {"width": 64, "depth": 3, "norm": "batchnorm"}},
            student={"model": "convnet", "kwargs": {"width": 4, "depth": 3, "norm": "batchnorm"}},
            epochs=(6, 8),
            distill=_step(_kd(4.0, 1.0)),
            feature=_step(_kd(4.0, 1.0), _fitnet(1.0)),
            feature_label="kd + fitnet",
            chosen="the demo's protocol and settings (chosen on the validation split by scripts/tune_demo.py, 3 seeds)",
            quick_data={"subset": 600},
        ),
        TaskSpec(
            task="segmentation",
            dataset="shapes-seg",
            data={
                "name": "shapes-seg",
                "kwargs": {"n": 1600, "size": 24},
                "batch_size": 32,
                "augment": {"pad_crop": 2, "flip": True},
            },
            train={**_ADAMW, "lr": 0.003},
            teacher={"model": "segnet", "kwargs": {"width": 16}},
            student={"model": "segnet", "kwargs": {"width": 8}},
            epochs=(15, 15),
            distill=_step(_kd(4.0, 0.5)),
            feature=_step(_kd(4.0, 0.5), _fitnet(0.1)),
            feature_label="kd + fitnet",
            chosen=f"{_RULE} (one lr for both: 0.003 lifted the teacher from 0.46 to 0.62 val mIoU)",
            quick_data={"kwargs": {"n": 160, "size": 16}},
        ),
        TaskSpec(
            task="sequence-classification",
            dataset="pystdlib-cls",
            data={
                "name": "pystdlib-cls",
                "kwargs": {"seq_len": _SEQ, "max_chars_per_class": 200_000, "vocab_size": 1024},
                "batch_size": 32,
            },
            train={**_ADAMW, "lr": 0.005},
            teacher_train={"lr": 0.002},
            teacher=_bert(64, 2, 2, _SEQ),
            student=_bert(16, 1, 2, _SEQ),
            epochs=(6, 6),
            distill=_step(_kd(4.0, 0.5)),
            feature=_step(_kd(4.0, 0.5), _fitnet(10.0, _BERT_HINT)),
            feature_label="kd + fitnet",
            chosen=_RULE,
            quick_data={"kwargs": {"seq_len": 32, "max_chars_per_class": 30_000, "vocab_size": 512}},
            note=_TEXT_VAL,
        ),
        TaskSpec(
            task="token-classification",
            dataset="pystdlib-tags",
            data={
                "train": {
                    "class_path": "featdistill.bench.tasks:pystdlib_tags",
                    "init_args": {"split": "train", "seq_len": _SEQ, "max_chars": _TAG_CHARS},
                },
                "test": {
                    "class_path": "featdistill.bench.tasks:pystdlib_tags",
                    "init_args": {"split": "test", "seq_len": _SEQ, "max_chars": _TAG_CHARS},
                },
                "batch_size": 32,
            },
            train={**_ADAMW, "lr": 0.04},
            teacher_train={"lr": 0.005},
            teacher=_bert(64, 2, 2, _SEQ),
            student=_bert(16, 1, 2, _SEQ),
            epochs=(10, 10),
            distill=_step(_kd(1.0, 1.0)),
            feature=_step(_kd(1.0, 1.0), _fitnet(1.0, _BERT_HINT)),
            feature_label="kd + fitnet",
            chosen=_RULE,
            note=(
                "pystdlib-tags is this suite's own dataset (`featdistill.bench.tasks:pystdlib_tags`, a user dataset "
                "through `data.train`/`data.test`): stdlib source, each BPE token tagged with its Python lexical "
                "category (7 tags); a majority-tag-per-token lookup scores 0.571 on test, so the rest needs context. "
                + _TEXT_VAL
            ),
            quick_data={
                "train": {
                    "class_path": "featdistill.bench.tasks:pystdlib_tags",
                    "init_args": {"split": "train", "seq_len": 32, "max_chars": 60_000, "vocab_size": 512},
                },
                "test": {
                    "class_path": "featdistill.bench.tasks:pystdlib_tags",
                    "init_args": {"split": "test", "seq_len": 32, "max_chars": 60_000, "vocab_size": 512},
                },
            },
        ),
        TaskSpec(
            task="causal-lm",
            dataset="pystdlib-lm",
            data={
                "name": "pystdlib-lm",
                "kwargs": {"seq_len": _SEQ, "max_chars": 400_000, "vocab_size": 1024},
                "batch_size": 32,
            },
            train={**_ADAMW, "lr": 0.02},
            teacher_train={"lr": 0.005},
            teacher=_gpt2(64, 2, 2, _SEQ),
            student=_gpt2(16, 1, 2, _SEQ),
            epochs=(8, 8),
            distill=_step(_kd(1.0, 1.0)),
            feature=_step(_kd(1.0, 1.0), _fitnet(1.0, _GPT2_HINT)),
            feature_label="kd + fitnet",
            chosen=_RULE,
            quick_data={"kwargs": {"seq_len": 32, "max_chars": 60_000, "vocab_size": 512}, "subset": 128},
            note=_TEXT_VAL,
        ),
        TaskSpec(
            task="regression",
            dataset="sunspots",
            data={"name": "sunspots", "kwargs": {"window": 24, "horizon": 4, "test_history": True}, "batch_size": 32},
            train={**_ADAMW, "lr": 0.01},
            teacher={"model": "forecaster", "kwargs": {"hidden": [128, 128]}},
            student={"model": "forecaster", "kwargs": {"hidden": [4]}},
            epochs=(100, 100),
            distill=_step(_output(3.0)),
            feature=_step(_output(1.0), {"name": "cka", "weights": {"cka": 1.0}}),
            feature_label="output + cka",
            chosen=f"{_RULE} (the feature grid: FitNets 0.1/1 and CKA 1, with and without the task loss)",
            quick_epochs=(5, 5),
            note=(
                "59 test windows (`test_history`: inputs may reach back into the train years) from 1947–2008, the "
                "strongest cycles on record, so test MSE on the train-standardised scale is far above validation"
            ),
        ),
        TaskSpec(
            task="image-to-image",
            dataset="mnist5k-sr",
            data={"name": "mnist5k-sr", "batch_size": 64},
            train={**_ADAMW, "lr": 0.01},
            teacher_train={"lr": 0.001},
            teacher={"model": "srnet", "kwargs": {"width": 32, "depth": 3}},
            student={"model": "srnet", "kwargs": {"width": 4, "depth": 1}},
            epochs=(8, 8),
            distill=_step(_output(0.3)),
            feature=_step(_output(1.0), _fitnet(0.01)),
            feature_label="output + fitnet",
            chosen=f"{_RULE} (feature grid: FitNets 1/0.1/0.01/0.001, CKA 1, AT 10)",
            quick_data={"subset": 400},
        ),
    )
}


STEPS: tuple[str, ...] = ("teacher", "student", "distill", "feature")


def _method(spec: TaskSpec, step: str) -> dict[str, Any]:
    if step == "distill":
        return spec.distill
    if step == "feature":
        return spec.feature
    return {"name": "none"}


def step_label(spec: TaskSpec, step: str) -> str:
    """What the tables call a step: ``teacher``, ``student alone``, ``kd`` / ``output``, the feature method."""
    return {
        "teacher": "teacher",
        "student": "student alone",
        "distill": str(spec.distill["name"]),
        "feature": spec.feature_label,
    }[step]


def task_configs(spec: TaskSpec, out_dir: Path, seed: int, quick: bool = False) -> dict[str, Any]:
    """The four :class:`~featdistill.config.ExperimentConfig` of one task and seed, keyed by :data:`STEPS` (run
    them in that order: the student steps read the teacher step's ``student.safetensors``)."""
    from featdistill.config import parse_config

    epochs_t, epochs_s = spec.quick_epochs if quick else spec.epochs
    data = {"val_fraction": 0.1, **spec.data, **(spec.quick_data if quick else {})}
    base_train = {**spec.train, "progress": False, "seed": seed, "log_every": 50}
    ckpt = str(out_dir / "teacher" / "student.safetensors")
    cfgs = {}
    for step in STEPS:
        if step == "teacher":
            model, train = spec.teacher, {**base_train, **spec.teacher_train, "epochs": epochs_t}
        else:
            model, train = spec.student, {**base_train, "epochs": epochs_s}
        raw: dict[str, Any] = {
            "experiment": f"tasks-{spec.task}-{step}",
            "seed": seed,
            "run_dir": str(out_dir / step),
            "task": spec.task,
            "data": data,
            "student": model,
            "method": _method(spec, step),
            "train": train,
        }
        if step in ("distill", "feature"):
            raw["teacher"] = {**spec.teacher, "checkpoint": ckpt}
        cfgs[step] = parse_config(raw)
    return cfgs


def _describe(model: Mapping[str, Any]) -> str:
    """``segnet(width=16)``, ``bert(d=64, L=2)``: enough to tell teacher from student in a table."""
    if "model" in model:
        kw = ", ".join(f"{k}={v}" for k, v in model.get("kwargs", {}).items() if k != "norm")
        return f"{model['model']}({kw})"
    c = dict(model["hf"]["config"])
    short = {"hidden_size": "d", "n_embd": "d", "num_hidden_layers": "L", "n_layer": "L"}
    return f"{c['model_type']}(" + ", ".join(f"{short[k]}={v}" for k, v in c.items() if k in short) + ")"


def _count_params(cfg: Any) -> int:
    """Trainable parameters of a config's student, built for its data exactly as the run built it."""
    from featdistill.models.profile import count_parameters
    from featdistill.run import build_model, data_meta, load_data

    train_set, _ = load_data(cfg)
    return count_parameters(build_model(cfg.student, data_meta(cfg, train_set), cfg.seed, "profile"))


def _fmt(v: float, scale: float | None = None) -> str:
    """4 decimals below 10, 2 below 1000, else none; ``scale`` picks the precision (a std takes its mean's)."""
    a = abs(v if scale is None else scale)
    return f"{v:.4f}" if a < 10 else f"{v:.2f}" if a < 1000 else f"{v:.0f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@register_suite("tasks", threads=1)
def bench_tasks(out_dir: Path, quick: bool) -> list[dict[str, Any]]:
    """Every task × (teacher, student alone, kd/output, feature) × seeds; writes ``tasks.md`` itself.

    Run directories (checkpoints, plots) go to a temporary folder that is removed at the end: the suite's
    output is the numbers in ``tasks.json``/``tasks.md``, and a rerun never meets a stale run directory.
    One thread (:func:`register_suite`): measured on the 2-core CPU, these small nets are as fast or faster
    with one thread, and a second thread spinning against any other process slows a run up to 10×.
    """
    from featdistill.run import run_experiment
    from featdistill.tasks import TASKS

    seeds = [0] if quick else [0, 1, 2]
    rows: list[dict[str, Any]] = []
    task_seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featdistill-bench-tasks-") as tmp:
        for spec in TASK_SPECS.values():
            t_task = time.perf_counter()
            task_cls = TASKS[spec.task]
            metric = task_cls.primary_metric
            results: dict[str, list[Any]] = {s: [] for s in STEPS}
            params: dict[str, int] = {}
            for seed in seeds:
                cfgs = task_configs(spec, Path(tmp) / spec.task / f"seed{seed}", seed, quick)
                for step, cfg in cfgs.items():
                    results[step].append(run_experiment(cfg, progress=False))
                    if step in ("teacher", "student") and step not in params:
                        params[step] = _count_params(cfg)
            task_seconds[spec.task] = time.perf_counter() - t_task
            for step in STEPS:
                rs = results[step]
                test = [float(r.test_primary) for r in rs]
                val = [float((r.val or {}).get(metric, float("nan"))) for r in rs]
                mean, std = _mean_std(test)
                role = "teacher" if step == "teacher" else "student"
                rows.append(
                    {
                        "task": spec.task,
                        "dataset": spec.dataset,
                        "step": step_label(spec, step),
                        "model": _describe(spec.teacher if role == "teacher" else spec.student),
                        "params": params[role],
                        "epochs": (spec.quick_epochs if quick else spec.epochs)[0 if role == "teacher" else 1],
                        "metric": metric,
                        "better": "higher" if task_cls.primary_mode == "max" else "lower",
                        "seeds": seeds,
                        "test": [round(v, 4) for v in test],
                        "test_mean": round(mean, 4),
                        "test_std": round(std, 4),
                        "val_mean": round(statistics.mean(val), 4),
                        "train_seconds_mean": round(statistics.mean(r.train_seconds for r in rs), 1),
                        "task_seconds": round(task_seconds[spec.task], 1),
                        "method": _method(spec, step),
                    }
                )
    write_atomic(out_dir / "tasks.md", _markdown(rows, quick, time.perf_counter() - t_all))
    return rows


def verdict(rows: list[dict[str, Any]]) -> str:
    """One sentence per distilled step of a task: does it at least match the student alone (test means)?"""
    alone = next(r for r in rows if r["step"] == "student alone")
    sign = 1.0 if alone["better"] == "higher" else -1.0
    parts = []
    for r in rows:
        if r["step"] in ("teacher", "student alone"):
            continue
        gain = sign * (r["test_mean"] - alone["test_mean"])
        noise = max(r["test_std"], alone["test_std"])
        if gain >= 0:
            word = "matches or beats" if gain <= noise else "beats"
        else:
            word = "falls below, within one std of," if -gain <= noise else "falls below"
        delta = r["test_mean"] - alone["test_mean"]
        parts.append(
            f"**{r['step']}** {word} the student alone ({_fmt(r['test_mean'])} vs {_fmt(alone['test_mean'])}, "
            f"{'+' if delta >= 0 else '−'}{_fmt(abs(delta), alone['test_mean'])})"
        )
    return "; ".join(parts)


def _markdown(rows: list[dict[str, Any]], quick: bool, seconds: float) -> str:
    n_seeds = len(rows[0]["seeds"]) if rows else 0
    lines = [
        "# Benchmark suite `tasks`",
        "",
        "Every built-in task: teacher, student alone, KD (output matching for value-predicting tasks) and one "
        f"feature method; {n_seeds} seed(s), the teacher trained per seed. Test metric at the last epoch, mean ± "
        "sample std; `val` is the last-epoch validation metric (the split carved from train, used to choose the "
        "hyper-parameters with seed 0); `train s` is the mean training time of one run.",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        spec = TASK_SPECS[task]
        arrow = "↑" if rs[0]["better"] == "higher" else "↓"
        table = [
            {
                "step": r["step"],
                "model": r["model"],
                "params": f"{r['params']:,}",
                "epochs": r["epochs"],
                f"test {r['metric']} {arrow}": f"{_fmt(r['test_mean'])} ± {_fmt(r['test_std'], r['test_mean'])}",
                "per seed": ", ".join(_fmt(v) for v in r["test"]),
                "val": _fmt(r["val_mean"]),
                "train s": r["train_seconds_mean"],
            }
            for r in rs
        ]
        lines += [
            f"## {task} — {spec.dataset} ({rs[0]['task_seconds']:.0f} s)",
            "",
            markdown_table(table).rstrip("\n"),
            "",
            f"Chosen: {spec.chosen}. {verdict(rs)}.",
            "",
        ]
        if spec.note:
            lines += [f"Note: {spec.note}.", ""]
    lines.append(f"Suite wall time: {seconds:.0f} s{' (quick)' if quick else ''}.")
    return "\n".join(lines) + "\n"
