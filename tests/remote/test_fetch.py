"""Read planning for remote shards (``sadp_data.remote.fetch``): range merging, blocks, whole-shard fallback,
read-ahead.

The planner is pure, so it is tested on offsets tables alone; ``read_blocks`` is tested through a
local ``Location`` (the same code path as remote stores but ``cat_ranges``), against the bytes the
offsets point at. Servers come in ``tests/remote/test_remote.py``.
"""

from __future__ import annotations

import math
import pickle
import threading
import time

import numpy as np
import pytest

from sadp_data.remote import Location, is_remote
from sadp_data.remote.fetch import (
    BlockPlanner,
    FetchOptions,
    FetchStats,
    block_bounds,
    coalesce,
    plan_blocks,
    read_blocks,
    shard_reads,
)
from sadp_data.remote.request_costs import RequestCosts


def test_coalesce_merges_ranges_closer_than_the_gap():
    starts = np.array([0, 100, 150, 1000, 1010])
    stops = np.array([100, 140, 200, 1005, 1020])
    merged_starts, merged_stops, which = coalesce(starts, stops, gap=20)
    assert merged_starts.tolist() == [0, 1000] and merged_stops.tolist() == [200, 1020]
    assert which.tolist() == [0, 0, 0, 1, 1]
    merged_starts, merged_stops, which = coalesce(starts, stops, gap=0)  # only touching ranges merge
    assert merged_starts.tolist() == [0, 150, 1000, 1010] and which.tolist() == [0, 0, 1, 2, 3]
    empty = coalesce(np.zeros(0, np.int64), np.zeros(0, np.int64), 10)
    assert all(part.size == 0 for part in empty)


def test_blocks_hold_at_most_window_shards_and_max_block_positions():
    shards = np.array([0, 1, 0, 1, 2, 3, 2, 3, 4, 4, 4, 4])
    assert block_bounds(shards, window=2, max_block=100) == [(0, 4), (4, 8), (8, 12)]
    assert block_bounds(shards, window=8, max_block=5) == [(0, 5), (5, 10), (10, 12)]
    assert block_bounds(np.zeros(0, np.int64), 2, 10) == []


def _table(rng, shards=4, per_shard=50, size=(100, 3000)):
    """An offsets table (shard, start, length) of consecutive samples, and each shard's byte size."""
    rows, sizes = [], []
    for shard in range(shards):
        position = 0
        for _ in range(per_shard):
            length = int(rng.integers(*size)) // 512 * 512 + 512
            rows.append((shard, position, length))
            position += length
        sizes.append(position + 1024)  # the tar end blocks
    return np.array(rows, dtype=np.int64), sizes


def test_plan_blocks_covers_every_sample_with_its_exact_span():
    rng = np.random.default_rng(0)
    table, sizes = _table(rng)
    order = rng.permutation(len(table))[:120]
    options = FetchOptions(gap_bytes=600, whole_shard_fraction=2.0, max_block=40)
    blocks = plan_blocks(table[order], sizes, window=2, options=options)
    assert blocks[0].begin == 0 and blocks[-1].end == order.size
    for block in blocks:
        assert block.end - block.begin <= 40 and len(block.reads) <= 2
        for position in range(block.end - block.begin):
            shard, start, length = table[order[block.begin + position]]
            read = block.reads[block.read_of[position]]
            begin = read.starts[block.range_of[position]] + block.offset_in[position]
            assert read.shard == shard and begin == start and block.length[position] == length
            assert begin + length <= read.stops[block.range_of[position]]
            assert not read.whole


def test_a_mostly_planned_shard_is_fetched_whole():
    rng = np.random.default_rng(1)
    table, sizes = _table(rng, shards=2)
    keep = np.concatenate([np.arange(0, 45), np.arange(50, 60)])  # 90 % of shard 0, 20 % of shard 1
    blocks = plan_blocks(table[keep], sizes, window=2, options=FetchOptions(gap_bytes=0, whole_shard_fraction=0.8))
    (block,) = blocks
    reads = {read.shard: read for read in block.reads}
    assert reads[0].whole and reads[0].starts.tolist() == [0] and reads[0].stops.tolist() == [sizes[0]]
    assert not reads[1].whole and reads[1].starts.size == 1  # 10 consecutive samples: one merged range


