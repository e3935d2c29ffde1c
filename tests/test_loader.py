"""wrap(): the user's DataLoader settings, plus indices and weights."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _samplers import unbiased_sampler
from torch.utils.data import DataLoader, Dataset, IterableDataset

from sadp_data import SADPSampler, ScoreStore, wrap


class Squares(Dataset):
    def __init__(self, n: int, as_dict: bool = False) -> None:
        self.n, self.as_dict = n, as_dict

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        x = torch.tensor([float(i), float(i * i)])
        return {"x": x, "y": i % 3} if self.as_dict else (x, i % 3)


@pytest.fixture
def sampler(tmp_path: Path) -> SADPSampler:
    store = ScoreStore.create(tmp_path / "s.zarr", 200)
    store.update(np.arange(200), np.random.default_rng(0).random(200) + 0.01)
    sampler = unbiased_sampler(store, 0.6, epochs=3, seed=4)
    sampler.set_epoch(1)
    yield sampler
    store.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_tuple_batches_gain_indices_and_weights(sampler: SADPSampler, num_workers: int) -> None:
    user = DataLoader(Squares(200), batch_size=16, num_workers=num_workers, drop_last=False)
    loader = wrap(user, sampler)
    assert loader.loader.num_workers == num_workers and loader.loader.batch_size == 16
    seen = []
    for x, _, idx, w in loader:
        assert idx.dtype == torch.int64 and w.dtype == torch.float32
        np.testing.assert_array_equal(x[:, 0].long().numpy(), idx.numpy())
        np.testing.assert_array_equal(w.numpy(), sampler.weights(idx))
        seen.extend(idx.tolist())
    assert len(loader) == 8
    np.testing.assert_array_equal(seen, sampler.plan.order)


def test_dict_batches_and_custom_collate(sampler: SADPSampler) -> None:
    calls = []

    def collate(items):
        calls.append(len(items))
        return {"x": torch.stack([i["x"] for i in items]), "y": torch.tensor([i["y"] for i in items])}

    loader = wrap(DataLoader(Squares(200, as_dict=True), batch_size=50, collate_fn=collate, drop_last=True), sampler)
    batches = list(loader)
    assert len(batches) == len(loader) == 2 and calls == [50, 50]
    assert set(batches[0]) == {"x", "y", "index", "weight"}
    np.testing.assert_array_equal(batches[0]["x"][:, 0].long(), batches[0]["index"])


def test_wrap_a_dataset_with_kwargs(sampler: SADPSampler) -> None:
    loader = wrap(Squares(200), sampler, batch_size=40)
    assert sum(len(idx) for _, _, idx, _ in loader) == 120


def test_loader_state_dict_counts_delivered_examples(sampler: SADPSampler) -> None:
    loader = wrap(DataLoader(Squares(200), batch_size=10, num_workers=2), sampler)
    iterator = iter(loader)
    head = [next(iterator)[2] for _ in range(3)]
    state = loader.state_dict()
    assert state["position"] == 30
    del iterator
    loader.load_state_dict(state)
    rest = []
    for x, _, idx, w in loader:
        np.testing.assert_array_equal(x[:, 0].long().numpy(), idx.numpy())  # resumed batches stay aligned
        np.testing.assert_array_equal(w.numpy(), sampler.weights(idx))
        rest.append(idx)
    np.testing.assert_array_equal(torch.cat(head + rest).numpy(), sampler.plan.order)


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_each_rank_gets_the_weights_of_its_own_slice(tmp_path: Path, rank: int) -> None:
    store = ScoreStore.create(tmp_path / "s.zarr", 101)
    store.update(np.arange(101), np.random.default_rng(1).random(101) + 0.01)
    sampler = unbiased_sampler(store, 0.5, epochs=3, seed=2, num_replicas=3, rank=rank)
    sampler.set_epoch(1)
    delivered = []
    for x, _, idx, w in wrap(DataLoader(Squares(101), batch_size=7, num_workers=2), sampler):
        np.testing.assert_array_equal(x[:, 0].long().numpy(), idx.numpy())
        np.testing.assert_array_equal(w.numpy(), sampler.weights(idx))
        delivered.append(idx)
    np.testing.assert_array_equal(torch.cat(delivered).numpy(), sampler.rank_order())
    store.close()


def test_wrap_errors(sampler: SADPSampler) -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    with pytest.raises(TypeError, match="map-style"):
        wrap(DataLoader(Stream(), batch_size=2), sampler)
    with pytest.raises(ValueError, match="the dataset has 10 examples but the sampler"):
        wrap(DataLoader(Squares(10), batch_size=2), sampler)
    with pytest.raises(TypeError, match="custom batch_sampler"):
        wrap(DataLoader(Squares(200), batch_sampler=[[0, 1]]), sampler)
    with pytest.raises(ValueError, match="in_order=True"):
        wrap(DataLoader(Squares(200), batch_size=4, num_workers=2, in_order=False), sampler)
    with pytest.raises(TypeError, match="sets 'shuffle' itself"):
        wrap(Squares(200), sampler, shuffle=True)
    with pytest.raises(KeyError, match="already has keys"):
        bad = [{"x": torch.zeros(1), "index": 0}] * 200
        next(iter(wrap(bad, sampler, batch_size=4)))


def test_a_second_pass_without_set_epoch_warns_and_set_epoch_silences_it(sampler: SADPSampler) -> None:
    loader = wrap(DataLoader(Squares(200), batch_size=50), sampler)
    first = [idx for *_, idx, _ in loader]
    with pytest.warns(RuntimeWarning, match=r"iterated again at epoch 1 without set_epoch\(\)"):
        replay = [idx for *_, idx, _ in loader]
    np.testing.assert_array_equal(torch.cat(replay).numpy(), torch.cat(first).numpy())
    for epoch in (1, 2):  # set_epoch again (a deliberate replay) or the next epoch: no warning
        sampler.set_epoch(epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert sum(len(idx) for *_, idx, _ in loader) == sampler.epoch_length()


def test_wrap_warns_that_shuffle_true_is_replaced(sampler: SADPSampler) -> None:
    with pytest.warns(UserWarning, match="built with shuffle=True.*without shuffle=True to silence"):
        loader = wrap(DataLoader(Squares(200), batch_size=50, shuffle=True), sampler)
    assert [int(i) for *_, idx, _ in loader for i in idx] == sampler.plan.order.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrap(DataLoader(Squares(200), batch_size=50), sampler)


def test_unpacking_a_batch_into_the_user_fields_alone_says_what_it_holds(sampler: SADPSampler) -> None:
    loader = wrap(DataLoader(Squares(200), batch_size=50), sampler)
    with pytest.raises(ValueError, match=r"holds 4 values, not 2.*`for x, y, idx, w in loader`"):
        for _x, _y in loader:
            pass
    sampler.set_epoch(2)
    batch = next(iter(loader))
    x, _y, _idx, _w = batch  # the right count, starred unpacking and plain iteration are untouched
    first, *rest = batch
    assert len(list(batch)) == 4 and len(rest) == 3 and first is x and isinstance(batch, tuple)


def test_pin_memory_pins_indices_and_weights_only_where_the_dataloader_pins_its_batches(sampler: SADPSampler) -> None:
    """spikingjelly's examples build loaders with pin_memory=True; on a machine without an accelerator the
    DataLoader only warns and does not pin, and the weights must follow it instead of failing."""
    user = DataLoader(Squares(200), batch_size=50, pin_memory=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        batches = list(wrap(user, sampler))
    assert len(batches) == 3
    for x, _, idx, w in batches:
        assert w.is_pinned() == idx.is_pinned() == x.is_pinned()
        np.testing.assert_array_equal(w.numpy(), sampler.weights(idx))
