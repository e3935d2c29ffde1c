"""Planning from a score table partitioned across ranks (``sadp_data.distributed.partitioned_plan``) is
bit-identical to one process.

Most tests run ``W`` ranks as threads of this process: ``SimulatedComm`` meets all ranks at a barrier
for every collective, so each rank sees exactly what a real process group would deliver. Every
rank's slice must equal ``reference.plan(all_scores, …)[rank_positions(K, rank, W)]``
(``np.array_equal`` on the int64 order and the float32 weights). One test runs real gloo process
groups (``tests/workers/partitioned_plan_rank.py``) whose ranks read only their shard of a memory-mapped
table, and one measures a rank's allocations by replaying the messages it received.
"""

from __future__ import annotations

import json
import threading
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _ranks import run_ranks as run_rank_processes

from sadp_data.distributed import partitioned_plan as partitioned
from sadp_data.distributed import per_rank, rank_positions
from sadp_data.distributed.partitioned_plan import (
    LocalComm,
    partition_bounds,
    partitioned_plan,
    partitioned_plan_epoch,
)
from sadp_data.kernels import plan_epoch, reference, sample_size
from sadp_data.kernels.reference import GUESS_MIN, GUESS_SAMPLE, SUM_BLOCK, WALK_BLOCK

WORKER = Path(__file__).parents[1] / "workers" / "partitioned_plan_rank.py"
KEYS = reference.epoch_keys(7, 3)


class _Hub:
    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=120)
        self.slots: list[Any] = [None] * world


class SimulatedComm:
    """One rank's ``Comm`` among ``world`` threads; counts the bytes it receives from other ranks."""

    def __init__(self, hub: _Hub, rank: int) -> None:
        self.hub, self.rank = hub, rank
        self.gathered = self.exchanged = 0  # bytes received from other ranks

    def _meet(self, value: Any, read: Callable[[list[Any]], list[np.ndarray]]) -> list[np.ndarray]:
        self.hub.slots[self.rank] = value
        self.hub.barrier.wait()
        out = read(self.hub.slots)
        self.hub.barrier.wait()
        return out

    def all_gather(self, array: np.ndarray) -> list[np.ndarray]:
        out = self._meet(np.ascontiguousarray(array).reshape(-1), lambda slots: [s.copy() for s in slots])
        self.gathered += sum(part.nbytes for source, part in enumerate(out) if source != self.rank)
        return out

    def exchange(self, per_destination: Sequence[np.ndarray]) -> list[np.ndarray]:
        assert len(per_destination) == len(self.hub.slots)
        parts = [np.ascontiguousarray(part).reshape(-1) for part in per_destination]
        out = self._meet(parts, lambda slots: [slots[source][self.rank].copy() for source in range(len(slots))])
        self.exchanged += sum(part.nbytes for source, part in enumerate(out) if source != self.rank)
        return out


