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
and are then fixed across seeds; each row also carries the last-epoch validation metric so the choice can be
checked against what was selected on.

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
import time
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featdistill.bench import markdown_table, register_suite, write_atomic

__all__ = ["TASK_SPECS", "TaskSpec", "TAG_NAMES", "bench_tasks", "pystdlib_tags", "task_configs"]

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


_ADAMW = {"optimizer": "adamw", "weight_decay": 0.0, "schedule": "cosine"}


def _kd(temperature: float, weight: float) -> dict[str, Any]:
    return {"name": "kd", "params": {"temperature": temperature}, "weights": {"kd": weight}, "ce_weight": 1.0}


_KD = _kd(4.0, 1.0)


def _kd_plus(hint: dict[str, Any], distill: dict[str, Any] = _KD) -> dict[str, Any]:
    """``compose`` of the distill step (without its ce_weight) and a FitNets hint."""
    part = {k: v for k, v in distill.items() if k != "ce_weight"}
    return {"name": "compose", "params": {"parts": [part, {"name": "fitnet", **hint}]}, "ce_weight": 1.0}


_SEQ = 64
_TAG_CHARS = 800_000
_OUTPUT = {"name": "output", "weights": {"output": 1.0}, "ce_weight": 1.0}

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
            distill=_KD,
            feature=_kd_plus({"weights": {"hint": 1.0}}),
            feature_label="kd + fitnet",
            chosen="the demo's settings (scripts/tune_demo.py, validation split, 3 seeds)",
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
            distill=_kd(4.0, 0.5),
            feature=_kd_plus({"weights": {"hint": 0.1}}, _kd(4.0, 0.5)),
            feature_label="kd + fitnet",
            chosen="TODO",
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
            distill=_kd(4.0, 0.5),
            feature=_kd_plus(
                {
                    "params": {"student_path": "bert.encoder.layer.0", "teacher_path": "bert.encoder.layer.1"},
                    "weights": {"hint": 10.0},
                },
                _kd(4.0, 0.5),
            ),
            feature_label="kd + fitnet",
            chosen="TODO",
            quick_data={"kwargs": {"seq_len": 32, "max_chars_per_class": 30_000, "vocab_size": 512}},
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
            train={**_ADAMW, "lr": 0.002},
            teacher=_bert(64, 2, 2, _SEQ),
            student=_bert(16, 1, 2, _SEQ),
            epochs=(6, 6),
            distill=_KD,
            feature=_kd_plus(
                {
                    "params": {"student_path": "bert.encoder.layer.0", "teacher_path": "bert.encoder.layer.1"},
                    "weights": {"hint": 1.0},
                }
            ),
            feature_label="kd + fitnet",
            chosen="TODO",
        ),
        TaskSpec(
            task="causal-lm",
            dataset="pystdlib-lm",
            data={
                "name": "pystdlib-lm",
                "kwargs": {"seq_len": _SEQ, "max_chars": 400_000, "vocab_size": 1024},
                "batch_size": 32,
            },
            train={**_ADAMW, "lr": 0.003},
            teacher=_gpt2(64, 2, 2, _SEQ),
            student=_gpt2(16, 1, 2, _SEQ),
            epochs=(4, 4),
            distill=_KD,
            feature=_kd_plus(
                {
                    "params": {"student_path": "transformer.h.0", "teacher_path": "transformer.h.1"},
                    "weights": {"hint": 1.0},
                }
            ),
            feature_label="kd + fitnet",
            chosen="TODO",
            quick_data={"kwargs": {"seq_len": 32, "max_chars": 60_000, "vocab_size": 512}, "subset": 128},
        ),
        TaskSpec(
            task="regression",
            dataset="sunspots",
            data={"name": "sunspots", "kwargs": {"window": 24, "horizon": 4, "test_history": True}, "batch_size": 32},
            train={**_ADAMW, "lr": 0.003},
            teacher={"model": "forecaster", "kwargs": {"hidden": [128, 128]}},
            student={"model": "forecaster", "kwargs": {"hidden": [4]}},
            epochs=(100, 100),
            distill=_OUTPUT,
            feature=_kd_plus({"weights": {"hint": 1.0}}, _OUTPUT),
            feature_label="output + fitnet",
            chosen="TODO",
        ),
        TaskSpec(
            task="image-to-image",
            dataset="mnist5k-sr",
            data={"name": "mnist5k-sr", "batch_size": 64, "subset": 2000},
            train={**_ADAMW, "lr": 0.003},
            teacher={"model": "srnet", "kwargs": {"width": 32, "depth": 3}},
            student={"model": "srnet", "kwargs": {"width": 4, "depth": 1}},
            epochs=(4, 4),
            distill=_OUTPUT,
            feature=_kd_plus({"weights": {"hint": 1.0}}, _OUTPUT),
            feature_label="output + fitnet",
            chosen="TODO",
            quick_data={"subset": 400},
        ),
    )
}


