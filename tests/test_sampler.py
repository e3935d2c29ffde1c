"""SADPSampler and keep-ratio schedules."""

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
from _samplers import unbiased_sampler

from sadp_data import KeepRatioSchedule, ScoreStore
from sadp_data.kernels import sample_size
from sadp_data.methods import METHODS


@pytest.fixture
def store(tmp_path: Path) -> ScoreStore:
    store = ScoreStore.create(tmp_path / "s.zarr", 1000)
    rng = np.random.default_rng(0)
    store.update(np.arange(1000), rng.gamma(0.5, size=1000))
    yield store
    store.close()


def test_schedule_phases_and_speedup() -> None:
    schedule = KeepRatioSchedule(0.5, epochs=8, warmup_epochs=1, anneal_fraction=0.125)
    assert [schedule(e) for e in range(8)] == [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0]
    assert [schedule.phase(e) for e in (0, 1, 7)] == ["warmup", "prune", "anneal"]
    assert schedule.theoretical_speedup() == pytest.approx(8 / 5)
    linear = KeepRatioSchedule(0.4, epochs=6, warmup_epochs=1, anneal_fraction=0.0, shape="linear")
    assert [linear(e) for e in range(6)] == pytest.approx([1.0, 0.88, 0.76, 0.64, 0.52, 0.4])
    cosine = KeepRatioSchedule(0.4, epochs=6, warmup_epochs=1, anneal_fraction=0.0, shape="cosine")
    ratios = [cosine(e) for e in range(6)]
    assert ratios[-1] == pytest.approx(0.4) and all(a >= b for a, b in itertools.pairwise(ratios))
    assert KeepRatioSchedule(0.7, epochs=None)(1000) == 0.7
    with pytest.raises(ValueError, match="keep_ratio"):
        KeepRatioSchedule(1.5)
    with pytest.raises(ValueError, match="shape"):
        KeepRatioSchedule(0.5, shape="step")


def test_len_is_exact_and_iteration_matches_plan(store: ScoreStore) -> None:
    sampler = unbiased_sampler(store, 0.7, epochs=5, batch_size=64, seed=3)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == sample_size(1000, sampler.keep_ratio())
        assert len(set(drawn)) == len(drawn)
        np.testing.assert_array_equal(drawn, sampler.plan.order)
    assert sampler.num_batches(1) == 11 and sampler.num_batches(0) == 16
    assert sampler.total_steps() == 16 + 3 * 11 + 16
    assert sampler.theoretical_speedup() == pytest.approx(5 / (2 + 3 * 0.7))
    assert store.keep_ratio_history == [(e, 1.0 if e in (0, 4) else 0.7) for e in range(5)]


def test_plan_is_a_pure_function_of_snapshot_seed_and_epoch(tmp_path: Path, store: ScoreStore) -> None:
    a = unbiased_sampler(store, 0.5, epochs=4, seed=1)
    b = unbiased_sampler(store, 0.5, epochs=4, seed=1)
    c = unbiased_sampler(store, 0.5, epochs=4, seed=2)
    for sampler in (a, b, c):
        sampler.set_epoch(2)
    np.testing.assert_array_equal(a.plan.order, b.plan.order)
    assert not np.array_equal(a.plan.order, c.plan.order)
    assert a.plan.snapshot_version == store.version
    first = a.plan.order.copy()
    store.update(np.arange(1000), np.ones(1000))  # a new snapshot changes later plans, not this one
    np.testing.assert_array_equal(a.plan.order, first)
    a.set_epoch(2)
    np.testing.assert_array_equal(a.plan.order, first)


def test_high_scores_are_drawn_more_and_weighted_less(store: ScoreStore) -> None:
    sampler = unbiased_sampler(store, 0.3, epochs=None, warmup_epochs=0, seed=0)
    counts = np.zeros(1000)
    for epoch in range(50):
        sampler.set_epoch(epoch)
        counts[sampler.plan.order] += 1
    scores = store.scores()
    top, bottom = np.argsort(scores)[-100:], np.argsort(scores)[:100]
    assert counts[top].mean() > 2 * counts[bottom].mean()
    weights = sampler.weights(sampler.plan.order)
    order = sampler.plan.order
    assert np.corrcoef(scores[order], weights)[0, 1] < 0


def test_weights_lookup(store: ScoreStore) -> None:
    sampler = unbiased_sampler(store, 0.5, epochs=3)
    sampler.set_epoch(1)
    plan = sampler.plan
    np.testing.assert_array_equal(sampler.weights(plan.order[::-1]), plan.weights[::-1])
    missing = np.setdiff1d(np.arange(1000), plan.order)[:2]
    with pytest.raises(KeyError, match="not in the plan of epoch 1"):
        sampler.weights(missing)


def test_random_method_is_uniform_with_unit_weights() -> None:
    sampler = unbiased_sampler(None, 0.25, epochs=4, num_examples=400, method="random", seed=5)
    sampler.set_epoch(1)
    assert len(list(sampler)) == 100
    np.testing.assert_array_equal(sampler.plan.weights, 1.0)


