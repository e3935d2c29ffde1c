"""torchdata's StatefulDataLoader checkpoints and restores a loader fed by SADPSampler exactly.

The sampler is ``Stateful`` (``state_dict``/``load_state_dict``), so torchdata saves its state rather
than replaying it; the restored epoch is re-planned from the persisted score snapshot even though the
scores moved on after the checkpoint.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import sadp_data as sd

stateful = pytest.importorskip("torchdata.stateful_dataloader")
N = 300


@pytest.fixture
def store(tmp_path: Path):
    store = sd.ScoreStore.create(tmp_path / "s.zarr", N)
    store.update(np.arange(N), np.random.default_rng(0).gamma(0.5, size=N) + 0.01)
    yield store
    store.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_round_trip_mid_epoch(store, workers: int) -> None:
    dataset = TensorDataset(torch.arange(N))

    def loader_at_epoch_one():
        sampler = sd.SADPSampler(store, 0.5, epochs=3, seed=2, schedule="constant")
        sampler.set_epoch(1)
        return stateful.StatefulDataLoader(dataset, batch_size=16, sampler=sampler, num_workers=workers)

    loader = loader_at_epoch_one()
    iterator = iter(loader)
    head = [next(iterator)[0] for _ in range(4)]
    state = loader.state_dict()
    tail = [batch[0] for batch in iterator]
    uninterrupted = torch.cat(head + tail)
    assert len(uninterrupted) == 150
    store.update(np.arange(N), np.linspace(1.0, 50.0, N))  # training went on after the checkpoint

    resumed_loader = loader_at_epoch_one()
    resumed_loader.load_state_dict(state)
    resumed = [batch[0] for batch in resumed_loader]
    torch.testing.assert_close(torch.cat(head + resumed), uninterrupted)


def test_a_wrap_loader_state_carries_the_format_and_fingerprint_and_is_validated(tmp_path: Path) -> None:
    from sadp_data import resume

    with sd.ScoreStore.create(tmp_path / "a.zarr", N, fingerprint="fp-a") as store:
        store.update(np.arange(N), np.full(N, 1.0))
        loader = sd.wrap(TensorDataset(torch.arange(N)), sd.SADPSampler(store, 0.5, epochs=3), batch_size=16)
        loader.set_epoch(1)
        iterator = iter(loader)
        next(iterator)
        state = loader.state_dict()
        assert (state["format_version"], state["fingerprint"], state["position"]) == (resume.STATE_FORMAT, "fp-a", 16)
        for key, value in (("position", -5), ("epoch", "1"), ("num_replicas", 0)):
            with pytest.raises(resume.ResumeStateError, match=f"'{key}'"):
                loader.load_state_dict({**state, key: value})
        with pytest.raises(resume.ResumeStateError, match="'fp-b'"):
            loader.load_state_dict({**state, "fingerprint": "fp-b"})
        loader.load_state_dict(state)
        assert loader.sampler.resume_position == 16


@pytest.fixture
def shard_loader(tmp_path: Path):
    """``make()``: a ``ShardLoader`` (one worker, batches of 16) over 250 scored samples, epoch 1 (pruned)."""
    from sadp_data.adapters.webdataset import ScoredShards
    from sadp_data.cli import main
    from sadp_data.shards import ShardIndex

    np.savez(tmp_path / "data.npz", x=np.zeros((250, 3), np.uint8), y=np.zeros(250, np.int64))
    assert main(["convert", str(tmp_path / "data.npz"), str(tmp_path / "shards"), "--no-progress"]) == 0
    store = ShardIndex.load(tmp_path / "shards").open_store()

    def make():
        sampler = ScoredShards.sampler_for(tmp_path / "shards", store, keep_ratio=0.5, epochs=4, method="random")
        sampler.set_epoch(1)
        return ScoredShards(tmp_path / "shards", sampler).to_tuple("x.npy").loader(16)

    yield make
    store.close()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("worker_positions", "abc"),
        ("worker_positions", [10**9]),
        ("worker_positions", [16, 16]),
        ("next_worker", 5),
        ("num_workers", None),
        ("batch_size", "16"),
    ],
)
def test_a_shard_loader_state_with_malformed_worker_fields_is_refused_by_key(shard_loader, key, value) -> None:
    from sadp_data import resume

    loader = shard_loader()
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    assert state["worker_positions"] == [16] and state["format_version"] == resume.STATE_FORMAT
    with pytest.raises(resume.ResumeStateError, match=f"'{key}'"):
        shard_loader().load_state_dict({**state, key: value})
    resumed = shard_loader()
    resumed.load_state_dict(state)
    assert len(resumed) == len(loader) - 1