def _method(spec: TaskSpec, step: str) -> dict[str, Any]:
    return {"teacher": {"name": "none"}, "student": {"name": "none"}, "distill": spec.distill, "feature": spec.feature}[
        step
    ]


STEPS: tuple[str, ...] = ("teacher", "student", "distill", "feature")


def step_label(spec: TaskSpec, step: str) -> str:
    """What the tables call a step: ``teacher``, ``student alone``, ``kd`` / ``output``, the feature method."""
    return {
        "teacher": "teacher",
        "student": "student alone",
        "distill": spec.distill["name"],
        "feature": spec.feature_label,
    }[step]


def task_configs(spec: TaskSpec, out_dir: Path, seed: int, quick: bool = False) -> dict[str, Any]:
    """The four :class:`~featdistill.config.ExperimentConfig` of one task and seed (run in :data:`STEPS` order:
    the student steps read the teacher's ``student.safetensors``)."""
    from featdistill.config import parse_config

    epochs_t, epochs_s = spec.quick_epochs if quick else spec.epochs
    data = {"val_fraction": 0.1, **spec.data, **(spec.quick_data if quick else {})}
    base_train = {**spec.train, "progress": False, "seed": seed, "log_every": 50}
    ckpt = str(out_dir / "teacher" / "student.safetensors")
    cfgs = {}
    for step in STEPS:
        model = spec.teacher if step == "teacher" else spec.student
        raw: dict[str, Any] = {
            "experiment": f"tasks-{spec.task}-{step}",
            "seed": seed,
            "run_dir": str(out_dir / step),
            "task": spec.task,
            "data": data,
            "student": model,
            "method": _method(spec, step),
            "train": {**base_train, **spec.teacher_train, "epochs": epochs_t}
            if step == "teacher"
            else {**base_train, "epochs": epochs_s},
        }
        if step in ("distill", "feature"):
            raw["teacher"] = {**spec.teacher, "checkpoint": ckpt}
        cfgs[step] = parse_config(raw)
    return cfgs


def _describe(model: Mapping[str, Any]) -> str:
    if "model" in model:
        kw = ", ".join(f"{k}={v}" for k, v in model.get("kwargs", {}).items() if k != "norm")
        return f"{model['model']}({kw})"
    c = dict(model["hf"]["config"])
    kind = c.pop("model_type")
    short = {"hidden_size": "d", "n_embd": "d", "num_hidden_layers": "L", "n_layer": "L"}
    return f"{kind}(" + ", ".join(f"{short[k]}={v}" for k, v in c.items() if k in short) + ")"


def _count_params(cfg: Any) -> int:
    from featdistill.models.profile import count_parameters
    from featdistill.run import build_data, build_model, data_meta

    train_set = build_data(cfg)[0]
    return count_parameters(build_model(cfg.student, data_meta(cfg, train_set), cfg.seed, "profile"))


def _fmt(v: float) -> str:
    a = abs(v)
    return f"{v:.4f}" if a < 10 else f"{v:.2f}" if a < 1000 else f"{v:.0f}"


