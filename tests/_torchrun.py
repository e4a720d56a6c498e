"""Launch a script under torchrun from a test (used by the DDP and the distributed store-build tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest


def run_torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``script`` under ``torchrun --standalone`` with ``nproc`` CPU (gloo) processes.

    The child environment drops any outer RANK/WORLD_SIZE, uses one OpenMP thread per process and the loopback
    interface. It runs in its own session, so on timeout the whole group (torchrun and its workers) is killed
    and the test fails with their output; a torch without ``torch.distributed.run`` skips the test.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=env.get("GLOO_SOCKET_IFNAME", "lo"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
    cmd += ["--nproc_per_node", str(nproc), script, *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout:.0f} s:\n{out[-2000:]}\n{err[-2000:]}")
    if proc.returncode != 0 and "torch.distributed.run" in err and "No module named" in err:
        pytest.skip("torchrun (torch.distributed.run) is unavailable")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
