"""A 2-process ``torchrun`` CPU (gloo) run matches a 1-process run with the same global batch.

Why it should match: each rank gets half of every global batch (per-rank batch = global / 2), DDP averages
the gradients, and the mean of the two half-batch mean losses is the full-batch mean loss.  So SGD takes
the same steps up to float rounding (summation order).  Tolerance: max |Δw| < 1e-5 after 12 SGD steps
(observed ~1e-7).  The toy student has no BatchNorm: DDP without SyncBatchNorm computes BN statistics per
rank (half batch), which legitimately differs from one process; convert BN students with
``nn.SyncBatchNorm.convert_sync_batchnorm`` if that matters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from _torchrun import run_torchrun

WORKER = Path(__file__).with_name("_ddp_worker.py")


def _gloo_available() -> bool:
    return dist.is_available() and dist.is_gloo_available()


@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with gloo is not available")
def test_torchrun_two_processes_match_one_process(tmp_path: Path) -> None:
    import _ddp_worker

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    proc = run_torchrun(str(WORKER), str(two))
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    _ddp_worker.run(one)  # same script, one process, same global batch

    a = torch.load(one / "final.pt", weights_only=True)
    b = torch.load(two / "final.pt", weights_only=True)
    assert a.keys() == b.keys() and any(k.startswith("adapter.") for k in a)
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff < 1e-5, f"2-process weights differ from 1-process by {diff:.3g}"
    init = __import__("_trainer_toys").ToyDistiller(seed=0)
    assert max((a[k] - init.state_dict()[k]).abs().max().item() for k in a) > 1e-3  # it did train

    # only rank 0 wrote logs; epoch losses are averaged over ranks → the global-batch mean
    def epochs(run: Path) -> list[dict]:
        lines = (run / "run" / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["type"] == "epoch"]

    e1, e2 = epochs(one), epochs(two)
    assert len(e1) == len(e2) == 2
    for r1, r2 in zip(e1, e2):
        assert r2["total"] == pytest.approx(r1["total"], abs=1e-5)
        for k in r1["losses"]:
            assert r2["losses"][k] == pytest.approx(r1["losses"][k], abs=1e-5)
    # eval metrics over a sharded eval loader are combined exactly (same samples, same weights)
    ev1 = [r for r in map(json.loads, (one / "run" / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]
    ev2 = [r for r in map(json.loads, (two / "run" / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]
    assert [r["n"] for r in ev2] == [24.0, 24.0]
    assert [r["top1"] for r in ev2] == pytest.approx([r["top1"] for r in ev1], abs=1e-9)
    assert [r["loss"] for r in ev2] == pytest.approx([r["loss"] for r in ev1], abs=1e-5)
    settings = json.loads((two / "run" / "train_settings.json").read_text())
    assert settings["resolved"]["world_size"] == 2
