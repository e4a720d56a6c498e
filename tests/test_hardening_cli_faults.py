"""Hardening (#10), the fault corpus: bad inputs through the CLI → exit 2, one message naming the culprit, no
traceback, bounded time and memory.  ``--debug`` shows the traceback; internal errors keep theirs.

Every case is ``(command, what the file holds / the config change, a word the message must contain)``.  The
counts by outcome are in docs/reliability.md; the test at the end keeps that table honest.
"""

from __future__ import annotations

import copy
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from featdistill.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _bomb() -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


#: raw files (the same for train, cache and condense): (name, bytes, culprit)
RAW: list[tuple[str, bytes, str]] = [
    ("bomb", _bomb().encode(), "alias bomb"),
    ("duplicate-key", b"seed: 1\nstudent: {model: mlp}\nseed: 2\n", "duplicate key 'seed' at lines 1 and 3"),
    ("python-tag", b"experiment: !!python/object/apply:os.system ['echo pwned']\n", "!!python/object/apply"),
    ("python-name", b"seed: !!python/name:os.system\n", "!!python/name"),
    ("custom-tag", b"seed: !include other.yaml\n", "!include"),
    ("binary", bytes(range(256)) * 8, "binary file"),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary file"),
    ("latin-1", b"experiment: caf\xe9\n", "not UTF-8"),
    ("syntax", b"data: {name: digits\nstudent: [\n", "not valid YAML"),
    ("tab-indent", b"data:\n\tname: digits\n", "not valid YAML"),
    ("deep-flow", b"[" * 5000 + b"]" * 5000, "nested deeper than 64"),
    ("deep-block", ("a: " + "{b: " * 100 + "1" + "}" * 100).encode(), "nested deeper than 64"),
    ("recursive", b"a: &a [*a]\n", "recursive"),
    ("oversized", b"x: '" + b"a" * (1 << 20) + b"'\n", "1,048,576"),
    ("top-level-list", b"- 1\n- 2\n", "top level"),
    ("top-level-scalar", b"just a string\n", "top level"),
]
RAW_COMMANDS = ["train", "cache", "condense"]


@pytest.fixture(scope="module", autouse=True)
def _warm(tmp_path_factory) -> None:
    """Import what each command imports once, so the time bound measures the refusal, not first imports."""
    p = tmp_path_factory.mktemp("warm") / "x.yaml"
    p.write_text("seed: [\n")
    for command in RAW_COMMANDS:
        main([command, str(p)])
    import featdistill.cache  # noqa: F401
    import featdistill.condense  # noqa: F401


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from featdistill.models import build_model
    from featdistill.seeding import seeded

    d = tmp_path_factory.mktemp("teacher")
    with seeded(0, "t"):
        t = build_model("convnet", num_classes=10, in_channels=1, image_size=8, width=8, depth=2)
    save_file(t.state_dict(), str(d / "teacher.safetensors"))
    (d / "junk.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    (d / "pickle.pt").write_bytes(
        b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94."
    )
    return d / "teacher.safetensors"


def _base(tmp_path: Path) -> dict[str, Any]:
    return {
        "run_dir": str(tmp_path / "run"),
        "data": {"name": "digits", "batch_size": 64, "subset": 100},
        "student": {"model": "mlp", "kwargs": {"hidden": [16]}},
        "method": {"name": "none"},
        "train": {"epochs": 1, "lr": 0.1, "progress": False},
    }


def _kd(tmp_path: Path, ckpt: Path) -> dict[str, Any]:
    return {
        **_base(tmp_path),
        "teacher": {"model": "convnet", "kwargs": {"width": 8, "depth": 2}, "checkpoint": str(ckpt)},
        "method": {"name": "kd"},
        "cache": {"num_views": 1, "batch_size": 100, "out": str(tmp_path / "store")},
    }


