"""ScoreStore.begin_epoch: the one call between two epochs, and the epoch every recorded score carries."""

from pathlib import Path

import numpy as np
import pytest
import torch

import sadp_data as sd
from sadp_data.distributed import ScoreExchange


@pytest.fixture
def store(tmp_path: Path):
    with sd.ScoreStore.create(tmp_path / "s.zarr", 20, chunk_size=8) as opened:
        opened.update(np.arange(20), np.linspace(0.1, 2.0, 20))
        yield opened


def test_begin_epoch_returns_the_snapshot_and_stamps_later_updates(store: sd.ScoreStore) -> None:
    snapshot = store.begin_epoch(3, 1.0)
    assert snapshot.version == store.version == 1 and store.current_epoch == 3
    np.testing.assert_array_equal(snapshot.scores, store.scores())
    np.testing.assert_array_equal(snapshot.last_epoch, np.full(20, -1))
    store.update([4], [9.0])
    store.update([5], [9.0], epoch=7)  # an explicit epoch wins over the stamp
    assert store.last_epoch()[[4, 5, 6]].tolist() == [3, 7, -1]
    assert snapshot.scores[4] != 9.0  # a copy: later updates do not reach it


def test_only_pruned_epochs_persist_their_snapshot(store: sd.ScoreStore) -> None:
    store.begin_epoch(0, 1.0)
    store.flush()
    assert store.saved_snapshot() is None
    store.begin_epoch(1, 0.5, persist_snapshot=False)  # a plan that reads no scores
    store.flush()
    assert store.saved_snapshot() is None
    pruned = store.begin_epoch(2, 0.5)
    store.flush()
    saved = store.saved_snapshot()
    assert saved is not None and saved.version == pruned.version
    np.testing.assert_array_equal(saved.scores, pruned.scores)


def test_the_keep_ratio_is_recorded_and_persisted(store: sd.ScoreStore, tmp_path: Path) -> None:
    store.begin_epoch(0, 1.0)
    store.begin_epoch(1, 0.5)
    store.begin_epoch(1, 0.6)  # replanning an epoch replaces its entry
    assert store.keep_ratio_history == [(0, 1.0), (1, 0.6)]
    store.close()
    with sd.ScoreStore.open(tmp_path / "s.zarr", "r") as reopened:
        assert reopened.keep_ratio_history == [(0, 1.0), (1, 0.6)]
        snapshot = reopened.begin_epoch(2, 0.5)  # read-only: nothing recorded or saved, and no error
        assert snapshot.version == 1 and reopened.keep_ratio_history == [(0, 1.0), (1, 0.6)]


def test_sync_hooks_run_before_the_snapshot_is_taken(store: sd.ScoreStore) -> None:
    calls = []

    def exchange() -> None:  # stands in for ScoreExchange.sync: applies another rank's pending scores
        calls.append(store.version)
        store.update([0], [5.0])

    store.add_sync_hook(exchange)
    snapshot = store.begin_epoch(1, 0.5)
    assert calls == [1] and snapshot.version == 2 and snapshot.scores[0] == 5.0
    store.synchronize()  # the hooks alone: no barrier outside begin_epoch
    assert calls == [1, 2]
    # a data-parallel sampler's boundary without a process group (one process): hooks, no barrier, no error
    assert store.begin_epoch(2, 0.5, num_replicas=2).version == 4 and calls == [1, 2, 3]


