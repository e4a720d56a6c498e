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


def test_tasks_suite_quick_runs_every_task_and_writes_its_tables(tmp_path):
    """`featdistill bench tasks --quick`: every built-in task, its four steps, real runs (about 30 s on 2 cores)."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    pytest.importorskip("mlxtend")
    from featdistill.bench.tasks import STEPS, TASK_SPECS, step_label
    from featdistill.tasks import TASKS

    payload = json.loads(run_suite("tasks", tmp_path, quick=True).read_text())
    rows = payload["rows"]
    assert payload["suite"] == "tasks" and payload["meta"]["quick"] is True and payload["meta"]["threads"] == 1
    builtin = {name for name, cls in TASKS.items() if cls.__module__.startswith("featdistill.tasks.")}
    assert set(TASK_SPECS) == builtin  # every built-in task is benchmarked
    md = (tmp_path / "tasks.md").read_text()
    for task, spec in TASK_SPECS.items():
        rs = [r for r in rows if r["task"] == task]
        assert [r["step"] for r in rs] == [step_label(spec, s) for s in STEPS]
        for r in rs:
            assert r["metric"] == TASKS[task].primary_metric and len(r["test"]) == len(r["seeds"]) == 1
            assert r["test_mean"] == r["test"][0] and r["params"] > 0 and r["train_seconds_mean"] >= 0
        assert rs[0]["params"] > rs[1]["params"]  # the teacher is the bigger model
        assert f"## {task} — {spec.dataset}" in md
    assert "featdistill bench tasks --quick" in md and "student alone" in md


@pytest.mark.slow
def test_task_store_suite_quick_reports_every_task_ratio_sizes_and_precision(tmp_path):
    """`featdistill bench task-store --quick` (about 2 minutes): a ratio per task, LM sizes, fp32 vs auto."""
    pytest.importorskip("transformers")
    from featdistill.bench.task_store import PAIRS

    rows = json.loads(run_suite("task-store", tmp_path, quick=True).read_text())["rows"]
    speed = [r for r in rows if "table" not in r]
    assert [r["task"] for r in speed] == list(PAIRS)
    assert all(r["store_over_student"] > 0 and len(r["round_ratios"]) == 1 for r in speed)
    sizes = {r["store"]: r["bytes_per_token"] for r in rows if r.get("table") == "lm-topk"}
    assert sizes["top-8"] < sizes["top-32"] < sizes["top-64"] < sizes["full logits"]
    precision = [r for r in rows if r.get("table") == "precision"]
    assert [r["task"] for r in precision] == list(PAIRS)
    assert all(0 <= r["mean_abs_diff"] <= r["max_abs_diff"] for r in precision)
