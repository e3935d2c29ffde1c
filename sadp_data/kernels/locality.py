"""Shard and page locality: a plan reordered so a reader keeps few shards open (``locality_order``).

The numpy reorder every backend's plan goes through (``kernels.localize``): the set of examples and
their weights are unchanged, so it sits beside the reference, not in it.
"""

from __future__ import annotations

import numpy as np

from .reference import random_bits


def locality_order(
    order: np.ndarray,
    weights: np.ndarray,
    shard_size: int | None,
    window: int,
    key: np.uint64,
    *,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a plan for sharded storage: shards in random order, shuffled within windows of shards.

    Example ``i`` lives in shard ``i // shard_size`` (or ``groups[i]`` when ``groups`` is given, for
    storage whose shards or pages are not equal runs of consecutive examples). Shards are ranked by a
    keyed random key; consecutive groups of ``window`` shards form a window; the plan visits windows in
    rank order and the examples of a window in a keyed random order. A reader then keeps at most
    ``window`` shards open and reads each one once per epoch, while batches still mix examples of
    ``window`` shards (like FFCV's quasi-random order and Streaming's py1e). The set of examples and
    their weights are unchanged; only the order is. Trade-off: batches are less mixed than under a
    full shuffle — raise ``window`` for more mixing, lower it for more locality.
    """
    if window <= 0 or (groups is None and (shard_size is None or shard_size <= 0)):
        raise ValueError(f"shard_size and window must be positive, got {shard_size} and {window}")
    order = np.asarray(order, dtype=np.int64)
    shard_key, item_key = random_bits(key ^ np.uint64(0x5A4D), np.arange(2, dtype=np.uint64))
    shards = order // shard_size if groups is None else np.asarray(groups, dtype=np.int64)[order]
    distinct = np.unique(shards)
    shard_rank = np.argsort(np.argsort(random_bits(shard_key, distinct.astype(np.uint64)), kind="stable"))
    window_of = shard_rank[np.searchsorted(distinct, shards)] // window
    within = random_bits(item_key, order.astype(np.uint64))
    arrangement = np.lexsort((within, window_of))
    return order[arrangement], np.asarray(weights)[arrangement]