@pytest.mark.parametrize("readahead", [0, 1, 3])
def test_read_blocks_yields_each_planned_sample_in_plan_order(tmp_path, readahead):
    rng = np.random.default_rng(2)
    table, sizes = _table(rng, shards=3, per_shard=30)
    names = [f"s{shard}.bin" for shard in range(3)]
    blobs = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in sizes]
    for name, blob in zip(names, blobs, strict=True):
        (tmp_path / name).write_bytes(blob)
    order = rng.permutation(len(table))[:50]
    options = FetchOptions(gap_bytes=1000, readahead=readahead, max_block=7, whole_shard_fraction=0.5)
    stats = FetchStats()
    blocks = plan_blocks(table[order], sizes, window=2, options=options)
    got = list(read_blocks(Location(tmp_path), names, sizes, blocks, options, stats))
    expected = [blobs[s][start : start + length] for s, start, length in table[order].tolist()]
    assert got == expected
    assert stats.requests == sum(read.starts.size for block in blocks for read in block.reads)
    assert stats.bytes_fetched >= sum(len(part) for part in expected)


def test_a_failed_block_yields_the_error_naming_the_shard_and_reading_goes_on(tmp_path):
    rng = np.random.default_rng(3)
    table, sizes = _table(rng, shards=2, per_shard=10)
    (tmp_path / "a.bin").write_bytes(bytes(sizes[0]))
    names = ["a.bin", "missing.bin"]
    options = FetchOptions(readahead=1)
    blocks = plan_blocks(table, sizes, window=1, options=options)
    got = list(read_blocks(Location(tmp_path), names, sizes, blocks, options))
    assert all(isinstance(item, bytes) for item in got[:10])
    assert all(isinstance(item, OSError) and "missing.bin" in str(item) for item in got[10:])


def test_the_cache_serves_whole_shards_locally_and_evicts_past_its_limit(tmp_path):
    rng = np.random.default_rng(4)
    table, sizes = _table(rng, shards=3, per_shard=10)
    source = tmp_path / "src"
    source.mkdir()
    names = [f"s{shard}.bin" for shard in range(3)]
    for name, size in zip(names, sizes, strict=True):
        (source / name).write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    cache = tmp_path / "cache"
    options = FetchOptions(whole_shard_fraction=0.1, cache_dir=str(cache), cache_bytes=sum(sizes))
    blocks = plan_blocks(table, sizes, window=1, options=options)
    first, second = FetchStats(), FetchStats()
    one = list(read_blocks(Location(source), names, sizes, blocks, options, first, fingerprint="f"))
    again = list(read_blocks(Location(source), names, sizes, blocks, options, second, fingerprint="f"))
    assert one == again and first.requests == 3 and second.cache_hits == 3 and second.requests == 0
    small = FetchOptions(whole_shard_fraction=0.1, cache_dir=str(cache), cache_bytes=sum(sizes[1:]))
    list(read_blocks(Location(source), names, sizes, blocks[:1], small, FetchStats(), fingerprint="g"))
    list(read_blocks(Location(source), names, sizes, blocks[1:], small, FetchStats(), fingerprint="g"))
    assert sorted(p.name for p in (cache / "g").iterdir()) == ["s1.bin", "s2.bin"]  # s0, the oldest, evicted


@pytest.mark.parametrize(
    ("name", "value"),
    [("gap_bytes", -1), ("readahead", 1.5), ("max_block", 0), ("whole_shard_fraction", 0), ("adaptive", "yes")],
)
def test_bad_fetch_options_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        FetchOptions(**{name: value})


def test_locations_tell_urls_from_paths():
    assert is_remote("s3://bucket/prefix") and is_remote("https://host/x") and is_remote("gs://b")
    assert not is_remote("/data/shards") and not is_remote("file:///data") and not is_remote("C:/data")
    location = Location("s3://bucket/data/", {"anon": True})
    assert location.join("index.json") == "s3://bucket/data/index.json"
    assert location.child("../other").url == "s3://bucket/other"
    assert location.child("https://h/x").url == "https://h/x"
    with pytest.raises(ValueError, match="climbs above"):
        Location("s3://bucket").child("../..")
    assert Location("file:///tmp/x").url == "/tmp/x"


