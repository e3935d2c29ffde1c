"""Read planning for remote shards (``sadp_data.fetch``): range merging, blocks, whole-shard fallback, read-ahead.

The planner is pure, so it is tested on offsets tables alone; ``read_blocks`` is tested through a
local ``Location`` (the same code path as remote stores but ``cat_ranges``), against the bytes the
offsets point at. Servers come in ``tests/test_remote.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from sadp_data.fetch import FetchOptions, FetchStats, block_bounds, coalesce, plan_blocks, read_blocks
from sadp_data.remote import Location, is_remote


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
    ("name", "value"), [("gap_bytes", -1), ("readahead", 1.5), ("max_block", 0), ("whole_shard_fraction", 0)]
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
