"""The walk of ``partitioned_plan`` on one shard: its picks of ``reference.systematic_select``, as records.

Given every walk block's integer total (gathered by the planner) and this shard's fixed-point
probabilities, ``walk_partition`` walks the shard's own blocks exactly as the single-process walk does
and returns each pick as a ``sharded_shuffle.record_dtype`` record: its position in the global
``picks`` array (the walk's level just before it), the example and its importance weight
``K / (N π_i)``, computed here from the fixed point the walk already reads.

Memory: the records (12 bytes a pick while ``N`` fits uint32), allocated once at their exact count
(a block's picks are the levels its total crosses, known before walking), plus ``O(N/WALK_BLOCK)``
for the blocks' starts and temporaries of ``PIECE`` elements.
"""

from __future__ import annotations

import numpy as np

from ..kernels import reference
from ..kernels.reference import ONE, WALK_BLOCK, EpochKeys
from ._partition_shuffle import PIECE, record_dtype

#: Walk blocks walked at once (one piece's worth of examples).
_WALK_CHUNK = max(1, PIECE // WALK_BLOCK)


def walk_partition(
    fixed: np.ndarray, block_totals: np.ndarray, num_examples: int, sample_size: int, lo: int, keys: EpochKeys
) -> np.ndarray:
    """This shard's picks of ``reference.systematic_select`` over ``walk_order``, as records.

    ``fixed``: the shard's quantised probabilities (uint64, examples ``[lo, lo + len)``, whole walk
    blocks); ``block_totals``: every walk block's total (uint64, ``⌈N/WALK_BLOCK⌉``). Returns
    ``record_dtype(N)`` records in the shard's block order: ``key`` the pick's position in the global
    ``picks`` array, ``index`` the example, ``weight`` ``float32(K / (N · fixed/ONE))`` as the
    reference's ``plan`` computes it. Raises ``RuntimeError`` if the walk finds another number of picks
    than the block totals promise (inconsistent totals).
    """
    count = fixed.shape[0]
    order, multipliers, offsets = reference.walk_blocks(num_examples, keys)
    visited = block_totals[order]  # the walk's running total at each block's start, offset included
    starts = np.empty_like(visited)
    starts[order] = np.cumsum(visited, dtype=np.uint64) - visited + np.uint64(reference.walk_offset(keys))
    del order, visited
    first, last = lo // WALK_BLOCK, (lo + count + WALK_BLOCK - 1) // WALK_BLOCK
    shift = np.uint64(32)
    own = starts[first:last]
    # a value is at most ONE, so the level rises by at most one a step: a block's picks are the levels it crosses
    total = int((((own + block_totals[first:last]) >> shift) - (own >> shift)).sum())
    picks = np.empty(total, dtype=record_dtype(num_examples))
    steps = np.arange(WALK_BLOCK, dtype=np.uint64)
    mask = np.uint64(WALK_BLOCK - 1)
    filled = 0
    for chunk in range(first, last, _WALK_CHUNK):
        blocks = np.arange(chunk, min(chunk + _WALK_CHUNK, last))
        local = (multipliers[blocks][:, None] * steps + offsets[blocks][:, None]) & mask
        index = blocks[:, None] * WALK_BLOCK + local.astype(np.int64)
        inside = index < num_examples
        values = np.where(inside, fixed[np.where(inside, index - lo, 0)], np.uint64(0))  # 0: never picked
        start = starts[blocks][:, None]
        level = (np.cumsum(values, axis=1, dtype=np.uint64) + start) >> shift
        previous = np.concatenate([start >> shift, level[:, :-1]], axis=1)
        picked = level > previous
        out = picks[filled : filled + int(np.count_nonzero(picked))]
        if out.shape[0] != np.count_nonzero(picked):
            raise RuntimeError("the walk found more picks than its block totals allow")
        out["key"], out["index"] = previous[picked], index[picked]
        probabilities = values[picked].astype(np.float64) / float(ONE)
        out["weight"] = (sample_size / (num_examples * probabilities)).astype(np.float32)
        filled += out.shape[0]
    if filled != total:
        raise RuntimeError(f"the walk found {filled} picks where its block totals promise {total}")
    return picks


def all_picks(lo: int, hi: int, num_examples: int) -> np.ndarray:
    """The picks of a plan that draws every example (``K = N``): position = example ``[lo, hi)``, weight 1."""
    picks = np.empty(hi - lo, dtype=record_dtype(num_examples))
    for start in range(0, hi - lo, PIECE):
        stop = min(hi - lo, start + PIECE)
        picks["key"][start:stop] = picks["index"][start:stop] = np.arange(lo + start, lo + stop)
    picks["weight"] = 1.0
    return picks