def test_shard_reads_priced_by_request_cost_merge_cheap_gaps_and_read_whole_when_cheaper():
    lo, hi = np.array([0, 1000, 1100, 5000]), np.array([900, 1050, 1500, 5200])
    options = FetchOptions(gap_bytes=0, whole_shard_fraction=2.0)
    starts, stops, which, whole = shard_reads(lo, hi, 100_000, options, request_cost=None)  # the fixed rule
    assert starts.tolist() == [0, 1000, 1100, 5000] and not whole
    starts, stops, which, whole = shard_reads(lo, hi, 100_000, options, request_cost=200)  # gaps 100 and 50 merge
    assert starts.tolist() == [0, 5000] and stops.tolist() == [1500, 5200] and which.tolist() == [0, 0, 0, 1]
    assert not whole
    # gaps below c merge (the cheapest merging under a linear cost); 3,500 bytes apart stays 2 requests up to c = 3,500
    assert shard_reads(lo, hi, 6000, options, request_cost=3000)[0].tolist() == [0, 5000]
    starts, stops, _, whole = shard_reads(lo, hi, 6000, options, request_cost=5000)
    assert starts.tolist() == [0] and stops.tolist() == [5200] and not whole  # one range: cheaper than the shard
    assert shard_reads(lo, hi, 5200, options, request_cost=5000)[3]  # the one range is the shard: read it whole
    assert shard_reads(lo, hi, 10**9, options, request_cost=math.inf)[3]


def test_the_planner_with_no_request_cost_is_plan_blocks():
    rng = np.random.default_rng(5)
    table, sizes = _table(rng)
    order = rng.permutation(len(table))[:90]
    options = FetchOptions(gap_bytes=700, whole_shard_fraction=0.6, max_block=25)
    planner = BlockPlanner(table[order], sizes, 2, options, begin=10)
    for block, again in zip(
        plan_blocks(table[order], sizes, 2, options, begin=10), map(planner.block, range(len(planner))), strict=True
    ):
        assert (block.begin, block.end) == (again.begin, again.end)
        assert all(
            (a.starts == b.starts).all() and a.whole == b.whole for a, b in zip(block.reads, again.reads, strict=True)
        )


def test_request_costs_probe_first_then_wait_for_it_and_price_blocks_by_the_fit():
    costs = RequestCosts()
    assert costs.plan_next() == (True, None)  # nothing measured: the first block probes
    answers: list[tuple[bool, float | None]] = []
    waiting = threading.Thread(target=lambda: answers.append(costs.plan_next()))
    waiting.start()
    time.sleep(0.2)
    assert waiting.is_alive() and not answers  # the next block waits for the probe to come back
    latency, per_request, per_byte = 0.004, 0.002, 5e-9
    for requests, size in [(20, 1_000_000), (2, 3_000_000), (35, 1_500_000), (3, 2_500_000), (10, 800_000)]:
        costs.observe(requests, size, latency + per_request * requests + per_byte * size)
    costs.probe_done()
    waiting.join(5)
    assert answers == [(False, pytest.approx(per_request / per_byte, rel=1e-6))]  # 400 kB a request
    assert costs.fit() == pytest.approx((latency, per_request, per_byte), rel=1e-6)
    free_bytes = RequestCosts()
    for requests, size in [(5, 10), (1, 1000), (9, 500)]:
        free_bytes.observe(requests, size, 0.001 * requests)
    assert free_bytes.plan_next() == (False, math.inf)  # measured already (a reader reused): bytes are free
    two = RequestCosts()  # two independent batches: a and b alone
    two.observe(100, 1_000_000, 100 * per_request + 1_000_000 * per_byte)
    assert two.fit() is None
    two.observe(4, 2_000_000, 4 * per_request + 2_000_000 * per_byte)
    assert two.fit() == pytest.approx((0.0, per_request, per_byte), rel=1e-6)
    collinear = RequestCosts()  # whole-shard batches only: (k, k·S) says nothing about a against b
    for shards in (1, 2, 3):
        collinear.observe(shards, shards * 1_000_000, shards * 0.01)
    assert collinear.fit() is None


def test_a_probe_that_never_returns_or_says_nothing_leaves_the_fixed_rule_and_probes_again():
    late = RequestCosts(probe_timeout=0.1)
    assert late.plan_next() == (True, None)
    began = time.perf_counter()
    assert late.plan_next() == (True, None)  # waited out the lost probe, then probes again
    assert late.plan_next() == (True, None) and time.perf_counter() - began < 1.0  # no wait beyond each timeout
    quiet = RequestCosts()
    assert quiet.plan_next() == (True, None)
    quiet.observe(10, 10_000, 0.01)  # one batch only (say the other shards were cached)
    quiet.probe_done()
    assert quiet.plan_next() == (True, None)  # still no fit: the next block probes


def test_request_costs_and_fetch_stats_travel_to_spawned_workers():
    costs, stats = RequestCosts(), FetchStats()
    costs.observe(3, 300, 0.01)
    stats.add(2, 100)
    costs_copy, stats_copy = pickle.loads(pickle.dumps((costs, stats)))
    assert list(costs_copy.observations) == [(3, 300, 0.01)] and costs_copy.plan_next() == (True, None)
    stats_copy.add(1, 1)
    assert (stats_copy.requests, stats_copy.bytes_fetched) == (3, 101)