def _set(cfg: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    node = cfg
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DEL:
        node.pop(last, None)
    else:
        node[last] = value
    return cfg


_DEL = object()
J = "{ckpt_dir}"  # replaced by the teacher checkpoint's folder

#: (command, base, key, value, culprit) — a config that parses but holds one bad value
VALUES: list[tuple[str, str, str, Any, str]] = [
    ("train", "base", "train.lr", -1, "train.lr"),
    ("train", "base", "train.lr", ".nan", "train.lr"),
    ("train", "base", "train.epochs", 0, "train.epochs"),
    ("train", "base", "train.epochs", 1e30, "train.epochs"),
    ("train", "base", "train.momentum", 1.5, "train.momentum"),
    ("train", "base", "train.betas", [2, 3], "train.betas"),
    ("train", "base", "train.optimizer", "lbfgs", "train.optimizer"),
    ("train", "base", "train.device", "tpu", "train.device"),
    ("train", "base", "train.schedule", "exp", "train.schedule"),
    ("train", "base", "train.milestones", [3, 1], "milestones"),
    ("train", "base", "train.bogus", 1, "train.bogus"),
    ("train", "base", "data.batch_size", 0, "data.batch_size"),
    ("train", "base", "data.batch_sise", 3, "batch_size"),
    ("train", "base", "data.val_fraction", 1.5, "data.val_fraction"),
    ("train", "base", "data.name", "imagenet", "unknown dataset"),
    ("train", "base", "data.views", "all", "data.views"),
    ("train", "base", "data.augment.pad_crop", -1, "pad_crop"),
    ("train", "base", "data.augment.pad_crop", 100000, "data.augment"),
    ("train", "base", "data.augment.flip", "maybe", "data.augment.flip"),
    ("train", "base", "data.augment.resized_crop", [0.5], "resized_crop"),
    ("train", "base", "data.eval_batch_size", 0, "data.eval_batch_size"),
    ("train", "base", "data.num_workers", -1, "data.num_workers"),
    ("train", "base", "data.subset", 0, "data.subset"),
    ("train", "base", "data.train", {"class_path": "x:Y"}, "data.test"),
    ("train", "base", "train.warmup_epochs", -1, "train.warmup_epochs"),
    ("train", "base", "train.weight_decay", -1, "train.weight_decay"),
    ("train", "base", "train.min_lr", ".inf", "train.min_lr"),
    ("train", "base", "train.precision", "fp8", "train.precision"),
    ("train", "base", "method.label_smoothing", 1.5, "method.label_smoothing"),
    ("train", "base", "method.ce_weight", "a", "method.ce_weight"),
    ("train", "base", "run_dir", ["x"], "run_dir"),
    ("train", "base", "student.hf", {"config": {"n_layer": 2}}, "model_type"),
    ("train", "base", "student.init_args", {"a": 1}, "init_args"),
    ("train", "base", "data.kwargs", {"nonsense": 1}, "the data"),
    ("train", "base", "seed", -1, "seed"),
    ("train", "base", "student.model", "resnet8x5", "resnet8x4"),
    ("train", "base", "student.kwargs", {"bogus": 1}, "bogus"),
    ("train", "base", "student", {"model": "convnet", "kwargs": {"width": 0}}, "the student"),
    ("train", "base", "student", {"class_path": "no_such_module:Net"}, "no_such_module"),
    ("train", "base", "student", {}, "student"),
    ("train", "base", "student", _DEL, "student"),
    ("train", "base", "method.name", "kdd", "kd"),
    ("train", "base", "method", {"name": "kd"}, "needs a teacher"),
    ("train", "base", "task", "detection", "unknown task"),
    ("train", "base", "experiment", ["a", "list"], "experiment"),
    ("train", "kd", "method.params", {"temp": 2}, "temperature"),
    ("train", "kd", "method.params", {"temperature": -1}, "temperature"),
    ("train", "kd", "method.weights", {"nope": 1}, "nope"),
    ("train", "kd", "teacher.checkpoint", J + "/missing.safetensors", "missing.safetensors"),
    ("train", "kd", "teacher.checkpoint", J + "/junk.pt", "the teacher"),
    ("train", "kd", "teacher.checkpoint", J + "/pickle.pt", "the teacher"),
    ("train", "kd", "teacher.sha256", "0" * 64, "sha256"),
    ("train", "kd", "teacher.source", "store", "teacher.store"),
    ("train", "kd", "teacher.kwargs", {"width": 16, "depth": 2}, "the teacher"),
    ("cache", "kd", "cache.topk", 50, "topk"),
    ("cache", "kd", "cache.topk", 0, "cache.topk"),
    ("cache", "kd", "cache.num_views", 0, "cache.num_views"),
    ("cache", "kd", "cache.device", "tpu", "tpu"),
    ("cache", "kd", "cache.dtype", "int8", "cache.dtype"),
    ("cache", "kd", "cache.bogus", 1, "cache.bogus"),
    ("cache", "kd", "cache.batch_size", 0, "cache.batch_size"),
    ("cache", "kd", "cache.taps", {"x": "no.such.layer"}, "no.such.layer"),
    ("cache", "kd", "cache.num_views", "many", "cache.num_views"),
    ("cache", "kd", "cache", _DEL, "cache"),
    ("cache", "kd", "teacher", _DEL, "teacher"),
    ("cache", "kd", "teacher.checkpoint", _DEL, "teacher.checkpoint"),
    ("cache", "kd", "cache.out", _DEL, "cache.out"),
]

#: (argv after `featdistill`, culprit) — bad command lines
ARGV: list[tuple[list[str], str]] = [
    (["train", "{tmp}/nonexistent.yaml"], "nonexistent.yaml"),
    (["cache", "{tmp}/nonexistent.yaml"], "nonexistent.yaml"),
    (["condense", "{tmp}/nonexistent.yaml"], "nonexistent.yaml"),
    (["cache", "info"], "usage"),
    (["cache", "info", "{tmp}"], "not a teacher store"),
    (["cache", "verify", "{tmp}"], "not a teacher store"),
    (["condense", "eval"], "usage"),
    (["condense", "relabel", "x"], "usage"),
    (["train", "{cfg}", "--set", "train.epochs"], "key=value"),
    (["train", "{cfg}", "--set", "train.lr=[1,"], "train.lr"),
    (["train", "{cfg}", "--set", "train.lr.x=1"], "train.lr"),
    (["train", "{cfg}", "--set", "data.kwargs=" + "{" + _bomb().replace("\n", ", ").rstrip(", ") + "}"], "alias bomb"),
]


def _run(argv: list[str], capsys) -> tuple[int, str, float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        rc = main(argv)
    finally:
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return rc, capsys.readouterr().err, seconds, peak


def _check(rc: int, err: str, culprit: str) -> None:
    assert rc == 2, (rc, err)
    assert culprit.lower() in err.lower(), err
    assert "Traceback" not in err and err.count("error:") == 1, err


@pytest.mark.parametrize("command", RAW_COMMANDS)
@pytest.mark.parametrize("name, content, culprit", RAW, ids=[r[0] for r in RAW])
def test_raw_files(tmp_path, capsys, command, name, content, culprit):
    p = tmp_path / f"{name}.yaml"
    p.write_bytes(content)
    rc, err, seconds, peak = _run([command, str(p)], capsys)
    _check(rc, err, culprit)
    assert seconds < 2.0 and peak < 200, (seconds, peak)
    if name != "top-level-scalar" and name != "top-level-list":
        assert p.name in err  # the file is named


@pytest.mark.parametrize(
    "command, base, key, value, culprit", VALUES, ids=[f"{v[0]}:{v[2]}={v[3]!s:.20}" for v in VALUES]
)
def test_bad_values(tmp_path, capsys, teacher_ckpt, command, base, key, value, culprit):
    if isinstance(value, str) and value.startswith(J):
        value = value.replace(J, str(teacher_ckpt.parent))
    cfg = _set(_base(tmp_path) if base == "base" else _kd(tmp_path, teacher_ckpt), key, value)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg).replace("'.nan'", ".nan").replace("'.inf'", ".inf"))
    rc, err, seconds, _ = _run([command, str(p)], capsys)
    _check(rc, err, culprit)


