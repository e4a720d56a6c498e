"""The main job: `featdistill demo` (quick mode) runs end to end and leaves its run directories."""

from __future__ import annotations

import json

import pytest

from featdistill.cli import main


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--dataset", "digits"]) == 0
    printed = capsys.readouterr().out
    assert "feature-kd" in printed and "student-alone" in printed
    summary = json.loads((out / "demo.json").read_text())
    rows = {r["step"]: r for r in summary["rows"]}
    assert list(rows) == ["teacher", "student-alone", "kd", "feature-kd"]
    assert rows["teacher"]["params"] > 50 * rows["kd"]["params"]  # a real compression
    assert rows["kd"]["params"] == rows["student-alone"]["params"] == rows["feature-kd"]["params"]
    for step in rows:
        for f in ("config.yaml", "metrics.jsonl", "student.safetensors", "report.md"):
            assert (out / step / f).is_file(), (step, f)
    assert rows["teacher"]["test_top1"] > 0.3  # one quick epoch on digits already learns (chance 0.1)
    # running the demo again reuses (replaces) its own run directories instead of refusing
    assert main(["demo", "--quick", "--out", str(out), "--dataset", "digits"]) == 0


@pytest.mark.slow
def test_full_demo_on_mnist5k_distils(tmp_path):
    """The real main job (about 70 s on 2 cores): a strong teacher, a 110× smaller student that learns."""
    pytest.importorskip("mlxtend")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    rows = {r["step"]: r for r in json.loads((out / "demo.json").read_text())["rows"]}
    assert rows["teacher"]["test_top1"] >= 0.97
    for step in ("student-alone", "kd", "feature-kd"):
        assert rows[step]["test_top1"] >= 0.93, step
    # distillation does not hurt beyond seed noise (docs/benchmarks.md: ±0.006 over seeds)
    assert rows["kd"]["test_top1"] >= rows["student-alone"]["test_top1"] - 0.01
