"""Remote loader bench, client part: the same planned byte ranges read through fsspec and through obstore.

Part of ``sadp-data bench loader --backend remote`` (``loader_remote.run_remote_bench``). For one
epoch's plan at keep 0.5, the blocks of byte ranges ``ScoredShards`` fetches (``fetch.plan_blocks``
over each DataLoader worker's part, default ``FetchOptions``) are read block after block with
``Location.read_ranges`` — the read path of the loader without the DataLoader, tar parsing and
checksums — once per client and round, interleaved. So this isolates what the HTTP client costs,
which the loader's epoch time can hide.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from sadp_data.remote.fetch import plan_blocks

CLIENTS = ("fsspec", "obstore")


def planned_ranges(loader: Any, epoch: int) -> list[tuple[list[str], list[int], list[int]]]:
    """Per block of ``epoch``'s plan, for every DataLoader worker's part in turn: the shard names and
    byte ranges that ``loader`` (a ``ShardLoader``) requests."""
    dataset = loader.dataset
    dataset.sampler.set_epoch(epoch)
    index = dataset.index
    names = [entry["url"] for entry in index.shards]
    sizes = [entry["bytes"] for entry in index.shards]
    workers = max(1, loader.loader.num_workers)
    parts = [dataset.sampler.rank_slice().worker_slice(worker, workers) for worker in range(workers)]
    blocks = [
        block
        for part in parts
        for block in plan_blocks(index.offsets[part.order, :3], sizes, dataset.window, dataset.fetch)
    ]
    return [
        (
            [names[read.shard] for read in block.reads for _ in range(read.starts.size)],
            [start for read in block.reads for start in read.starts.tolist()],
            [stop for read in block.reads for stop in read.stops.tolist()],
        )
        for block in blocks
    ]


def measure_clients(loader: Any, rounds: int = 3, epoch: int = 1) -> dict[str, Any]:
    """``{client: {"read_s": median, "read_s_rounds": [...], "bytes": n}, "ranges": R, "blocks": B}``.

    The reads run in a spawned process: obstore is not fork-safe, so this process, which forks
    DataLoader workers that read through obstore, must not use it itself (``sadp_data.remote.obstore_reads``).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    location = loader.dataset.index.shard_location
    blocks = planned_ranges(loader, epoch)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_read_rounds, location, blocks, rounds).result()


def _read_rounds(location: Any, blocks: list[tuple[list[str], list[int], list[int]]], rounds: int) -> dict[str, Any]:
    """The rounds of ``measure_clients`` (in its spawned process)."""
    times: dict[str, list[float]] = {client: [] for client in CLIENTS}
    counts: dict[str, int] = {}
    for round_number in range(rounds):
        for client in CLIENTS if round_number % 2 == 0 else CLIENTS[::-1]:
            start = time.perf_counter()
            total = 0
            for names, starts, stops in blocks:
                total += sum(len(part) for part in location.read_ranges(names, starts, stops, client=client))
            times[client].append(time.perf_counter() - start)
            counts[client] = total
    result: dict[str, Any] = {
        client: {"read_s": statistics.median(times[client]), "read_s_rounds": times[client], "bytes": counts[client]}
        for client in CLIENTS
    }
    result["ranges"] = sum(len(names) for names, _, _ in blocks)
    result["blocks"] = len(blocks)
    return result