@pytest.mark.parametrize("argv, culprit", ARGV, ids=[" ".join(a[0][:2]) + f"#{i}" for i, a in enumerate(ARGV)])
def test_bad_command_lines(tmp_path, capsys, argv, culprit):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_base(tmp_path)))
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{cfg}", str(cfg)) for a in argv]
    rc, err, _, _ = _run(argv, capsys)
    _check(rc, err, culprit)


def test_debug_shows_the_traceback(tmp_path):
    from featdistill.config import ConfigError

    p = tmp_path / "dup.yaml"
    p.write_bytes(RAW[1][1])
    with pytest.raises(ConfigError, match="duplicate key"):
        main(["--debug", "train", str(p)])
    with pytest.raises(ConfigError, match="duplicate key"):
        main(["train", str(p), "--debug"])  # anywhere on the line


def test_setup_errors_keep_their_cause_for_debug(tmp_path):
    from featdistill.config import ConfigError

    cfg = _set(_base(tmp_path), "student", {"model": "convnet", "kwargs": {"width": 0}})
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="while building the student") as err:
        main(["--debug", "train", str(p)])
    assert err.value.__cause__ is not None  # the original error and its traceback are kept


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    """An error after the run has started is not the user's: it propagates (the traceback is shown)."""
    import featdistill.train.trainer as trainer_mod

    real = trainer_mod.Trainer._end_epoch

    def broken(self, *a, **k):
        real(self, *a, **k)
        raise RuntimeError("a bug")

    monkeypatch.setattr(trainer_mod.Trainer, "_end_epoch", broken)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(_base(tmp_path)))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", str(p)])


def test_corpus_size():
    """The counts docs/reliability.md reports."""
    assert len(RAW) * len(RAW_COMMANDS) + len(VALUES) + len(ARGV) >= 120
