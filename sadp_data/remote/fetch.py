"""Read only the planned samples of remote shards: coalesced range requests, read ahead in threads.

A DataLoader worker's part of the epoch's plan is known before its first sample is read, so the
reads are planned up front (``plan_blocks``, a pure function of the part's offsets and the options):

1. **Blocks.** The part is cut into blocks of consecutive positions, each touching at most
   ``window`` shards (the sampler visits shards in windows of that many, so a block is about one
   window) and at most ``max_block`` positions (memory bound for plans that are not shard-local).
2. **Ranges.** Within a block, each shard's samples are sorted by offset and ranges closer than
   ``gap_bytes`` are merged into one request (fewer requests, a few unplanned bytes).
3. **Whole shards.** When a block's samples cover at least ``whole_shard_fraction`` of a shard's
   bytes, the shard is fetched whole in one request instead (and kept in the optional local cache).

With ``FetchOptions(adaptive=True)`` steps 2 and 3 are chosen per block from what requests cost
this reader instead (``RequestCosts``: ``seconds ≈ t₀ + a·requests + b·bytes``, fitted to its own
request batches). Merging two ranges saves one request and reads their gap, so ranges closer than
``a/b`` bytes are merged (for a linear cost this is the cheapest merging), and a shard is read
whole when one request for all its bytes is predicted cheaper. Block bounds stay a pure function
of the plan; only which bytes are fetched depends on the measured costs, never what is delivered.

``read_blocks`` then fetches ``readahead`` blocks ahead of the one being consumed, in a thread pool,
each block's ranges concurrently (fsspec's ``cat_ranges``), and yields every sample's bytes in plan
order. Memory: about ``readahead + 1`` blocks of fetched bytes.

What it trades: a sample is delivered only once its whole block has arrived (the first batch
waits for one block), and ``gap_bytes`` spends some egress on unplanned bytes to save requests.
``bench loader --backend remote`` measures both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import Location
from ._shard_cache import ShardCache
from .fetch_requests import FetchError, FetchStats, RequestPolicy
from .request_costs import RequestCosts


@dataclass(frozen=True)
class FetchOptions:
    """How remote shards are read (see the module docstring); the defaults come from the remote loader bench.

    Args:
        gap_bytes: merge two planned ranges of a shard when fewer than this many bytes separate them.
        whole_shard_fraction: fetch a shard whole when a block's samples cover this fraction of it (> 1: never).
        readahead: blocks fetched ahead of the one being consumed (0: fetch each block when needed).
        max_block: at most this many plan positions per block.
        retries: attempts per request (≥ 1, the first included): timeouts, connection errors, cut bodies
            and HTTP 5xx are retried, with exponential backoff and jitter, before the read fails with
            ``FetchError`` naming the shard, byte ranges and URL (``sadp_data.remote.fetch_requests``).
        timeout_s: seconds one request may take (connecting and its whole body), default 60; then it
            is cancelled and counts as a timeout (``FetchStats.timeouts``) and a failed attempt.
        backoff_s: the wait before the first retry, doubled for each later one (times a random factor
            in [0.5, 1); at most 10 s).
        cache_dir: keep whole-fetched shards here (``None``: no cache) and read them locally after.
        cache_bytes: evict the least recently used cached shards beyond this many bytes.
        client: ``"fsspec"`` (the default; the filesystem of ``storage_options``) or ``"obstore"``
            (``sadp_data.remote.obstore_reads``: the same requests sent by obstore; no faster in the bench), for
            the shard reads only.
        client_options: with ``client="obstore"``, keywords of ``obstore.store.from_url`` used instead
            of the translation of ``storage_options``.
        adaptive: plan each block's reads from the measured cost of this reader's requests
            (``RequestCosts``; ``gap_bytes`` and ``whole_shard_fraction`` still plan a probe's first
            shard and any block planned while no fit is possible).
            It minimises predicted time, not bytes: where requests are expensive (a server that spends
            milliseconds on each) it fetches unplanned bytes in fewer, larger requests.
    """

    gap_bytes: int = 4096
    whole_shard_fraction: float = 0.9
    readahead: int = 2
    max_block: int = 16384
    retries: int = 3
    timeout_s: float = 60.0
    backoff_s: float = 0.2
    cache_dir: str | None = None
    cache_bytes: int = 8 << 30
    client: str = "fsspec"
    client_options: dict[str, Any] | None = None
    adaptive: bool = False

    def __post_init__(self) -> None:
        for name in ("gap_bytes", "readahead", "max_block", "retries", "cache_bytes"):
            value = getattr(self, name)
            least = 1 if name in ("max_block", "retries") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"FetchOptions.{name} must be an integer ≥ {least}, got {value!r}")
        if self.client not in ("fsspec", "obstore"):
            raise ValueError(f"FetchOptions.client must be 'fsspec' or 'obstore', got {self.client!r}")
        if not isinstance(self.whole_shard_fraction, int | float) or self.whole_shard_fraction <= 0:
            raise ValueError(f"FetchOptions.whole_shard_fraction must be positive, got {self.whole_shard_fraction!r}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"FetchOptions.adaptive must be True or False, got {self.adaptive!r}")
        try:
            RequestPolicy(self.retries, self.timeout_s, self.backoff_s)
        except ValueError as error:
            raise ValueError(f"FetchOptions.{error}") from None

    @property
    def policy(self) -> RequestPolicy:
        """The timeout and retries of each request (``retries`` attempts, ``timeout_s``, ``backoff_s``)."""
        return RequestPolicy(self.retries, self.timeout_s, self.backoff_s)


@dataclass(frozen=True)
class ShardRead:
    """One shard's requests of a block: byte ranges ``[starts[j], stops[j])`` (``whole``: the entire shard)."""

    shard: int
    starts: np.ndarray
    stops: np.ndarray
    whole: bool