class _PricedLocation(Location):
    """A local folder whose range batches take ``per_request`` s a request and ``per_byte`` s a byte, in series
    (a server that spends CPU on each request, as moto's does)."""

    def __init__(self, root, per_request: float, per_byte: float) -> None:
        super().__init__(root)
        self.per_request, self.per_byte = per_request, per_byte

    def read_ranges(self, names, starts, stops, **settings):
        time.sleep(
            self.per_request * len(starts) + self.per_byte * sum(b - a for a, b in zip(starts, stops, strict=True))
        )
        return super().read_ranges(names, starts, stops, **settings)


@pytest.mark.parametrize("readahead", [0, 1, 2])
@pytest.mark.parametrize("priced", ["requests", "bytes"])
def test_adaptive_reads_deliver_the_same_bytes_and_follow_what_requests_cost(tmp_path, priced, readahead):
    rng = np.random.default_rng(6)
    table, sizes = _table(rng, shards=10, per_shard=30, size=(1000, 6000))
    names = [f"s{shard}.bin" for shard in range(10)]
    blobs = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in sizes]
    for name, blob in zip(names, blobs, strict=True):
        (tmp_path / name).write_bytes(blob)
    keep = np.sort(rng.permutation(len(table))[:150])  # half of each shard in shard order: 5 blocks of 2 shards
    fixed = FetchOptions(gap_bytes=0, whole_shard_fraction=2.0, readahead=readahead)
    adaptive = FetchOptions(gap_bytes=0, whole_shard_fraction=2.0, readahead=readahead, adaptive=True)
    location = _PricedLocation(tmp_path, *((0.004, 0.0) if priced == "requests" else (0.0, 1e-6)))
    planner = BlockPlanner(table[keep], sizes, 2, adaptive)
    costs, stats = RequestCosts(), FetchStats()
    got = list(read_blocks(location, names, sizes, planner, adaptive, stats, costs=costs))
    expected = [blobs[s][start : start + length] for s, start, length in table[keep].tolist()]
    assert got == expected and len(planner) == 5
    baseline = FetchStats()
    planned = plan_blocks(table[keep], sizes, 2, fixed)
    assert list(read_blocks(location, names, sizes, planned, fixed, baseline)) == expected
    ranged_probe, whole_probe, *later = costs.observations  # the probe: shard 0 by the fixed rule, shard 1 whole
    assert ranged_probe[0] == planned[0].reads[0].starts.size and whole_probe[:2] == (1, sizes[1])
    assert len(later) == 4  # the four blocks planned from the fit, one batch each
    if priced == "requests":  # a request costs as much as ~20 MB here: one request for each later shard
        assert [n for n, _, _ in later] == [2] * 4
        sent = sum(size for _, size, _ in later)  # each shard one range, first kept byte to last, or whole
        spans = sum(int(r.stops.max() - r.starts.min()) for b in planned[1:] for r in b.reads)
        assert spans <= sent <= sum(sizes[2:])
    else:  # requests are nearly free next to bytes (1 µs a byte): no later shard is read whole, about the
        # planned bytes are read (a gap merges only if the sleeps overshoot by ~1 ms a request; none is < 1 kB)
        planned_bytes = sum(int((r.stops - r.starts).sum()) for b in planned[1:] for r in b.reads)
        sent = sum(size for _, size, _ in later)
        assert planned_bytes <= sent <= 1.2 * planned_bytes and sent < sum(sizes[2:]) * 0.8
        assert stats.requests > 4 * 2 + 2


def test_a_failed_probe_block_yields_its_errors_and_the_next_block_probes_without_waiting(tmp_path):
    rng = np.random.default_rng(7)
    table, sizes = _table(rng, shards=6, per_shard=10)
    names = [f"s{shard}.bin" for shard in range(6)]
    blobs = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in sizes]
    for name, blob in list(zip(names, blobs, strict=True))[1:]:  # s0.bin is missing: the probe block fails
        (tmp_path / name).write_bytes(blob)
    options = FetchOptions(readahead=2, adaptive=True)
    planner = BlockPlanner(table, sizes, 2, options)
    began = time.perf_counter()
    got = list(read_blocks(Location(tmp_path), names, sizes, planner, options))
    assert time.perf_counter() - began < 30  # far below the probe timeout: nobody waited for the lost probe
    assert all(isinstance(item, OSError) and "s0.bin" in str(item) for item in got[:20])
    assert got[20:] == [blobs[s][start : start + length] for s, start, length in table[20:].tolist()]
