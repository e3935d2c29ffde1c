"""Elastic resume: a mid-epoch checkpoint taken at world size W continues at W′.

Ranks are simulated in one process (``SADPSampler(num_replicas=W, rank=r)``): every rank plans the
same epoch from the same store, so each rank's sampler here sees exactly what it would see in its
own process. The remaining examples must be delivered once each across the new ranks (plus the
padding that keeps ranks in lockstep), in plan order, whatever W and W′.
"""

from __future__ import annotations

import numpy as np
import pytest

from sadp_data import SADPSampler, ScoreStore
from sadp_data.distributed import elastic_positions, per_rank, rank_positions, remaining_positions

N, BATCH = 203, 8


@pytest.fixture
def store(tmp_path):
    with ScoreStore.create(tmp_path / "scores.zarr", N) as opened:
        opened.update(np.arange(N), np.random.default_rng(0).random(N, dtype=np.float32) + 0.05)
        yield opened


def _samplers(store, world: int) -> list[SADPSampler]:
    return [
        SADPSampler(store, keep_ratio=0.5, epochs=4, warmup_epochs=1, seed=7, num_replicas=world, rank=rank)
        for rank in range(world)
    ]


def _interrupted(store, world: int, steps: int) -> tuple[list[int], list[int], dict]:
    """Every rank runs ``steps`` batches of epoch 2; returns (plan, delivered, rank 0's state)."""
    ranks = _samplers(store, world)
    delivered: list[int] = []
    for sampler in ranks:
        sampler.set_epoch(2)
        iterator = iter(sampler)
        delivered += [next(iterator) for _ in range(min(steps * BATCH, len(sampler)))]
    states = [sampler.state_dict() for sampler in ranks]
    assert all(state["position"] == states[0]["position"] for state in states)  # lockstep
    return ranks[0].plan.order.tolist(), delivered, states[0]


@pytest.mark.parametrize(("saved", "resumed"), [(2, 1), (2, 4), (4, 3), (3, 2), (1, 2)])
def test_a_checkpoint_resumes_at_another_world_size_with_the_remaining_examples_once(store, saved, resumed):
    plan, delivered, state = _interrupted(store, saved, steps=3)
    new = _samplers(store, resumed)
    for sampler in new:
        sampler.load_state_dict(state)
    parts = [list(sampler) for sampler in new]
    assert len({len(part) for part in parts}) == 1 and all(len(p) == len(s) for p, s in zip(parts, new, strict=True))
    done = [i for i in plan if i not in set(delivered)]
    rest = [i for part in parts for i in part]
    assert set(rest) == set(done) and set(rest).isdisjoint(delivered)  # exactly the remaining examples
    assert rest[: len(done)] == done  # in plan order, each once; then the padding repeats
    assert len(rest) - len(done) < resumed


def test_an_elastic_resume_checkpoints_and_finishes_at_its_new_world_size(store):
    plan, delivered, state = _interrupted(store, 2, steps=2)
    new = _samplers(store, 3)
    for sampler in new:
        sampler.load_state_dict(state)
    take = 3
    first = [list(iter(sampler))[:take] for sampler in new]
    for sampler, part in zip(new, first, strict=True):  # take a few each, then checkpoint again
        sampler.load_state_dict(state)
        iterator = iter(sampler)
        assert [next(iterator) for _ in range(take)] == part
    again = [sampler.state_dict() for sampler in new]
    assert again[0]["resumed_from"] == [2, 2 * BATCH] and again[0]["num_replicas"] == 3
    final = _samplers(store, 3)
    for sampler, saved in zip(final, again, strict=True):
        sampler.load_state_dict(saved)
    rest = [i for part in first for i in part] + [i for sampler in final for i in sampler]
    assert set(rest) == set(plan) - set(delivered)
    with pytest.raises(ValueError, match="finish that epoch with 3 ranks"):
        _samplers(store, 2)[0].load_state_dict(again[0])


def test_the_next_epoch_after_an_elastic_resume_is_planned_as_usual(store):
    _, _, state = _interrupted(store, 2, steps=1)
    (sampler,) = _samplers(store, 1)
    sampler.load_state_dict(state)
    list(sampler)
    sampler.set_epoch(3)
    assert sampler.state_dict()["resumed_from"] is None and len(list(sampler)) == len(sampler.plan)


def test_remaining_positions_is_the_complement_of_what_the_saved_ranks_delivered():
    for count, world, delivered in [(10, 3, 2), (10, 3, 4), (7, 2, 0), (5, 4, 2)]:
        taken = {int(p) for r in range(world) for p in rank_positions(count, r, world)[:delivered]}
        assert remaining_positions(count, world, delivered).tolist() == sorted(set(range(count)) - taken)
    assert elastic_positions(10, 3, 2, 1, 2).tolist() == remaining_positions(10, 3, 2)[per_rank(4, 2) :].tolist()
    with pytest.raises(ValueError, match="delivered=5"):
        remaining_positions(10, 3, 5)


def test_wrap_resumes_elastically_with_its_weights(store):
    import torch
    from torch.utils.data import TensorDataset

    from sadp_data import wrap

    dataset = TensorDataset(torch.arange(N))
    saved = [wrap(dataset, sampler, batch_size=BATCH) for sampler in _samplers(store, 2)]
    delivered = []
    for loader in saved:
        loader.set_epoch(2)
        batches = iter(loader)
        delivered += [int(i) for _ in range(2) for i in next(batches)[1]]
    state = saved[0].state_dict()
    new = [wrap(dataset, sampler, batch_size=BATCH) for sampler in _samplers(store, 4)]
    rest = []
    for loader in new:
        loader.load_state_dict(state)
        for x, index, weight in loader:
            assert torch.equal(x, index) and weight.shape == index.shape  # items, indices and weights agree
            rest += index.tolist()
    plan = saved[0].sampler.plan.order.tolist()
    assert set(rest) == set(plan) - set(delivered) and len(rest) - len(set(rest)) < 4
