"""The sharded plan's exchanges in bounded rounds, and its memory per pick with small rounds.

``partition_shuffle.ROUND`` bounds the records a rank sends or receives per round; the plans of
``test_partitioned_plan`` fit in one round, so here it is made small enough for dozens of rounds, with
uneven per-destination counts and the wrapped padding of tiny samples.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_partitioned_plan import assert_identical, random_table, recorded_comms, replayed_peak

from sadp_data.distributed import _partition_shuffle as partition_shuffle
from sadp_data.distributed.partitioned_plan import partition_bounds
from sadp_data.kernels import sample_size
from sadp_data.kernels.reference import SUM_BLOCK


@pytest.mark.parametrize(("count", "keep"), [(70_000, 0.5), (140_000, 1.0), (65_537, 0.01)])
def test_plans_exchanged_in_many_rounds_stay_identical(
    monkeypatch: pytest.MonkeyPatch, count: int, keep: float
) -> None:
    monkeypatch.setattr(partition_shuffle, "ROUND", 777)
    scores, seen = random_table(count, seed=count)
    assert_identical(scores, seen, sample_size(count, keep), 0.1, worlds=(1, 3, 4))
    assert_identical(scores[:5], seen[:5], 2, 0.1, worlds=(4,))  # K < world: every slice wraps


def test_records_widen_past_two_to_the_32() -> None:
    assert partition_shuffle.record_dtype(1 << 32).itemsize == 12
    wide = partition_shuffle.record_dtype((1 << 32) + 1)
    assert wide.itemsize == 20 and wide["index"] == np.dtype("<i8")


@pytest.mark.slow
def test_a_rank_allocates_at_most_20_bytes_per_owned_example_at_half_keep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replayed alone (as in ``test_partitioned_plan``), at keep 0.5 (about one pick per two owned
    examples) a rank's peak stays within 20 B per owned example: quantising holds 13 B (weights, capped
    flags, fixed point), the shuffle about 30 B per pick (the 12-byte picks, their 4-byte send order
    and the 12-byte bucket members) plus a round's messages, not the ~80 B of int64 records and
    whole-message copies that made it about 40 B per owned example."""
    monkeypatch.setattr(partition_shuffle, "ROUND", 4096)
    count, world = 24 * SUM_BLOCK, 4
    scores, seen = random_table(count, seed=11)
    size = sample_size(count, 0.5)
    comms = recorded_comms(scores, seen, size, world)
    for rank, (lo, hi) in enumerate(partition_bounds(count, world)):
        peak = replayed_peak(scores, seen, size, rank, world, comms[rank])
        assert peak <= 20 * (hi - lo) + (256 << 10), f"rank {rank} allocated {peak} bytes for {hi - lo} examples"
