"""Hardening (#10), YAML: every config is read by one loader bounded in time and memory (featdistill.yaml_safe)."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from pydantic import ValidationError

from featdistill.cli import main
from featdistill.config import ConfigError, ExperimentConfig, apply_overrides, dump_config, load_config
from featdistill.validation import format_validation_error
from featdistill.yaml_safe import (
    YAMLLoadError,
    check_expanded_size,
    load_yaml_file,
    load_yaml_text,
    short_repr,
)


def _bomb_text(key: str = "experiment", levels: int = 9) -> str:
    """A billion-laughs document (9**levels strings once expanded) whose last anchor sits under ``key``."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    body = "\n".join(lines)
    parts = key.split(".")
    nested = f"*l{levels - 1}"
    for p in reversed(parts[1:]):
        nested = "{" + f"{p}: {nested}" + "}"
    return f"{body}\n{parts[0]}: {nested}\nstudent: {{model: mlp}}\n"


def _python_bomb(levels: int = 9) -> list:
    a: list = ["lol"] * 9
    for _ in range(levels - 1):
        a = [a] * 9
    return a


class _Bounded:
    """Wall time and peak Python allocation of a block."""

    def __enter__(self) -> _Bounded:
        tracemalloc.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    def check(self) -> None:
        assert self.seconds < 2.0, self.seconds
        assert self.peak_mb < 200, self.peak_mb


@pytest.mark.parametrize("key", ["experiment", "seed", "data.kwargs", "method.params", "data.batch_size"])
def test_bomb_config_is_refused_fast_and_small(tmp_path, key):
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb_text(key))
    assert p.stat().st_size < 1000  # a few hundred bytes
    with _Bounded() as b, pytest.raises(ConfigError, match="alias bomb") as err:
        load_config(p)
    b.check()
    assert len(str(err.value)) < 400


@pytest.mark.parametrize("command", ["train", "cache", "condense"])
def test_bomb_through_the_cli_exits_2_with_one_message(tmp_path, capsys, command):
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb_text("data.kwargs"))
    with _Bounded() as b:
        assert main([command, str(p)]) == 2
    b.check()
    err = capsys.readouterr().err
    assert "alias bomb" in err and "bomb.yaml" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bomb_in_a_set_override_is_refused():
    with _Bounded() as b, pytest.raises(ConfigError, match="alias bomb"):
        apply_overrides({}, ["data.kwargs=" + "{" + _bomb_text().replace("\n", ", ").rstrip(", ") + "}"])
    b.check()


def test_duplicate_keys_name_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("student: {model: mlp}\ntrain:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'epochs' at lines 3 and 5"):
        load_config(p)


def test_merge_keys_still_work():
    assert load_yaml_text("a: &x {k: 1, j: 2}\nb:\n  <<: *x\n  k: 3\n") == {
        "a": {"k": 1, "j": 2},
        "b": {"k": 3, "j": 2},
    }


@pytest.mark.parametrize(
    "text, match",
    [
        ("experiment: !!python/object/apply:os.system ['echo pwned']\n", "!!python/object/apply:os.system"),
        ("experiment: !!python/name:os.system\n", "never execute code"),
        ("experiment: !custom 3\n", "tag !custom is not allowed"),
        ("a: &a [*a]\n", "recursive"),
        ("[" * 5000 + "]" * 5000 + "\n", "nested deeper than 64"),
        ("a: " + "{b: " * 200 + "1" + "}" * 200 + "\n", "nested deeper than 64"),
        ("a: [1,\n", "not valid YAML"),
    ],
)
def test_refused_documents(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with _Bounded() as b, pytest.raises(YAMLLoadError, match=match):
        load_yaml_file(p)
    b.check()


def test_binary_and_oversized_files(tmp_path):
    png = tmp_path / "image.yaml"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(YAMLLoadError, match="binary file"):
        load_yaml_file(png)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"experiment: caf\xe9\n")
    with pytest.raises(YAMLLoadError, match="not UTF-8"):
        load_yaml_file(latin)
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "a" * (2 << 20) + "\n")
    with _Bounded() as b, pytest.raises(YAMLLoadError, match="more than the 1,048,576"):
        load_yaml_file(big)
    b.check()


def test_binary_config_through_the_cli(tmp_path, capsys):
    p = tmp_path / "weights.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    assert main(["train", str(p)]) == 2
    err = capsys.readouterr().err
    assert "weights.yaml" in err and "Traceback" not in err


def test_validation_messages_truncate_values():
    bomb = _python_bomb()
    with _Bounded() as b:
        with pytest.raises(ValidationError) as err:
            ExperimentConfig.model_validate({"student": {"model": "mlp"}, "seed": bomb, "experiment": "x" * 100_000})
        text = format_validation_error(err.value, ExperimentConfig)
    b.check()
    assert "seed = [[[" in text and len(text) < 600
    assert max(len(line) for line in text.splitlines()) < 300


def test_dump_config_refuses_a_bomb_in_free_form_mappings():
    for section in ("data", "method"):
        raw: dict = {"student": {"model": "mlp"}, "teacher": {"model": "mlp"}}
        if section == "data":
            raw["data"] = {"name": "digits", "kwargs": {"x": _python_bomb()}}
        else:
            raw["method"] = {"name": "kd", "params": {"temperature": 4}}
        cfg = ExperimentConfig.model_validate(raw)
        if section == "method":
            cfg.method.params["extra"] = _python_bomb()  # passes no validator: free-form
        with _Bounded() as b, pytest.raises(ConfigError, match=f"{section}\\.(kwargs|params)"):
            dump_config(cfg)
        b.check()


def test_dump_config_of_a_normal_config_is_unchanged():
    cfg = ExperimentConfig.model_validate({"student": {"model": "mlp"}, "data": {"kwargs": {"a": [1, 2]}}})
    assert "a:\n    - 1\n    - 2" in dump_config(cfg)


def test_check_expanded_size_counts_shared_references_once_per_use():
    shared = [1, 2, 3]
    assert check_expanded_size({"a": shared, "b": shared}) == 1 + 2 * (1 + 4)
    loop: list = []
    loop.append(loop)
    with pytest.raises(YAMLLoadError, match="contains itself"):
        check_expanded_size(loop)


def test_short_repr_is_short_and_bounded():
    assert short_repr("abc") == "'abc'"
    assert len(short_repr("x" * 10**6)) <= 80
    with _Bounded() as b:
        s = short_repr(_python_bomb())
    b.check()
    assert len(s) <= 80

    class Bad:
        def __repr__(self) -> str:
            raise RuntimeError("boom")

    assert short_repr(Bad()).startswith("<Bad")
