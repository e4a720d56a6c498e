"""DisWOT's evolutionary search over a declared student space (training-free fitness)."""

from __future__ import annotations

import pytest
import torch

from featdistill.methods.diswot_search import evolutionary_search, exhaustive_ranking, space_genomes
from featdistill.models import build_model

SPACE = {"model": "convnet", "choices": {"width": [2, 4, 8, 16], "depth": [1, 2, 3]}}


def _build(name, kwargs):
    torch.manual_seed(0)
    return build_model(name, num_classes=4, in_channels=1, image_size=8, **kwargs)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    teacher = build_model("convnet", num_classes=4, in_channels=1, image_size=8, width=16, depth=3)
    g = torch.Generator().manual_seed(1)
    batch = {"input": torch.randn(16, 1, 8, 8, generator=g), "target": torch.arange(16) % 4}
    return teacher, batch


def test_the_search_finds_the_exhaustive_best_and_scores_each_genome_once(setup):
    teacher, batch = setup
    assert space_genomes(SPACE) == 12
    ranking = exhaustive_ranking(teacher, SPACE, batch, _build)
    out = evolutionary_search(teacher, SPACE, batch, _build, population=4, cycles=30, seed=0)
    assert out["best"]["score"] == pytest.approx(ranking[0]["score"], abs=1e-12)
    assert out["best"]["kwargs"] == ranking[0]["kwargs"]
    kwargs_seen = [tuple(sorted(r["kwargs"].items())) for r in out["history"]]
    assert len(kwargs_seen) == len(set(kwargs_seen)) == out["scored"] <= 12  # a genome is scored once
    again = evolutionary_search(teacher, SPACE, batch, _build, population=4, cycles=30, seed=0)
    assert [r["kwargs"] for r in again["history"]] == [r["kwargs"] for r in out["history"]]  # seeded


def test_the_parameter_budget_rejects_large_candidates_before_scoring(setup):
    teacher, batch = setup
    small = _build("convnet", {"width": 4, "depth": 3})
    budget = sum(p.numel() for p in small.parameters())
    out = evolutionary_search(teacher, {**SPACE, "max_params": budget}, batch, _build, population=3, cycles=10)
    assert out["rejected"] > 0 and all(r["params"] <= budget for r in out["history"])
    ranking = exhaustive_ranking(teacher, {**SPACE, "max_params": budget}, batch, _build)
    assert all(r["params"] <= budget for r in ranking) and len(ranking) < 12


def test_bad_spaces_and_settings_are_refused(setup):
    teacher, batch = setup
    with pytest.raises(ValueError, match="choices"):
        evolutionary_search(teacher, {"model": "convnet"}, batch, _build)
    with pytest.raises(ValueError, match="at least one choice"):
        evolutionary_search(teacher, {"model": "convnet", "choices": {"width": []}}, batch, _build)
    with pytest.raises(ValueError, match="population"):
        evolutionary_search(teacher, SPACE, batch, _build, population=1)
    with pytest.raises(ValueError, match="fewer than 2"):
        evolutionary_search(teacher, {**SPACE, "max_params": 1}, batch, _build)


def test_the_search_cli_prints_the_best_candidates_and_refuses_a_bad_space(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    from featdistill.cli import main

    space = tmp_path / "space.yaml"
    space.write_text("model: convnet\nchoices: {width: [2, 4], depth: [1, 2]}\n")
    assert main(["search", "convnet", "--space", str(space), "--population", "2", "--cycles", "3"]) == 0
    out = capsys.readouterr().out
    assert "DisWOT search for teacher convnet" in out and "convnet(depth=" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: convnet\nchoices: {width: []}\n")
    assert main(["search", "convnet", "--space", str(bad)]) == 2
    assert "at least one choice" in capsys.readouterr().err
    assert main(["search", "convnet"]) == 2
