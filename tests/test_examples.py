"""The examples run as users would run them, and learn."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_plain_loop_example_runs_and_learns():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plain_loop.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    losses = re.findall(r"epoch \d+: ce=([\d.]+)\s+hint=([\d.]+)", out.stdout)
    assert len(losses) == 4
    assert float(losses[-1][1]) < float(losses[0][1])  # the hint loss (through the adapter) went down
    acc = float(re.search(r"student test accuracy: ([\d.]+)", out.stdout).group(1))
    assert acc > 0.5  # chance is 0.1 on digits