def test_state_dict_resumes_the_identical_remaining_order(store: ScoreStore) -> None:
    sampler = unbiased_sampler(store, 0.6, epochs=4, seed=9)
    sampler.set_epoch(2)
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(123)]
    state = sampler.state_dict()
    assert state["position"] == 123 and state["epoch"] == 2
    resumed = unbiased_sampler(store, 0.6, epochs=4, seed=9)
    resumed.load_state_dict(state)
    assert len(resumed) == 600 - 123
    tail = list(resumed)
    np.testing.assert_array_equal(head + tail, sampler.plan.order)
    with pytest.raises(ValueError, match="seed=9"):
        unbiased_sampler(store, 0.6, epochs=4, seed=1).load_state_dict(state)


def test_resume_after_scores_moved_uses_the_persisted_snapshot(store: ScoreStore, tmp_path) -> None:
    sampler = unbiased_sampler(store, 0.6, epochs=4, seed=9)
    sampler.set_epoch(1)
    planned = sampler.plan.order.copy()
    state = {**sampler.state_dict(), "position": 100}
    store.update(np.arange(500), np.linspace(5.0, 9.0, 500))  # training moves the scores on
    store.close()
    reopened = ScoreStore.open(store.path)
    resumed = unbiased_sampler(reopened, 0.6, epochs=4, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.load_state_dict(state)
    assert list(resumed) == planned[100:].tolist()
    fresh = unbiased_sampler(reopened, 0.6, epochs=4, seed=9)
    fresh.set_epoch(1)
    assert fresh.plan.order.tolist() != planned.tolist()  # without the snapshot the plan would differ
    reopened.close()

    other = ScoreStore.create(tmp_path / "other.zarr", store.num_examples)  # no snapshot saved there
    for _ in range(3):
        other.update(np.arange(10), np.ones(10))
    with pytest.warns(RuntimeWarning, match="remaining order of this epoch will differ"):
        unbiased_sampler(other, 0.6, epochs=4, seed=9).load_state_dict(state)
    other.close()


def test_batch_sampler(store: ScoreStore) -> None:
    sampler = unbiased_sampler(store, 0.5, epochs=3, batch_size=64)
    sampler.set_epoch(1)
    batches = list(sampler.batch_sampler())
    assert len(batches) == sampler.num_batches() == 8
    assert sum(len(b) for b in batches) == 500


def test_bad_configuration_is_refused(store: ScoreStore) -> None:
    with pytest.raises(ValueError, match="needs a ScoreStore"):
        unbiased_sampler(None, 0.5, num_examples=10)
    with pytest.raises(ValueError, match="method must be one of"):
        unbiased_sampler(store, 0.5, method="no_such_method")
    with pytest.raises(ValueError, match="num_examples=10 but the store holds 1000"):
        unbiased_sampler(store, 0.5, num_examples=10)
    with pytest.raises(ValueError, match="keep_ratio"):
        unbiased_sampler(store, 0.0)
    with pytest.raises(ValueError, match="total_steps needs epochs"):
        unbiased_sampler(store, 0.5, batch_size=4).total_steps()
    with pytest.raises(ValueError, match="batch_size"):
        unbiased_sampler(store, 0.5).num_batches()


@pytest.mark.parametrize("backend", ["numpy", "torch", "cuda"])
def test_every_backend_drives_the_sampler(store: ScoreStore, backend: str) -> None:
    reference = unbiased_sampler(store, 0.3, epochs=3, seed=2, backend="numba")
    sampler = unbiased_sampler(store, 0.3, epochs=3, seed=2, backend=backend)
    for each in (reference, sampler):
        each.set_epoch(1)
    drawn = list(sampler)
    assert sorted(drawn) == sorted(reference.plan.order.tolist())
    np.testing.assert_array_equal(sampler.weights(drawn), reference.weights(drawn))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_plans_through_the_sampler(store: ScoreStore, method: str) -> None:
    needs_store = METHODS[method].score is not None
    if needs_store:
        with pytest.raises(ValueError, match="needs a ScoreStore"):
            unbiased_sampler(None, 0.5, epochs=4, num_examples=1000, method=method)
    sampler = unbiased_sampler(
        store if needs_store else None, 0.5, epochs=4, num_examples=1000, method=method, shard_size=100, window=2
    )
    assert sampler.score_kind == METHODS[method].score
    sampler.set_epoch(1)
    order = np.asarray(list(sampler))
    expected = 1000 if method == "full" else 500
    assert len(order) == len(np.unique(order)) == expected == sampler.epoch_length()
    shards = order // 100  # shard-local order: while a shard is being read, at most one other shard is
    for shard in np.unique(shards):
        span = np.flatnonzero(shards == shard)
        assert len(set(shards[span.min() : span.max() + 1].tolist()) - {shard}) <= 1
    np.testing.assert_allclose(sampler.weights(order), sampler.plan.weights_of(order))


def test_resume_with_another_world_size(store: ScoreStore) -> None:
    two = [unbiased_sampler(store, 0.5, epochs=4, seed=1, num_replicas=2, rank=rank) for rank in range(2)]
    for sampler in two:
        sampler.set_epoch(1)
    assert sorted(np.concatenate([s.rank_order() for s in two]).tolist()) == sorted(two[0].plan.order.tolist())
    mid_epoch = {**two[0].state_dict(), "position": 10}
    elastic = unbiased_sampler(store, 0.5, epochs=4, seed=1)
    elastic.load_state_dict(mid_epoch)  # mid-epoch: the 2 ranks' undelivered examples (tests/test_elastic.py)
    delivered = {int(i) for s in two for i in s.rank_order()[:10]}
    assert set(elastic) == set(two[0].plan.order.tolist()) - delivered
    boundary = {**two[0].state_dict(), "epoch": 2, "position": 0}
    single = unbiased_sampler(store, 0.5, epochs=4, seed=1)
    single.load_state_dict(boundary)  # an epoch boundary works with any world size
    assert len(single) == 500 and single.epoch == 2
    with pytest.raises(ValueError, match="rank must be in"):
        unbiased_sampler(store, 0.5, num_replicas=2, rank=2)


def test_moving_to_another_epoch_after_a_resume_plans_from_the_current_scores(store: ScoreStore) -> None:
    """The snapshot a mid-epoch state resumes from belongs to that epoch only."""
    saved = unbiased_sampler(store, 0.5, epochs=6, seed=4)
    saved.set_epoch(2)
    iterator = iter(saved)
    [next(iterator) for _ in range(10)]
    state = saved.state_dict()
    store.update(np.arange(1000), np.random.default_rng(1).gamma(2.0, size=1000))  # the scores move on
    resumed = unbiased_sampler(store, 0.5, epochs=6, seed=4)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the user moves on before iterating the resumed epoch
    fresh = unbiased_sampler(store, 0.5, epochs=6, seed=4)
    fresh.set_epoch(3)
    np.testing.assert_array_equal(resumed.plan.order, fresh.plan.order)


def test_short_runs_end_on_a_full_data_anneal_epoch() -> None:
    """``round(anneal_fraction · epochs)`` is 0 for 3 epochs, yet such a run still ends on full data: one
    anneal epoch whenever the fraction is positive and an epoch is left to prune after the warm-up."""
    ratios = [KeepRatioSchedule(0.7, epochs=3, shape="decreasing")(e) for e in range(3)]
    assert ratios == [1.0, pytest.approx(0.7), 1.0]
    no_warmup = KeepRatioSchedule(0.7, epochs=3, warmup_epochs=0, shape="decreasing")
    assert [no_warmup(e) for e in range(3)] == [1.0, pytest.approx(0.4), 1.0]
    for epochs in range(3, 41):
        schedule = KeepRatioSchedule(0.5, epochs=epochs)
        assert schedule.anneal_epochs == max(1, round(0.125 * epochs + 1e-9)) and schedule(epochs - 1) == 1.0
        assert any(schedule.phase(e) == "prune" for e in range(epochs))
    # No room: a pruned epoch beside the warm-up would be lost, so the run ends on it (documented).
    two = KeepRatioSchedule(0.7, epochs=2)
    assert two.anneal_epochs == 0 and [two(e) for e in range(2)] == [1.0, 0.7]
    # anneal_fraction=0 asks for no anneal tail.
    assert KeepRatioSchedule(0.7, epochs=3, anneal_fraction=0.0).anneal_epochs == 0
    assert KeepRatioSchedule(0.7, epochs=40, anneal_fraction=0.01).anneal_epochs == 1


def test_plan_summary_lists_each_epoch_the_cost_and_the_speedup(store: ScoreStore) -> None:
    from sadp_data import SADPSampler

    sampler = SADPSampler(store, keep_ratio=0.7, epochs=3, batch_size=64, seed=0)
    budget = sampler.schedule.budget(sampler.num_examples)
    assert [(e.epoch, e.phase, e.examples) for e in budget.epochs] == [
        (0, "warmup", 1000),
        (1, "prune", 700),
        (2, "anneal", 1000),
    ]
    assert budget.examples == 2700 and budget.cost == pytest.approx(0.9) and budget.ends_on_full_data
    assert budget.theoretical_speedup == pytest.approx(sampler.theoretical_speedup()) == pytest.approx(3 / 2.7)
    summary = sampler.plan_summary()
    lines = summary.splitlines()
    assert "3 epochs" in lines[0] and "1,000 examples" in lines[0] and "decreasing" in lines[0]
    assert lines[2].split() == ["0", "warmup", "1.00", "1,000"]
    assert lines[3].split() == ["1", "prune", "0.70", "700"]
    assert lines[4].split() == ["2", "anneal", "1.00", "1,000"]
    assert "2,700 examples (0.90 of full data's 3,000)" in summary and "theoretical speedup 1.11" in summary
    short = SADPSampler(store, keep_ratio=0.7, epochs=2, seed=0).plan_summary()
    assert "ends on a pruned epoch" in short and "warmup_epochs + 2" in short
    assert budget.to_dict()["epochs"][1] == {"epoch": 1, "phase": "prune", "keep_ratio": 0.7, "examples": 700}
    with pytest.raises(ValueError, match="plan_summary needs epochs"):
        SADPSampler(store, keep_ratio=0.7).plan_summary()
