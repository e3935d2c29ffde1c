"""Fault tolerance: a training run killed with SIGKILL mid-epoch resumes exactly where it stopped."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sadp_data as sd
from sadp_data.cli import main

WORKER = Path(__file__).parent / "workers" / "resume_train.py"
TIMEOUT_S = 180
STEPS_BEFORE_KILL = 30 + 7  # the 30 warm-up steps, then 7 of the 15 steps of the first pruned epoch


def _run(workdir: Path, mode: str, pause: float = 0.0) -> subprocess.Popen:
    shards = (workdir / "shards.url").read_text() if (workdir / "shards.url").exists() else None
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(workdir), mode, str(pause), *([shards] if shards else [])],
        env={**os.environ, "OMP_NUM_THREADS": "1", "SADP_CACHE": str(workdir / "cache")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, output[-3000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """nginx serving a folder on 127.0.0.1: ``(folder, base URL)``."""
    from sadp_data.bench.servers import NginxServer

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed")
    folder = tmp_path_factory.mktemp("served")
    with NginxServer(folder, nginx=nginx) as server:
        yield folder, server.url


def _fresh(workdir: Path, source: str, served: tuple[Path, str] | None) -> Path:
    """A run folder: its own sidecar, and for ``shards``/``http`` the examples converted to scored shards
    (local, or under nginx's folder and read by URL) whose address ``_run`` passes to the worker."""
    workdir.mkdir()
    if source == "tensors":
        sd.ScoreStore.create(workdir / "scores.zarr", 480).close()
        return workdir
    x, y = runpy.run_path(str(WORKER))["examples"]()  # the worker's own examples
    np.savez(workdir / "data.npz", x=x, y=y)
    out = workdir / "shards" if source == "shards" else served[0] / workdir.name
    assert main(["convert", str(workdir / "data.npz"), str(out), "--shard-size", "64", "--no-progress"]) == 0
    (workdir / "shards.url").write_text(str(out) if source == "shards" else f"{served[1]}/{workdir.name}")
    return workdir


@pytest.mark.parametrize("source", ["tensors", "shards", "http"])
def test_sigkill_mid_epoch_then_resume_continues_the_identical_order(tmp_path: Path, source: str, request) -> None:
    """Through ``wrap`` over tensors, and through ``ScoredShards`` with 2 DataLoader workers over a local
    folder and over nginx: a SIGKILL mid-epoch, then a resume from the last checkpoint, delivers the
    uninterrupted run's order exactly."""
    served = request.getfixturevalue("served") if source == "http" else None
    reference = _fresh(tmp_path / f"{source}-uninterrupted", source, served)
    _finish(_run(reference, "run"))
    expected = json.loads((reference / "final.json").read_text())

    workdir = _fresh(tmp_path / f"{source}-killed", source, served)
    victim = _run(workdir, "run", pause=0.05)
    deadline = time.monotonic() + TIMEOUT_S
    progress = workdir / "progress"
    while not (progress.exists() and len(progress.read_text().splitlines()) >= STEPS_BEFORE_KILL):
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=TIMEOUT_S)
    assert victim.returncode == -signal.SIGKILL

    checkpoint = torch.load(workdir / "checkpoint.pt", weights_only=False)
    assert checkpoint["loader"]["epoch"] == 1 and 0 < checkpoint["loader"]["position"] < 240  # mid-epoch
    if source != "tensors":
        assert checkpoint["loader"]["num_workers"] == 2 and all(checkpoint["loader"]["worker_positions"])
    with sd.ScoreStore.open(_sidecar(workdir), "r") as store:  # opens cleanly after the kill
        assert store.version >= checkpoint["store_version"]  # nothing flushed before the checkpoint is lost
        assert store.saved_snapshot() is not None
        assert (store.seen() > 0).all()  # the warm-up epoch scored everything

    _finish(_run(workdir, "resume"))
    resumed = json.loads((workdir / "final.json").read_text())
    assert resumed[: len(checkpoint["delivered"])] == checkpoint["delivered"]
    assert resumed == expected  # the remaining order, and every later epoch, as if never interrupted
    assert len(expected) == 480 + 240 + 240 + 480


def _sidecar(workdir: Path) -> Path:
    if not (workdir / "shards.url").exists():
        return workdir / "scores.zarr"
    from sadp_data.shards import ShardIndex

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SADP_CACHE", str(workdir / "cache"))
        return ShardIndex.load((workdir / "shards.url").read_text()).sidecar_path()


def test_writer_failure_reaches_the_training_loop(tmp_path: Path) -> None:
    """A sidecar that becomes unwritable (here: a file where a chunk directory must go) raises in training."""
    store = sd.ScoreStore.create(tmp_path / "s.zarr", 100, flush_interval=0.01)
    blocker = tmp_path / "s.zarr" / "score" / "c"
    if blocker.exists():
        import shutil

        shutil.rmtree(blocker)
    blocker.write_text("not a directory")
    model = torch.nn.Linear(4, 3)
    scorer = sd.SpikeAwareScorer(model, store)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(sd.ScoreStoreError, match=r"writing scores to .*s\.zarr failed"):
        for _ in range(200):
            out = model(x)
            scorer.step(torch.arange(8), out, y, torch.nn.functional.cross_entropy(out, y, reduction="none"))
            time.sleep(0.01)
    np.testing.assert_array_equal(store.scores()[:8] > 0, True)
