"""ScoreStore: round trips, validation, background writing, crash safety."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sadp_data import ScoreStore, ScoreStoreError, dataset_fingerprint


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with ScoreStore.create(path, 1000, fingerprint="abc", chunk_size=128) as store:
        store.set_epoch(3)
        store.update(np.array([1, 5, 999]), np.array([0.5, 2.0, 7.0]))
        store.update(torch.tensor([5]), torch.tensor([3.0]), epoch=4)
        store.record_keep_ratio(3, 0.7)
        assert store.scores()[5] == 3.0 and store.version == 2
    reopened = ScoreStore.open(path, "r", num_examples=1000, fingerprint="abc")
    np.testing.assert_array_equal(reopened.scores()[[1, 5, 999, 0]], [0.5, 3.0, 7.0, 0.0])
    np.testing.assert_array_equal(reopened.seen()[[1, 5, 999, 0]], [1, 2, 1, 0])
    np.testing.assert_array_equal(reopened.last_epoch()[[1, 5, 999, 0]], [3, 4, 3, -1])
    assert reopened.version == 2 and reopened.keep_ratio_history == [(3, 0.7)]
    assert reopened.fingerprint == "abc" and "read-only" in repr(reopened)
    with pytest.raises(PermissionError, match="read-only"):
        reopened.update([0], [1.0])
    with pytest.raises(ValueError, match="read-only"):
        reopened.scores()[0] = 1.0


def test_duplicate_indices_count_each_occurrence(tmp_path: Path) -> None:
    with ScoreStore.create(tmp_path / "s.zarr", 10) as store:
        store.update([2, 2, 3], [1.0, 4.0, 2.0])
        assert store.seen()[2] == 2 and store.scores()[2] == 4.0


@pytest.mark.parametrize(
    ("indices", "scores", "error", "message"),
    [
        ([0, 10], [1.0, 1.0], IndexError, r"position 1: 10"),
        ([-1], [1.0], IndexError, r"position 0: -1"),
        ([0.0, 1.0], [1.0, 1.0], TypeError, "integer array, got dtype float64"),
        ([True], [1.0], TypeError, "integer array, got dtype bool"),
        ([[0, 1]], [1.0, 1.0], ValueError, "1-D"),
        (
            [0, 1, 2],
            [1.0, float("nan"), -2.0],
            ValueError,
            r"2 scores are NaN, infinite or negative \(position 1: nan, position 2: -2.0",
        ),
        ([0, 1], [1.0, float("inf")], ValueError, "position 1: inf"),
        ([0, 1], [1.0], ValueError, r"one value per index \(2\)"),
    ],
)
def test_bad_updates_are_refused_and_change_nothing(tmp_path, indices, scores, error, message) -> None:
    with ScoreStore.create(tmp_path / "s.zarr", 10) as store:
        with pytest.raises(error, match=message):
            store.update(np.asarray(indices), np.asarray(scores))
        assert store.version == 0 and store.seen().sum() == 0


def test_open_refuses_mismatched_or_foreign_sidecars(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    ScoreStore.create(path, 10, fingerprint="data-a").close()
    with pytest.raises(ScoreStoreError, match="holds scores for 10 examples, but the dataset has 11"):
        ScoreStore.open(path, num_examples=11)
    with pytest.raises(ScoreStoreError, match="another dataset"):
        ScoreStore.open(path, fingerprint="data-b")
    with pytest.raises(FileExistsError, match="already exists"):
        ScoreStore.create(path, 10)
    with pytest.raises(ScoreStoreError, match="not a score sidecar"):
        ScoreStore.open(tmp_path)
    with pytest.raises(ValueError, match="num_examples must be a positive integer"):
        ScoreStore.create(tmp_path / "t.zarr", 0)
    ScoreStore.create(path, 12, overwrite=True).close()
    assert ScoreStore.open(path, "r").num_examples == 12


def test_open_refuses_a_corrupt_group(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    ScoreStore.create(path, 10).close()
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"].pop("num_examples")
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ScoreStoreError, match="num_examples"):
        ScoreStore.open(path)


class _BlockingArray:
    """Stands in for a zarr array: every write waits for ``release`` (a very slow disk)."""

    def __init__(self, array, release: threading.Event) -> None:
        self.array, self.release = array, release

    def __setitem__(self, key, value) -> None:
        self.release.wait()
        self.array[key] = value


def test_updates_never_wait_for_disk_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = ScoreStore.create(path, 5000, chunk_size=100, flush_interval=0.01)
    release = threading.Event()
    for name in ("score", "seen", "epoch"):
        store._mirror.arrays[name] = _BlockingArray(store._mirror.arrays[name], release)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(2000):
        store.update(rng.integers(0, 5000, 64), rng.random(64))
    elapsed = time.perf_counter() - start
    assert elapsed < 30  # only a hang would exceed this: the writer is blocked the whole time
    expected = store.scores().copy(), store.seen().copy()
    release.set()
    store.close()
    reopened = ScoreStore.open(path, "r")
    np.testing.assert_array_equal(reopened.scores(), expected[0])
    np.testing.assert_array_equal(reopened.seen(), expected[1])
    assert reopened.version == 2000


class _FailingArray:
    def __setitem__(self, key, value) -> None:
        raise OSError(28, "No space left on device")


def test_writer_errors_surface_in_the_caller(tmp_path: Path) -> None:
    store = ScoreStore.create(tmp_path / "s.zarr", 100)
    store._mirror.arrays["score"] = _FailingArray()
    store.update([1], [1.0])
    with pytest.raises(ScoreStoreError, match="No space left on device"):
        store.flush()
    with pytest.raises(ScoreStoreError, match="No space left"):
        store.update([2], [1.0])
    with pytest.raises(ScoreStoreError):
        store.close()


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from sadp_data import ScoreStore
    store = ScoreStore.create(sys.argv[1], 1000, chunk_size=128, flush_interval=0.0)
    step = 0
    while True:
        store.update(np.arange(1000), np.full(1000, float(step)))
        step += 1
        if step % 20 == 0:
            store.flush()
            print(store.version, flush=True)
    """
)


