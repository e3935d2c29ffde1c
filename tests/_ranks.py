"""Start data-parallel ranks as processes for the tests that need real ``torch.distributed`` groups."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, release)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(output: str) -> str:
    """What to show of a failed rank's output: a crash's whole faulthandler report (which thread crashed,
    every thread's stack), else the last 3,000 characters."""
    crash = output.find("Fatal Python error")
    return output[crash : crash + 12000] if crash >= 0 else output[-3000:]


def run_ranks(script: Path, world: int, *args: str, timeout: float = 300) -> None:
    """Run ``python script RANK WORLD *args`` for every rank at once and wait for all of them.

    Each rank gets ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT`` and ``OMP_NUM_THREADS=1``; a rank
    that fails fails the test with the tail of every failed rank's output (one killed by a signal first,
    with its threads' Python stacks), and ranks still running are killed.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env["PYTHONFAULTHANDLER"] = "1"  # a rank that crashes (a signal) prints every thread's Python stack
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(world), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
        failed = sorted(
            (rank for rank, process in enumerate(processes) if process.returncode),
            key=lambda rank: processes[rank].returncode >= 0,  # a rank killed by a signal first: it is the cause
        )
        report = "\n".join(
            f"rank {rank} of {world} failed (exit {processes[rank].returncode}):\n{_tail(outputs[rank])}"
            for rank in failed
        )
        assert not failed, report
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