@dataclass(frozen=True)
class Block:
    """Plan positions ``[begin, end)`` of a part, the reads that cover them, and where each sample lies:
    position ``begin + p`` is in read ``read_of[p]``, range ``range_of[p]``, at byte ``offset_in[p]``,
    ``length[p]`` bytes long. ``probe``: ``RequestCosts``'s probe block (its ranged and whole reads timed apart)."""

    begin: int
    end: int
    reads: tuple[ShardRead, ...]
    read_of: np.ndarray
    range_of: np.ndarray
    offset_in: np.ndarray
    length: np.ndarray
    probe: bool = False


def coalesce(starts: np.ndarray, stops: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge ranges sorted by start whose gap is below ``gap``: ``(merged starts, merged stops, range of each input)``.

    Overlapping or touching ranges always merge (a gap of 0 merges only those).
    """
    if starts.size == 0:
        return starts.copy(), stops.copy(), np.zeros(0, np.int64)
    reach = np.maximum.accumulate(stops)
    new = np.ones(starts.shape[0], dtype=bool)
    new[1:] = starts[1:] - reach[:-1] >= max(gap, 1) if gap > 0 else starts[1:] > reach[:-1]
    which = np.cumsum(new) - 1
    merged_starts = starts[new]
    merged_stops = np.maximum.reduceat(stops, np.flatnonzero(new))
    return merged_starts, merged_stops, which.astype(np.int64)


def block_bounds(shards: np.ndarray, window: int, max_block: int) -> list[tuple[int, int]]:
    """Plan positions cut into ``[begin, end)`` blocks of ≤ ``window`` distinct shards and ≤ ``max_block`` positions."""
    bounds: list[tuple[int, int]] = []
    begin, seen = 0, set()
    for position, shard in enumerate(shards.tolist()):
        if position - begin >= max_block or (shard not in seen and len(seen) >= window):
            bounds.append((begin, position))
            begin, seen = position, set()
        seen.add(shard)
    if shards.size:
        bounds.append((begin, int(shards.size)))
    return bounds


def shard_reads(
    lo: np.ndarray, hi: np.ndarray, size: int, options: FetchOptions, request_cost: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """One shard's requests for ranges ``[lo, hi)`` sorted by start: ``(starts, stops, range of each input, whole)``.

    ``request_cost`` ``None``: the fixed rule (merge gaps below ``gap_bytes``, whole at
    ``whole_shard_fraction``). Otherwise one request is taken to cost as much as reading
    ``request_cost`` bytes: gaps below it are merged, and the shard is read whole when ``size +
    request_cost`` is at most the merged ranges' bytes plus their requests' cost (``inf``: always whole).
    """
    whole_read = (np.array([0]), np.array([size]), np.zeros(lo.size, np.int64), True)
    if request_cost is None:
        if int((hi - lo).sum()) >= options.whole_shard_fraction * size:
            return whole_read
        return (*coalesce(lo, hi, options.gap_bytes), False)
    if math.isinf(request_cost):
        return whole_read
    merged_lo, merged_hi, which = coalesce(lo, hi, math.ceil(request_cost))
    if size + request_cost <= float((merged_hi - merged_lo).sum()) + merged_lo.size * request_cost:
        return whole_read
    return merged_lo, merged_hi, which, False


class BlockPlanner:
    """The reads of a part whose offsets rows (``offsets.npy`` rows, plan order) are ``rows``, block by block.

    The block bounds (``block_bounds``) are fixed when it is built; ``block(n, request_cost)`` plans
    block ``n``'s reads by ``shard_reads``, a pure function of the rows, the shard sizes and
    ``request_cost``; ``probe``: the block's first shard by the fixed rule, its others whole
    (``RequestCosts``' probe).
    """

    def __init__(
        self, rows: np.ndarray, shard_bytes: Sequence[int], window: int, options: FetchOptions, begin: int = 0
    ) -> None:
        self.rows, self.shard_bytes, self.options, self.begin = rows, shard_bytes, options, begin
        self.bounds = block_bounds(rows[:, 0], max(1, window), options.max_block)

    def __len__(self) -> int:
        return len(self.bounds)

    def block(self, number: int, request_cost: float | None = None, probe: bool = False) -> Block:
        first, last = self.bounds[number]
        rows = self.rows[first:last]
        shards, starts, stops = rows[:, 0], rows[:, 1], rows[:, 1] + rows[:, 2]
        reads: list[ShardRead] = []
        read_of = np.empty(last - first, np.int64)
        range_of = np.empty(last - first, np.int64)
        offset_in = np.empty(last - first, np.int64)
        for position, shard in enumerate(np.unique(shards).tolist()):
            members = np.flatnonzero(shards == shard)
            order = members[np.argsort(starts[members], kind="stable")]
            lo, hi = starts[order], stops[order]
            cost = (None if position == 0 else math.inf) if probe else request_cost
            merged_lo, merged_hi, which, whole = shard_reads(lo, hi, int(self.shard_bytes[shard]), self.options, cost)
            read_of[order] = len(reads)
            range_of[order] = which
            offset_in[order] = lo - merged_lo[which]
            reads.append(ShardRead(int(shard), merged_lo, merged_hi, whole))
        length = rows[:, 2].astype(np.int64)
        return Block(self.begin + first, self.begin + last, tuple(reads), read_of, range_of, offset_in, length, probe)


class _Planned:
    """Blocks planned already, served as a ``BlockPlanner`` serves its own (no cost advice taken)."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        self.blocks = blocks
        self.bounds = [(block.begin, block.end) for block in blocks]

    def __len__(self) -> int:
        return len(self.blocks)

    def block(self, number: int, request_cost: float | None = None, probe: bool = False) -> Block:
        return self.blocks[number]


def plan_blocks(
    rows: np.ndarray, shard_bytes: Sequence[int], window: int, options: FetchOptions, begin: int = 0
) -> list[Block]:
    """Every block of ``BlockPlanner(rows, …)`` planned by the fixed rule; pure."""
    planner = BlockPlanner(rows, shard_bytes, window, options, begin)
    return [planner.block(number) for number in range(len(planner))]


def _fetch(
    location: Location,
    names: Sequence[str],
    block: Block,
    cache: ShardCache | None,
    sizes: Sequence[int],
    stats: FetchStats,
    options: FetchOptions,
    costs: RequestCosts | None = None,
) -> list[list[bytes | memoryview]]:
    """The bytes of every range of ``block``, per read: cached shards read locally, every other range of the
    block in one concurrent request batch (a probe block: its ranged and its whole reads in two batches,
    each timed for ``costs``). Errors name the shards and byte ranges."""
    cached = [None if cache is None else cache.get(names[read.shard], int(sizes[read.shard])) for read in block.reads]
    results: list[list[bytes | memoryview]] = [[] for _ in block.reads]
    wanted = [(number, read) for number, read in enumerate(block.reads) if cached[number] is None]
    batches = [[w for w in wanted if not w[1].whole], [w for w in wanted if w[1].whole]] if block.probe else [wanted]
    ranges = sum(read.starts.size for _, read in wanted)
    settings = {"client": options.client, "client_options": options.client_options}
    try:
        for number, path in enumerate(cached):
            if path is not None:
                read = block.reads[number]
                local = Location(str(path.parent))
                results[number] = local.read_ranges(
                    [path.name] * read.starts.size, read.starts.tolist(), read.stops.tolist()
                )
                stats.add(0, 0, cache_hits=1)
        for batch in filter(None, batches):
            request_names = [names[read.shard] for _, read in batch for _ in range(read.starts.size)]
            starts = [start for _, read in batch for start in read.starts.tolist()]
            stops = [stop for _, read in batch for stop in read.stops.tolist()]
            began = time.perf_counter()
            shard_sizes = [int(sizes[read.shard]) for _, read in batch for _ in range(read.starts.size)]
            parts = location.read_ranges(
                request_names, starts, stops, sizes=shard_sizes, policy=options.policy, stats=stats, **settings
            )
            size = sum(len(part) for part in parts)
            if costs is not None:
                costs.observe(len(parts), size, time.perf_counter() - began)
            stats.add(len(parts), size)
            position = 0
            for number, read in batch:
                results[number] = parts[position : position + read.starts.size]
                position += read.starts.size
    except (OSError, ValueError) as error:
        shards = ", ".join(location.join(name) for name in sorted({names[read.shard] for read in block.reads}))
        raise FetchError(f"shard {shards}: {ranges} byte ranges: {error}") from error
    if cache is not None:
        for number, read in wanted:
            if read.whole:
                cache.put(names[read.shard], results[number][0])
    return results


def read_blocks(
    location: Location,
    names: Sequence[str],
    sizes: Sequence[int],
    blocks: Sequence[Block] | BlockPlanner,
    options: FetchOptions,
    stats: FetchStats | None = None,
    fingerprint: str = "",
    costs: RequestCosts | None = None,
) -> Iterator[bytes | OSError]:
    """The bytes of every planned sample of ``blocks``, in plan order, fetched ``options.readahead`` blocks ahead.

    ``blocks`` planned already, or a ``BlockPlanner`` whose blocks are planned as they are submitted:
    by the fixed rule, or with ``options.adaptive`` by ``costs`` (a ``RequestCosts``, new if ``None``),
    which the fetches feed. A block whose read fails (after ``options.policy``'s timeouts and retries)
    yields, for each of its samples, the ``FetchError`` (an ``OSError``) naming the shard and byte
    ranges, and reading goes on with the next block: the caller raises or skips. Blocks still in
    flight when the caller stops are cancelled.
    """
    stats = stats if stats is not None else FetchStats()
    cache = None
    if options.cache_dir is not None:
        cache = ShardCache(Path(options.cache_dir) / (fingerprint or "shards"), options.cache_bytes)
    costs = (costs or RequestCosts()) if options.adaptive else None
    planner = blocks if isinstance(blocks, BlockPlanner) else _Planned(blocks)
    planning = costs if isinstance(blocks, BlockPlanner) else None  # blocks planned already take no advice
    if not len(planner):
        return
    with ThreadPoolExecutor(max(1, options.readahead), thread_name_prefix="sadp-fetch") as pool:

        def fetched(
            number: int, decided: tuple[bool, float | None] | None
        ) -> tuple[Block, list[list[bytes | memoryview]]]:
            probe, request_cost = decided or (planning.plan_next() if planning is not None else (False, None))
            try:  # planned in the pool's thread: an adaptive plan waits for the probe there, not the consumer
                block = planner.block(number, request_cost, probe)
                return block, _fetch(location, names, block, cache, sizes, stats, options, costs)
            finally:
                if probe and planning is not None:
                    planning.probe_done()

        def submit(number: int) -> Future[tuple[Block, list[list[bytes | memoryview]]]]:
            decided = planning.plan_next() if planning is not None and number == 0 else None  # block 0 probes
            return pool.submit(fetched, number, decided)

        ahead, count = options.readahead, len(planner)
        pending = [submit(number) for number in range(min(ahead, count))]
        try:
            for number in range(count):
                if number + ahead < count:  # while block n is consumed, n+1 … n+ahead are in flight
                    pending.append(submit(number + ahead))
                future = pending.pop(0)
                try:
                    block, parts = future.result()
                except OSError as error:
                    first, last = planner.bounds[number]
                    for _ in range(last - first):
                        yield error
                    continue
                where = (block.read_of, block.range_of, block.offset_in, block.length)
                for read, part, offset, length in zip(*(column.tolist() for column in where), strict=True):
                    yield bytes(memoryview(parts[read][part])[offset : offset + length])
        finally:
            for future in pending:
                future.cancel()
