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