@register_suite("tasks", threads=1)
def bench_tasks(out_dir: Path, quick: bool) -> list[dict[str, Any]]:
    """Every task × (teacher, student alone, kd/output, feature) × seeds; writes ``tasks.md`` itself."""
    from featdistill.run import run_experiment
    from featdistill.tasks import TASKS

    seeds = [0] if quick else [0, 1, 2]
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for spec in TASK_SPECS.values():
        mode = TASKS[spec.task].primary_mode
        metric = TASKS[spec.task].primary_metric
        per_step: dict[str, list[Any]] = {s: [] for s in STEPS}
        params: dict[str, int] = {}
        for seed in seeds:
            cfgs = task_configs(spec, out_dir / spec.task / f"seed{seed}", seed, quick)
            for step, cfg in cfgs.items():
                res = run_experiment(cfg, progress=False)
                per_step[step].append(res)
                if step in ("teacher", "student") and step not in params:
                    params[step] = _count_params(cfg)
        for step in STEPS:
            rs = per_step[step]
            vals = [float(r.test_primary) for r in rs]
            vals_val = [float((r.val or {}).get(metric, float("nan"))) for r in rs]
            model = spec.teacher if step == "teacher" else spec.student
            rows.append(
                {
                    "task": spec.task,
                    "dataset": spec.dataset,
                    "step": step_label(spec, step),
                    "model": _describe(model),
                    "params": params["teacher" if step == "teacher" else "student"],
                    "metric": metric,
                    "better": "higher" if mode == "max" else "lower",
                    "seeds": seeds,
                    "test": [round(v, 4) for v in vals],
                    "test_mean": round(statistics.mean(vals), 4),
                    "test_std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
                    "val_mean": round(statistics.mean(vals_val), 4),
                    "train_seconds_mean": round(statistics.mean(r.train_seconds for r in rs), 1),
                    "epochs": (spec.quick_epochs if quick else spec.epochs)[0 if step == "teacher" else 1],
                }
            )
    write_atomic(out_dir / "tasks.md", _markdown(rows, quick, time.perf_counter() - t_all))
    return rows


def _verdict(rows: list[dict[str, Any]]) -> str:
    """Does each distilled student at least match the student alone (means; within one std says so)?"""
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
            word = "falls below (within one std of)" if -gain <= noise else "falls below"
        parts.append(f"{r['step']} {word} the student alone ({_fmt(r['test_mean'])} vs {_fmt(alone['test_mean'])})")
    return "; ".join(parts)


def _markdown(rows: list[dict[str, Any]], quick: bool, seconds: float) -> str:
    lines = [
        "# Benchmark suite `tasks`",
        "",
        "Every built-in task: teacher, student alone, KD (output matching for value-predicting tasks) and one feature "
        f"method, {'1 seed (quick)' if quick else '3 seeds (teacher trained per seed)'}; test metric at the last "
        "epoch, mean ± sample std. Hyper-parameters chosen on the validation split with seed 0, then fixed.",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        spec = TASK_SPECS[task]
        table = [
            {
                "step": r["step"],
                "model": r["model"],
                "params": f"{r['params']:,}",
                "epochs": r["epochs"],
                f"test {r['metric']} ({'↑' if r['better'] == 'higher' else '↓'})": (
                    f"{_fmt(r['test_mean'])} ± {_fmt(r['test_std'])}"
                ),
                "per seed": ", ".join(_fmt(v) for v in r["test"]),
                f"val {r['metric']}": _fmt(r["val_mean"]),
                "train s": r["train_seconds_mean"],
            }
            for r in rs
        ]
        lines += [
            f"## {task} — {spec.dataset}",
            "",
            markdown_table(table).rstrip("\n"),
            "",
            f"Hyper-parameters: {spec.chosen}. {_verdict(rs)}.",
            "",
        ]
    lines.append(f"Suite wall time: {seconds:.0f} s.")
    return "\n".join(lines) + "\n"
