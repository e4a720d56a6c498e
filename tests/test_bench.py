"""The benchmark framework: a suite's rows land in DIR/SUITE.json and a markdown table; names are checked."""

from __future__ import annotations

import json

import pytest

from featdistill.bench import SUITE_MODULES, SUITES, markdown_table, register_suite, run_suite


def test_run_suite_writes_json_and_markdown(tmp_path):
    @register_suite("_unit")
    def _unit(out_dir, quick):
        return [{"config": "a", "ms": 1.5}, {"config": "b", "ms": 3.0, "ratio": 2.0}]

    try:
        path = run_suite("_unit", tmp_path, quick=True)
        payload = json.loads(path.read_text())
        assert payload["suite"] == "_unit" and len(payload["rows"]) == 2 and payload["meta"]["quick"] is True
        md = (tmp_path / "_unit.md").read_text()
        assert "| config | ms | ratio |" in md and "| b | 3 | 2 |" in md and "featdistill bench _unit --quick" in md
    finally:
        SUITES.pop("_unit")


def test_unknown_suite_and_duplicate_registration():
    with pytest.raises(KeyError, match="core"):
        run_suite("nope", "/tmp/never-written")
    register_suite("_dup")(lambda o, q: [])
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_suite("_dup")(lambda o, q: [])
    finally:
        SUITES.pop("_dup")
    assert {"core", "demo", "cache", "methods", "condense"} <= set(SUITE_MODULES)


def test_markdown_table_formats_floats():
    assert markdown_table([{"a": 0.123456}]).splitlines()[2] == "| 0.1235 |"


def test_a_suite_runs_with_its_declared_threads_and_says_so(tmp_path):
    import torch

    from featdistill.bench import SUITE_THREADS

    before = torch.get_num_threads()
    seen = {}

    @register_suite("_one", threads=1)
    def _one(out_dir, quick):
        seen["threads"] = torch.get_num_threads()
        return [{"x": 1}]

    try:
        payload = json.loads(run_suite("_one", tmp_path).read_text())
        assert seen["threads"] == 1 and payload["meta"]["threads"] == 1
        assert "1 threads" in (tmp_path / "_one.md").read_text()
        assert torch.get_num_threads() == before  # restored
    finally:
        SUITES.pop("_one")
        SUITE_THREADS.pop("_one")