def test_resuming_reuses_the_persisted_snapshot_without_syncing_or_saving(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with sd.ScoreStore.create(path, 10) as store:
        store.update(np.arange(10), np.ones(10))
        planned = store.begin_epoch(1, 0.5)
        store.update([0], [3.0])  # the interrupted epoch's scores move on
    with sd.ScoreStore.open(path) as store:
        calls = []
        store.add_sync_hook(lambda: calls.append(True))
        writes = []
        original = store._mirror.write_snapshot
        store._mirror.write_snapshot = lambda snapshot: (writes.append(snapshot.version), original(snapshot))
        saved = store.saved_snapshot()
        assert saved is not None and saved.version == planned.version
        assert store.begin_epoch(1, 0.5, resume_from=saved) is saved
        store.flush()
        assert calls == [] and writes == [] and store.current_epoch == 1
        assert store.keep_ratio_history == [(1, 0.5)]


def test_a_mirror_takes_the_boundary_in_memory_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    sd.ScoreStore.create(path, 10).close()
    with sd.ScoreStore.open(path, "mirror") as mirror:
        mirror.update(np.arange(10), np.ones(10))
        assert mirror.begin_epoch(1, 0.5).version == 1
        assert mirror.keep_ratio_history == [(1, 0.5)] and mirror.saved_snapshot() is None
    with sd.ScoreStore.open(path, "r") as on_disk:
        assert on_disk.version == 0 and on_disk.keep_ratio_history == []


@pytest.mark.parametrize(("method", "persists"), [("sadp", True), ("random", False)])
def test_the_sampler_crosses_the_boundary_once_per_plan(store: sd.ScoreStore, method: str, persists: bool) -> None:
    calls = []
    begin = store.begin_epoch

    def spy(epoch, keep_ratio, **options):
        calls.append((epoch, keep_ratio, options))
        return begin(epoch, keep_ratio, **options)

    store.begin_epoch = spy
    sampler = sd.SADPSampler(store, keep_ratio=0.5, epochs=4, warmup_epochs=1, method=method, schedule="constant")
    sampler.set_epoch(1)
    assert store.current_epoch == 1  # stamped as soon as the epoch is selected, before any plan
    list(sampler)
    sampler.weights(sampler.plan.order[:2])
    assert calls == [(1, 0.5, {"resume_from": None, "persist_snapshot": persists, "num_replicas": 1})]
    assert sampler.plan.snapshot_version == store.version
    store.flush()
    assert (store.saved_snapshot() is not None) == persists


def test_a_resumed_sampler_passes_its_persisted_snapshot_to_the_boundary(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with sd.ScoreStore.create(path, 40) as store:
        store.update(np.arange(40), np.linspace(0.1, 4.0, 40))
        sampler = sd.SADPSampler(store, keep_ratio=0.5, epochs=4, schedule="constant", seed=3)
        sampler.set_epoch(1)
        iterator = iter(sampler)
        delivered = [next(iterator) for _ in range(5)]
        state = sampler.state_dict()
        store.update(np.arange(40), np.full(40, 0.5))  # scores move on after the checkpoint
    with sd.ScoreStore.open(path) as store:
        resumed = sd.SADPSampler(store, keep_ratio=0.5, epochs=4, schedule="constant", seed=3)
        resumed.load_state_dict(state)
        seen = []
        begin = store.begin_epoch

        def spy(epoch, keep_ratio, **options):
            seen.append(options["resume_from"])
            return begin(epoch, keep_ratio, **options)

        store.begin_epoch = spy
        rest = list(resumed)
        assert len(seen) == 1 and seen[0] is not None and seen[0].version == state["snapshot_version"]
        assert delivered + rest == sampler.plan.order.tolist()


def test_scorer_scores_carry_the_epoch_they_were_computed_in(store: sd.ScoreStore) -> None:
    model = torch.nn.Linear(4, 3)
    scorer = sd.SpikeAwareScorer(model, store)
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    store.set_epoch(5)
    out = model(x)
    scorer.step(torch.tensor([3, 4]), out, y, torch.nn.functional.cross_entropy(out, y, reduction="none"))
    assert store.last_epoch()[[2, 3, 4]].tolist() == [-1, 5, 5]


def test_exchanged_scores_keep_the_epoch_they_were_pushed_in(store: sd.ScoreStore, tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        exchange = ScoreExchange(store, every=10)
        store.set_epoch(0)
        exchange.push(torch.tensor([1, 2]), torch.tensor([1.5, 2.5]))
        store.set_epoch(1)  # the next epoch starts before the last scores of epoch 0 are exchanged
        exchange.push(torch.tensor([2, 3]), torch.tensor([7.0, 0.0]))
        before = store.version
        snapshot = store.begin_epoch(1, 0.5)  # the boundary pushes the pending exchange first
        assert store.version == before + 2  # one update per epoch present, oldest first
        assert snapshot.last_epoch[[1, 2, 3]].tolist() == [0, 1, 1]
        assert snapshot.scores[[1, 2, 3]].tolist() == [1.5, 7.0, 0.0]
        assert snapshot.seen[[1, 2, 3]].tolist() == [2, 3, 2]  # the fixture scored each once
    finally:
        dist.destroy_process_group()