@pytest.mark.slow
def test_store_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    flushed = [int(child.stdout.readline()) for _ in range(5)]
    time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    store = ScoreStore.open(path, "r")
    assert store.version >= flushed[-1]
    # Update `step` writes score = step to every example (seen becomes step + 1). Nothing flushed
    # is lost, and each chunk file is whole: one value per chunk of 128.
    assert store.scores().min() >= flushed[-1] - 1 and store.seen().min() >= flushed[-1]
    for array in (store.scores(), store.seen(), store.last_epoch()):
        chunks = np.split(array, range(128, 1000, 128))
        assert all(np.unique(chunk).size == 1 for chunk in chunks)


@pytest.mark.slow
def test_open_stores_are_flushed_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    code = (
        "import sys; from sadp_data import ScoreStore; "
        "s = ScoreStore.create(sys.argv[1], 50, flush_interval=3600); s.update([3], [9.0])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    assert ScoreStore.open(path, "r").scores()[3] == 9.0


@pytest.mark.slow
def test_updates_still_in_flight_are_applied_before_the_exit_flush(tmp_path: Path) -> None:
    """A scorer's device-to-host copies wait in a drain hook: a script that ends without close() keeps them."""
    path = tmp_path / "s.zarr"
    code = (
        "import sys; from sadp_data import ScoreStore; "
        "s = ScoreStore.create(sys.argv[1], 50, flush_interval=3600); "
        "s.add_drain_hook(lambda: s.update([4], [7.0]))"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    assert ScoreStore.open(path, "r").scores()[4] == 7.0


def test_dataset_fingerprint_tracks_content() -> None:
    a = [(np.arange(4) + i, i % 3) for i in range(20)]
    b = list(a)
    b[19] = (np.arange(4) + 100, 1)
    assert dataset_fingerprint(a) == dataset_fingerprint(list(a))
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    assert dataset_fingerprint(a) != dataset_fingerprint(a[:19])


def test_forked_children_do_not_flush_the_parents_store(tmp_path: Path) -> None:
    """A DataLoader worker is a fork: its copy of the store has no writer thread and must not wait for one."""
    import multiprocessing

    store = ScoreStore.create(tmp_path / "s.zarr", 100, flush_interval=3600)
    store.update([1, 2], [1.0, 2.0])  # dirty, not yet persisted
    child = multiprocessing.get_context("fork").Process(target=store.flush)
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    store.close()
    assert ScoreStore.open(tmp_path / "s.zarr", "r").scores()[2] == 2.0


def test_update_kernel_matches_its_numpy_reference() -> None:
    from sadp_data.store._update import apply_update, apply_update_reference

    rng = np.random.default_rng(4)
    for trial in range(20):
        n, chunk = int(rng.integers(1, 500)), int(rng.integers(1, 64))
        arrays = [
            rng.random(n, dtype=np.float32),
            rng.integers(0, 3, n).astype(np.uint32),
            rng.integers(-1, 3, n).astype(np.int32),
            np.zeros(-(-n // chunk), np.bool_),
        ]
        index = rng.integers(0, n, int(rng.integers(0, 300)))  # with repeats
        values = rng.random(index.shape[0], dtype=np.float32)
        if trial % 4 == 1 and index.size:
            index[rng.integers(0, index.size)] = n + 3  # out of range
        if trial % 4 == 2 and index.size:
            values[rng.integers(0, index.size)] = np.nan
        if trial % 4 == 3 and index.size:
            values[rng.integers(0, index.size)] = -1.0
        expected = [a.copy() for a in arrays]
        got = [a.copy() for a in arrays]
        assert apply_update(*got, index, values, 7, chunk) == apply_update_reference(*expected, index, values, 7, chunk)
        for left, right in zip(got, expected, strict=True):
            np.testing.assert_array_equal(left, right)


def test_a_snapshot_is_written_once_per_version_and_always_after_reopening(tmp_path: Path) -> None:
    from sadp_data.store import ScoreSnapshot

    path = tmp_path / "scores.zarr"
    store = ScoreStore.create(path, 10)
    store.update(np.arange(10), np.arange(10, dtype=np.float32))
    writes = []
    original = store._mirror.write_snapshot
    store._mirror.write_snapshot = lambda snapshot: (writes.append(snapshot.version), original(snapshot))
    first = store.snapshot()
    for _ in range(3):  # e.g. pruned epochs planned with no score update in between
        store.save_snapshot(store.snapshot())
        store.flush()
    store.update([0], [5.0])
    store.save_snapshot(store.snapshot())
    store.flush()
    assert writes == [first.version, first.version + 1]
    store.close()

    # A new process may reach an old version number with other scores (after a crash lost updates):
    # its first save is always written.
    reopened = ScoreStore.open(path)
    stale = reopened.saved_snapshot()
    other = ScoreSnapshot(np.full(10, 7.0, dtype=np.float32), np.ones(10, dtype=np.uint32), stale.version)
    reopened.save_snapshot(other)
    reopened.flush()
    reopened.close()
    np.testing.assert_array_equal(ScoreStore.open(path, "r").saved_snapshot().scores, other.scores)


@pytest.mark.slow
def test_the_writer_thread_lets_go_of_a_snapshot_once_it_is_written(tmp_path: Path) -> None:
    """After a flush nothing in the store holds the persisted snapshot (a copy of the whole table)."""
    import gc
    import weakref

    with ScoreStore.create(tmp_path / "s.zarr", 1000) as store:
        store.update(np.arange(1000), np.ones(1000, np.float32))
        snapshot = store.begin_epoch(1, 0.5)
        held = weakref.ref(snapshot)
        store.flush()
        assert store.saved_snapshot().version == snapshot.version  # on disk
        del snapshot
        gc.collect()
        assert held() is None
