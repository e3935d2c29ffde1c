"""Faults and bad input (issue 16): each case fails loudly, naming the culprit, instead of silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sadp_data import SADPSampler, ScoreStore
from sadp_data.kernels import plan_epoch


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_non_finite_or_negative_scores_are_refused_with_their_position(backend, bad):
    scores = np.ones(1000, np.float32)
    scores[737] = bad
    if backend == "torch":
        scores = torch.from_numpy(scores)
    with pytest.raises(ValueError, match="position 737"):
        plan_epoch(scores, 0.5, 0, 1, backend=backend)


@pytest.fixture
def store(tmp_path: Path) -> ScoreStore:
    store = ScoreStore.create(tmp_path / "s.zarr", 1000)
    store.update(np.arange(1000), np.random.default_rng(0).gamma(0.5, size=1000))
    yield store
    store.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"keep_ratio": 0.9}, "keep_ratio"),
        ({"epochs": 6}, "epochs"),
        ({"warmup_epochs": 2}, "warmup_epochs"),
        ({"schedule": "constant"}, "schedule"),
        ({"smoothing": 0.3}, "smoothing"),
        ({"method_options": {"weight_power": 1.0}}, "method_options"),
        ({"shard_size": 100}, "shard_size"),
    ],
)
def test_resuming_from_a_sampler_with_other_plan_settings_is_refused_naming_the_field(store, change, field):
    settings = {"keep_ratio": 0.5, "epochs": 5, "seed": 1}
    saved = SADPSampler(store, **settings)
    saved.set_epoch(2)
    iterator = iter(saved)
    for _ in range(10):
        next(iterator)
    state = saved.state_dict()
    with pytest.raises(ValueError, match=field):
        SADPSampler(store, **{**settings, **change}).load_state_dict(state)
    same = SADPSampler(store, **settings)
    same.load_state_dict(state)  # the same settings resume
    assert len(same) == len(saved.plan) - 10


@pytest.mark.parametrize("position", [-1, 10_000])
def test_a_position_outside_the_epoch_is_refused(store, position):
    sampler = SADPSampler(store, 0.5, epochs=5, seed=1)
    sampler.set_epoch(2)
    state = {**sampler.state_dict(), "position": position}
    with pytest.raises(ValueError, match=f"position {position}"):
        SADPSampler(store, 0.5, epochs=5, seed=1).load_state_dict(state)


HOLD_WRITER = """
import sys, time
from sadp_data import ScoreStore
store = ScoreStore.open(sys.argv[1], "r+")
print("open", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_in_this_process_and_in_another_until_the_first_dies(tmp_path):
    import signal
    import subprocess
    import sys

    from sadp_data.store import ScoreStoreError

    path = tmp_path / "s.zarr"
    first = ScoreStore.create(path, 100)
    with pytest.raises(ScoreStoreError, match="mode='r'"):
        ScoreStore.open(path, "r+")
    reader = ScoreStore.open(path, "r")  # readers and mirrors never conflict
    mirror = ScoreStore.open(path, "mirror")
    reader.close()
    mirror.close()
    first.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ScoreStoreError, match="already open for writing"):
            ScoreStore.open(path, "r+")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        again = ScoreStore.open(path, "r+")  # the OS released the dead writer's lock
        again.update(np.arange(10), np.ones(10))
        again.close()
    finally:
        holder.kill()
        holder.wait(timeout=30)


RANK_OPENS_WRITER = """
import sys
import torch.distributed as dist
from sadp_data import ScoreStore
from sadp_data.store import ScoreStoreError
rank, workdir = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=2)
if rank == 0:
    store = ScoreStore.create(f"{workdir}/s.zarr", 10)
dist.barrier()
if rank == 1:
    try:
        ScoreStore.open(f"{workdir}/s.zarr", "r+")
        print("opened")
    except ScoreStoreError as error:
        print("refused:", error)
dist.barrier()
"""


def test_ranks_above_zero_opening_the_sidecar_for_writing_are_told_to_use_open_store(tmp_path):
    import subprocess
    import sys

    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_OPENS_WRITER, str(rank), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert "refused:" in outputs[1] and "open_store" in outputs[1], outputs[1]


def _scored_sidecar(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    with ScoreStore.create(path, 1000, chunk_size=100) as store:
        store.update(np.arange(1000), np.random.default_rng(0).gamma(1.0, size=1000))
    return path


def test_a_deleted_score_chunk_is_refused_naming_the_chunk_file(tmp_path):
    from sadp_data.store import ScoreStoreError

    path = _scored_sidecar(tmp_path)
    (path / "score" / "c" / "3").unlink()
    with pytest.raises(ScoreStoreError, match=r"score/c/3: chunk file missing"):
        ScoreStore.open(path, "r")


def test_random_bytes_over_a_chunk_are_refused_naming_the_chunk_file(tmp_path):
    from sadp_data.store import ScoreStoreError

    path = _scored_sidecar(tmp_path)
    chunk = path / "seen" / "c" / "7"
    data = bytearray(chunk.read_bytes())
    data[10:30] = np.random.default_rng(1).integers(0, 256, 20, dtype=np.uint8).tobytes()
    chunk.write_bytes(bytes(data))
    with pytest.raises(ScoreStoreError, match=r"seen/c/7.*corrupt"):
        ScoreStore.open(path, "r")


def test_chunks_that_equal_the_fill_value_stay_on_disk(tmp_path):
    path = tmp_path / "s.zarr"
    with ScoreStore.create(path, 300, chunk_size=100) as store:
        store.update(np.arange(100), np.zeros(100))  # a chunk of zero scores: zarr would delete it by default
    assert sorted(p.name for p in (path / "score" / "c").iterdir()) == ["0", "1", "2"]
    with ScoreStore.open(path, "r") as reopened:
        assert reopened.seen()[:100].tolist() == [1] * 100