class RecordingComm:
    """A ``Comm`` that keeps a copy of everything it returns, to be replayed by ``ReplayComm``."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.log = inner, []

    def all_gather(self, array: np.ndarray) -> list[np.ndarray]:
        out = self.inner.all_gather(array)
        self.log.append([part.copy() for part in out])
        return out

    def exchange(self, per_destination: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = self.inner.exchange(per_destination)
        self.log.append([part.copy() for part in out])
        return out


class ReplayComm:
    """Returns fresh copies of recorded messages, so one rank runs alone and allocates what a real comm would."""

    def __init__(self, log: list[list[np.ndarray]]) -> None:
        self.log = list(log)

    def all_gather(self, array: np.ndarray) -> list[np.ndarray]:
        return [part.copy() for part in self.log.pop(0)]

    def exchange(self, per_destination: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [part.copy() for part in self.log.pop(0)]


def run_ranks(world: int, work: Callable[[int, Any], Any], *, wrap: Callable[[Any], Any] = lambda c: c) -> list[Any]:
    """``work(rank, comm)`` on ``world`` threads: their results; re-raises the first rank's error."""
    hub = _Hub(world)
    results: list[Any] = [None] * world
    errors: list[BaseException | None] = [None] * world

    def target(rank: int) -> None:
        try:
            results[rank] = work(rank, wrap(SimulatedComm(hub, rank)))
        except BaseException as error:  # handed to the test
            errors[rank] = error
            hub.barrier.abort()

    threads = [threading.Thread(target=target, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None and not isinstance(error, threading.BrokenBarrierError):
            raise error
    for error in errors:
        if error is not None:
            raise error
    return results


def recorded_comms(scores: np.ndarray, seen: np.ndarray, size: int, world: int) -> list[RecordingComm]:
    """Plan on ``world`` ranks (the table split by ``partition_bounds``), recording what each rank received."""
    count = scores.shape[0]
    bounds = partition_bounds(count, world)
    comms: list[Any] = [None] * world

    def work(rank: int, comm: Any) -> tuple[np.ndarray, np.ndarray]:
        comms[rank] = comm
        lo, hi = bounds[rank]
        return partitioned_plan(scores[lo:hi], seen[lo:hi], count, size, 0.1, KEYS, rank, world, comm)

    run_ranks(world, work, wrap=RecordingComm)
    return comms


def replayed_peak(scores: np.ndarray, seen: np.ndarray, size: int, rank: int, world: int, comm: RecordingComm) -> int:
    """The tracemalloc peak of ``rank`` planning alone on a replay of the messages ``comm`` recorded."""
    count = scores.shape[0]
    lo, hi = partition_bounds(count, world)[rank]
    tracemalloc.start()
    try:
        partitioned_plan(scores[lo:hi], seen[lo:hi], count, size, 0.1, KEYS, rank, world, ReplayComm(comm.log))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def plan_sharded(
    scores: np.ndarray, seen: np.ndarray | None, size: int, smoothing: float, world: int, **run: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every rank's slice of the sharded plan, each rank given only its own shard."""
    bounds = partition_bounds(scores.shape[0], world)

    def work(rank: int, comm: Any) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = bounds[rank]
        shard_seen = None if seen is None else seen[lo:hi]
        return partitioned_plan(scores[lo:hi], shard_seen, scores.shape[0], size, smoothing, KEYS, rank, world, comm)

    return run_ranks(world, work, **run)


def assert_identical(
    scores: np.ndarray, seen: np.ndarray | None, size: int, smoothing: float, worlds: Sequence[int] = (1, 2, 3, 4)
) -> None:
    order, weights = reference.plan(scores, seen, size, smoothing, False, KEYS)
    for world in worlds:
        for rank, (part_order, part_weights) in enumerate(plan_sharded(scores, seen, size, smoothing, world)):
            positions = rank_positions(size, rank, world)
            assert part_order.dtype == np.int64 and part_weights.dtype == np.float32
            assert np.array_equal(part_order, order[positions]), f"order differs at world={world}, rank={rank}"
            assert np.array_equal(part_weights, weights[positions]), f"weights differ at world={world}, rank={rank}"


def random_table(count: int, seed: int, zeros: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-tailed scores with zeros, a few huge ones (capped) and unseen examples."""
    rng = np.random.default_rng(seed)
    scores = rng.pareto(1.2, count).astype(np.float32)
    scores[rng.random(count) < zeros] = 0.0
    scores[rng.random(count) < 0.002] *= 1e4
    seen = rng.integers(1, 4, count).astype(np.uint32)
    seen[rng.random(count) < 0.2] = 0
    return scores, seen


def guess_outcome(scores: np.ndarray, seen: np.ndarray | None, size: int, smoothing: float) -> str:
    """Which way ``reference.capping_scale``'s sampled guess goes: none, accepted or rejected."""
    weights = reference.smooth_scores(scores, np.ones(scores.shape[0]) if seen is None else seen, smoothing)
    weights = weights.astype(np.float64)
    total = reference.blocked_sum(weights)
    guess = reference.capping_guess(weights, size, total)
    if guess is None:
        return "none"
    hits = guess * weights >= 1.0
    count = int(hits.sum())
    uncapped = total - reference.blocked_sum(np.where(hits, weights, 0.0))
    return "accepted" if count < size and (size - count) / uncapped >= guess else "rejected"


@pytest.mark.parametrize("count", [0, 1, 4096, SUM_BLOCK, SUM_BLOCK + 1, 300_000])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shards_are_contiguous_runs_of_whole_sum_blocks(count: int, world: int) -> None:
    bounds = partition_bounds(count, world)
    assert len(bounds) == world and bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
    assert all(lo <= hi and lo % SUM_BLOCK == 0 for lo, hi in bounds)
    assert all(hi % SUM_BLOCK == 0 for _, hi in bounds[:-1])
    blocks = -(-count // SUM_BLOCK)
    assert max(hi - lo for lo, hi in bounds) <= -(-blocks // world) * SUM_BLOCK  # as even as whole blocks go
    with pytest.raises(ValueError):
        partition_bounds(count, 0)


@pytest.mark.slow
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("count", [1, 5, 4096, 70_000, 300_000])
def test_every_rank_gets_its_slice_of_the_single_process_plan(count: int, keep: float) -> None:
    scores, seen = random_table(count, seed=count + int(keep * 10))
    smoothing = {0.1: 0.0, 0.5: 0.1, 0.9: 0.3}[keep]
    size = sample_size(count, keep)
    assert_identical(scores, seen, size, smoothing, worlds=(1, 2, 3, 4, 7) if count == 300_000 else (1, 2, 3, 4))
    if count >= GUESS_MIN:  # the sampled capping guess ran (or, with zero weights and λ = 0, was skipped)
        assert guess_outcome(scores, seen, size, smoothing) == ("none" if smoothing == 0.0 else "accepted")


@pytest.mark.parametrize(("count", "keep", "world"), [(65_535, 0.3, 5), (65_537, 0.01, 8), (131_073, 0.97, 6)])
def test_block_edges_many_ranks_and_tiny_samples(count: int, keep: float, world: int) -> None:
    scores, seen = random_table(count, seed=count)  # shards of whole blocks, a partial last one, idle ranks
    assert_identical(scores.astype(np.float64), None, sample_size(count, keep), 0.2, worlds=(world,))
    assert_identical(scores[:3], seen[:3], 1, 0.5, worlds=(world,))  # K = 1 < world: every slice wraps


def test_it_equals_plan_epoch_and_takes_its_arguments() -> None:
    count, keep, seed, epoch = 70_000, 0.3, 5, 2
    scores = np.random.default_rng(1).gamma(0.5, size=count)  # float64 scores, seen=None: all seen
    order, weights = plan_epoch(scores, keep, seed, epoch, smoothing=0.2, backend="numpy")
    bounds = partition_bounds(count, 3)

    def work(rank: int, comm: Any) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = bounds[rank]
        return partitioned_plan_epoch(
            scores[lo:hi], keep, seed, epoch, count, smoothing=0.2, comm=comm, rank=rank, world=3
        )

    for rank, (part_order, part_weights) in enumerate(run_ranks(3, work)):
        assert np.array_equal(part_order, order[rank_positions(order.shape[0], rank, 3)])
        assert np.array_equal(part_weights, weights[rank_positions(order.shape[0], rank, 3)])
    alone = partitioned_plan_epoch(scores, keep, seed, epoch, count, smoothing=0.2)  # no process group: LocalComm
    assert np.array_equal(alone[0], order) and np.array_equal(alone[1], weights)


def test_a_guess_that_overshoots_is_dropped_as_in_the_reference() -> None:
    count = 300_000
    scores = np.ones(count, np.float32)
    scores[np.arange(500) * (count // GUESS_SAMPLE)] = 100.0  # the strided sample overstates the heavy share
    assert guess_outcome(scores, None, sample_size(count, 0.5), 0.0) == "rejected"
    assert_identical(scores, None, sample_size(count, 0.5), 0.0)


def test_capping_that_exhausts_the_sample_and_all_positive_drawn() -> None:
    count, size = 140_000, 10
    scores = np.full(count, 1e-30, np.float32)  # negligible next to the rest: the last round caps all
    scores[np.linspace(0, count - 1, size - 1).astype(np.int64)] = 1e6
    scores[70_001] = 1.0
    scale, capped = reference.capping_scale(reference.smooth_scores(scores, np.ones(count), 0.0), size)
    assert scale == 0.0 and int(capped.sum()) == size
    assert_identical(scores, None, size, 0.0)
    exact = np.zeros(count, np.float32)
    exact[np.random.default_rng(2).choice(count, 5000, replace=False)] = 2.0  # exactly K positive weights
    assert_identical(exact, None, 5000, 0.0)


@pytest.mark.parametrize("variant", ["nothing-seen", "all-zero", "smoothing-1", "all-drawn"])
def test_degenerate_tables(variant: str) -> None:
    count = 140_000
    scores, seen = random_table(count, seed=3)
    if variant == "nothing-seen":
        seen[:] = 0
    elif variant == "all-zero":
        scores[:] = 0.0
    size = count if variant == "all-drawn" else sample_size(count, 0.4)
    assert_identical(scores, seen, size, 1.0 if variant == "smoothing-1" else 0.1)


@pytest.mark.parametrize("direction", [1.0 + 1e-7, 0.5])
def test_the_remainder_is_spread_in_global_index_order(direction: float) -> None:
    count, size, world = 200_000, 90_000, 3
    weights = np.random.default_rng(4).random(count).astype(np.float32) + 0.5
    capped = weights > 1.45
    scale = direction * (size - int(capped.sum())) / float(weights[~capped].astype(np.float64).sum())
    expected = reference.quantize(weights, scale, capped, size)
    current = np.clip(np.floor(scale * weights.astype(np.float64) * 2.0**32), 0, 2.0**32 - 1).astype(np.uint64)
    current[capped] = reference.ONE
    assert (int(current.sum()) > size * reference.ONE) == (direction > 1.0)  # shrinks, or grows across ranks
    bounds = partition_bounds(count, world)

    def work(rank: int, comm: Any) -> np.ndarray:
        lo, hi = bounds[rank]
        return partitioned._quantize(comm, weights[lo:hi], scale, capped[lo:hi], size, rank)

    assert np.array_equal(np.concatenate(run_ranks(world, work)), expected)


def test_errors_are_raised_on_every_rank() -> None:
    count = 140_000
    scores, _ = random_table(count, seed=5, zeros=0.5)
    bounds = partition_bounds(count, 3)

    def attempt(scores: np.ndarray, size: int, smoothing: float, lengths: Sequence[int] = (0, 0, 0)) -> list[Any]:
        def work(rank: int, comm: Any) -> Any:
            lo, hi = bounds[rank]
            try:
                return partitioned_plan(
                    scores[lo : hi + lengths[rank]], None, count, size, smoothing, KEYS, rank, 3, comm
                )
            except ValueError as error:
                return error

        return run_ranks(3, work)

    for outcome in attempt(scores, sample_size(count, 0.9), 0.0):  # half the weights are zero: infeasible
        assert isinstance(outcome, ValueError) and "positive" in str(outcome)
    broken = scores.copy()
    broken[bounds[1][0] + 3] = -1.0
    for outcome in attempt(broken, 100, 0.1):
        assert isinstance(outcome, ValueError) and f"position {bounds[1][0] + 3}" in str(outcome)
    for outcome in attempt(scores, 100, 0.1, lengths=(0, -1, 0)):
        assert isinstance(outcome, ValueError) and "rank 1" in str(outcome)
    for size, smoothing in ((0, 0.1), (count + 1, 0.1), (100, 1.5)):
        assert all(isinstance(outcome, ValueError) for outcome in attempt(scores, size, smoothing))


def test_one_process_with_local_comm() -> None:
    scores, seen = random_table(70_000, seed=6)
    order, weights = reference.plan(scores, seen, 30_000, 0.1, False, KEYS)
    mine = partitioned_plan(scores, seen, 70_000, 30_000, 0.1, KEYS, 0, 1, LocalComm())
    assert np.array_equal(mine[0], order) and np.array_equal(mine[1], weights)
    with pytest.raises(ValueError):
        LocalComm().exchange([np.zeros(1), np.zeros(1)])


def handled(scores: np.ndarray, seen: np.ndarray, size: int, smoothing: float, world: int) -> list[tuple[int, int]]:
    """Per rank: the picks its walk finds, and the positions whose shuffle bucket it owns."""
    count = scores.shape[0]
    order, _ = reference.plan(scores, seen, size, smoothing, False, KEYS)
    picks = np.empty(size, np.int64)  # the walk's picks, by position
    picks[reference.shuffle_permutation(size, KEYS.shuffle)] = order
    bucket_key, _ = reference.random_bits(KEYS.shuffle, np.arange(2, dtype=np.uint64))
    buckets = reference.shuffle_buckets(size)
    bucket = reference.bounded(reference.random_bits(bucket_key, np.arange(size, dtype=np.uint64)), buckets)
    counts = []
    for rank, (lo, hi) in enumerate(partition_bounds(count, world)):
        walked = int(np.count_nonzero((picks >= lo) & (picks < hi)))
        owned = int(np.count_nonzero((bucket >= rank * buckets // world) & (bucket < (rank + 1) * buckets // world)))
        counts.append((walked, owned))
    return counts


def allowance(shard: int, picks: int, count: int) -> int:
    """The bytes a rank may allocate (see the test below) for its shard and the most picks it handles."""
    return 16 * shard + max(80 * picks, 48 * GUESS_SAMPLE) + 64 * -(-count // WALK_BLOCK) + (256 << 10)


@pytest.mark.slow
@pytest.mark.parametrize(("count", "keep"), [(300_000, 0.1), (300_000, 0.9), (24 * SUM_BLOCK, 0.5)])
def test_a_rank_allocates_for_its_shard_and_slice_not_for_the_table(tmp_path: Path, count: int, keep: float) -> None:
    """A rank's tracemalloc peak is bounded by what it owns, never by ``N``.

    The rank runs alone on a replay of the messages it received in a full run, from a memory-mapped
    table (not counted: the page cache, not the heap). What it may allocate: ~13 bytes per owned
    example (float32 weights, capped flags, uint64 fixed point) plus temporaries, i.e. 16·n; the
    picks it walks, the members of the buckets it owns and its slice, at most ~80 bytes each at the
    shuffle's peak (records, sort orders, Fisher–Yates partners, messages); or, earlier, the capping
    guess's 65,536-entry sample (gathered, then ``guess_from_sample``: ~48 bytes an entry); plus the
    per-block arrays and 256 KiB. At N = 300,000 the guess's constant is of the size of an O(N)
    array (all N float64 weights: 2.4 MB), so at 24 blocks (1.57 M examples, 6 blocks a rank) the
    bound is also checked to be tight: a single extra float64 array of size N would break it.
    """
    world = 4
    scores, seen = random_table(count, seed=8)
    np.save(tmp_path / "scores.npy", scores)
    np.save(tmp_path / "seen.npy", seen)
    mapped, mapped_seen = np.load(tmp_path / "scores.npy", mmap_mode="r"), np.load(tmp_path / "seen.npy", mmap_mode="r")
    size = sample_size(count, keep)
    bounds = partition_bounds(count, world)
    comms = recorded_comms(mapped, mapped_seen, size, world)
    blocks = -(-count // WALK_BLOCK)
    for rank, ((lo, hi), (walked, owned)) in enumerate(
        zip(bounds, handled(scores, seen, size, 0.1, world), strict=True)
    ):
        bound = allowance(hi - lo, max(walked, owned, per_rank(size, world)), count)
        peak = replayed_peak(mapped, mapped_seen, size, rank, world, comms[rank])
        assert peak <= bound, f"rank {rank} allocated {peak} bytes, more than {bound}"
        assert count < GUESS_SAMPLE * 16 or bound - peak < 8 * count, "the bound would not notice O(N) memory"
        received = comms[rank].inner.exchanged + comms[rank].inner.gathered
        sums = -(-count // SUM_BLOCK)
        volume = 20 * (owned + per_rank(size, world) + world) + 8 * (GUESS_SAMPLE + blocks + 12 * sums) + 4096 * world
        assert received <= volume, f"rank {rank} received {received} bytes, more than {volume}"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 4])
def test_gloo_ranks_reading_only_their_shards(tmp_path: Path, world: int) -> None:
    count, size, smoothing = 300_000, sample_size(300_000, 0.5), 0.1
    scores, seen = random_table(count, seed=9)
    np.save(tmp_path / "scores.npy", scores)
    np.save(tmp_path / "seen.npy", seen)
    (tmp_path / "case.json").write_text(
        json.dumps({"N": count, "K": size, "smoothing": smoothing, "seed": 7, "epoch": 3})
    )
    run_rank_processes(WORKER, world, str(tmp_path), timeout=180)
    order, weights = reference.plan(scores, seen, size, smoothing, False, KEYS)
    for rank in range(world):
        with np.load(tmp_path / f"rank{rank}.npz") as part:
            assert np.array_equal(part["order"], order[rank_positions(size, rank, world)])
            assert np.array_equal(part["weights"], weights[rank_positions(size, rank, world)])
    for rank, (walked, owned) in enumerate(handled(scores, seen, size, smoothing, world)):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())  # torch's buffers are numpy's here
        assert report["peak"] <= allowance(report["shard"], max(walked, owned, per_rank(size, world)), count)


@pytest.mark.slow
def test_the_scale_bench_runs_both_designs_and_finds_them_identical() -> None:
    from sadp_data.bench.scale import format_scale_table, run_scale_bench

    result = run_scale_bench(4 * 65536, world=2, timeout_s=300)
    sharded, replicated = result["results"]
    assert result["identical"] and result["targets"]["identical"]["pass"]
    assert replicated["score_table_bytes_per_example_per_rank"] == 12.0
    assert sharded["score_table_bytes_per_example_per_rank"] == 6.0  # two equal shards of four blocks
    assert "sharded" in format_scale_table(result)
