"""Numba CPU backend: the reference plan as parallel compiled loops, bit-identical to ``reference``.

Parallel over fixed blocks (``prange``): float totals are per-block sequential sums combined in
block order, exactly as ``reference.blocked_sum``; the capping iteration is ``numba_capping``'s;
integer prefix sums over walk blocks are split into a per-block total pass, a short sequential pass
over blocks, and a per-block walk; the shuffle is a stable counting-sort scatter (per-thread
histograms, so the result does not depend on the thread count) and per-bucket Fisher–Yates.
Probabilities are kept as uint32 plus a capped mask and the smoothed weights are freed before the
walk, so N = 10^8 plans in under 4 GB. Kernels below ``numba_jit.SERIAL_BELOW`` elements run their
serial twin. Inputs of any array type are copied to the host; results are numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import prange

from . import reference
from .arrays import to_host
from .numba_capping import capping_scale
from .numba_jit import OPTIONS, Kernel, ordered_sum, random_bits
from .reference import ONE, SUM_BLOCK, WALK_BLOCK, EpochKeys, shuffle_buckets

#: Backend interface (``sadp_data.kernels.KernelBackend``).
name = "numba"
arrays = "numpy"
exact = True

_ONE = np.uint64(ONE)
_TOP = np.uint64(ONE - 1)
_ZERO = np.uint64(0)
_MASK = np.uint64(WALK_BLOCK - 1)
_HALF = np.uint64(32)


@Kernel
def _seen_mean(scores, seen, all_seen):
    n = scores.shape[0]
    blocks = (n + SUM_BLOCK - 1) // SUM_BLOCK
    partial = np.zeros(blocks, dtype=np.float64)
    counts = np.zeros(blocks, dtype=np.int64)
    for b in prange(blocks):
        total = 0.0
        count = 0
        for i in range(b * SUM_BLOCK, min(n, (b + 1) * SUM_BLOCK)):
            if all_seen or seen[i] > 0:
                total += np.float64(scores[i])
                count += 1
        partial[b] = total
        counts[b] = count
    return ordered_sum(partial), counts.sum()


@Kernel
def _smooth(scores, seen, all_seen, mean, smoothing):
    """Smoothed float32 weights and their blocked float64 total (one pass)."""
    n = scores.shape[0]
    blocks = (n + SUM_BLOCK - 1) // SUM_BLOCK
    out = np.empty(n, dtype=np.float32)
    partial = np.zeros(blocks, dtype=np.float64)
    for b in prange(blocks):
        total = 0.0
        for i in range(b * SUM_BLOCK, min(n, (b + 1) * SUM_BLOCK)):
            relative = np.float64(scores[i]) / mean if (all_seen or seen[i] > 0) else 1.0
            value = np.float32((1.0 - smoothing) * relative + smoothing)
            out[i] = value
            total += np.float64(value)
        partial[b] = total
    return out, ordered_sum(partial)


@Kernel
def _quantize(weights, scale, capped, sample_size):
    """``reference.quantize`` as uint32 plus the capped mask; also returns the walk-block totals."""
    n = weights.shape[0]
    blocks = (n + SUM_BLOCK - 1) // SUM_BLOCK
    walk_blocks = (n + WALK_BLOCK - 1) // WALK_BLOCK
    per_block = SUM_BLOCK // WALK_BLOCK
    fixed = np.empty(n, dtype=np.uint32)
    walk_totals = np.zeros(walk_blocks, dtype=np.uint64)
    one = np.float64(_ONE)
    top = np.float64(_TOP)
    for b in prange(blocks):
        for w in range(b * per_block, min(walk_blocks, (b + 1) * per_block)):
            total = _ZERO
            for i in range(w * WALK_BLOCK, min(n, (w + 1) * WALK_BLOCK)):
                if capped[i] != 0:
                    fixed[i] = 0
                    total += _ONE
                else:
                    value = np.floor(scale * np.float64(weights[i]) * one)
                    value = min(max(value, 0.0), top)
                    fixed[i] = np.uint32(value)
                    total += np.uint64(fixed[i])
            walk_totals[w] = total
    current = _ZERO
    for w in range(walk_blocks):
        current += walk_totals[w]
    target = np.uint64(sample_size) * _ONE
    if current == target:
        return fixed, walk_totals
    adding = current < target
    amount = target - current if adding else current - target
    # Greedy in index order: the first blocks almost always absorb the remainder, so walk them
    # sequentially and stop as soon as it is spread.
    i = 0
    while amount > _ZERO:
        if capped[i] == 0:
            value = np.uint64(fixed[i])
            step = min(_TOP - value if adding else value, amount)
            fixed[i] = np.uint32(value + step if adding else value - step)
            if adding:
                walk_totals[i // WALK_BLOCK] += step
            else:
                walk_totals[i // WALK_BLOCK] -= step
            amount -= step
        i += 1
    return fixed, walk_totals


@numba.njit(inline="always", **OPTIONS)
def _fixed_value(fixed, capped, i):
    # ``fixed`` is 0 where capped, so this is ``2**32`` for capped entries, branch-free.
    return np.uint64(fixed[i]) | (np.uint64(capped[i]) << _HALF)


@Kernel
def _walk(fixed, capped, totals, order_key, maps_key, offset_key, sample_size, with_weights):
    """``reference.systematic_select`` over ``reference.walk_order`` with the picks' weights, block-parallel.

    The keys are ``EpochKeys.block_order``, ``.block_maps`` and ``.offset``; the block order and
    maps are ``reference.walk_blocks``'s, computed here in parallel.
    """
    n = fixed.shape[0]
    blocks = (n + WALK_BLOCK - 1) // WALK_BLOCK
    sort_keys = np.empty(blocks, dtype=np.uint64)
    multipliers = np.empty(blocks, dtype=np.uint64)
    offsets = np.empty(blocks, dtype=np.uint64)
    for b in prange(blocks):
        block = np.uint64(b)
        sort_keys[b] = random_bits(order_key, block) >> np.uint64(1)
        multipliers[b] = random_bits(maps_key, np.uint64(2) * block) & _MASK | np.uint64(1)
        offsets[b] = random_bits(maps_key, np.uint64(2) * block + np.uint64(1)) & _MASK
    order = np.argsort(sort_keys, kind="mergesort")
    offset = random_bits(offset_key, _ZERO) >> np.uint64(32)
    starts = np.empty(blocks, dtype=np.uint64)
    first_pick = np.empty(blocks, dtype=np.int64)
    walk = offset
    picked = 0
    for p in range(blocks):
        b = order[p]
        starts[b] = walk
        first_pick[b] = picked
        picked += np.int64(((walk + totals[b]) >> np.uint64(32)) - (walk >> np.uint64(32)))
        walk += totals[b]
    picks = np.empty(sample_size, dtype=np.int64)
    weights = np.ones(sample_size, dtype=np.float32)
    one = np.float64(_ONE)
    for b in prange(blocks):
        walk = starts[b]
        level = walk >> np.uint64(32)
        slot = first_pick[b]
        base = b * WALK_BLOCK
        for j in range(WALK_BLOCK):
            index = base + np.int64((multipliers[b] * np.uint64(j) + offsets[b]) & _MASK)
            if index < n:
                value = _fixed_value(fixed, capped, index)
                walk += value
                if (walk >> np.uint64(32)) > level:
                    picks[slot] = index
                    if with_weights:
                        weights[slot] = np.float32(sample_size / (n * (np.float64(value) / one)))
                    slot += 1
                    level = walk >> np.uint64(32)
    return picks, weights


@Kernel
def _scatter_shuffle(items, weights, key, buckets, chunks):
    """Stable scatter by hashed bucket, then Fisher–Yates per bucket (``reference.shuffle_permutation``).

    ``weights`` (one per item) move with their items; an empty ``weights`` shuffles the items alone
    and returns an empty array for them, so a plain permutation neither allocates nor moves weights.
    """
    size = items.shape[0]
    with_weights = weights.shape[0] == size
    bucket_key = random_bits(key, _ZERO)
    swap_key = random_bits(key, np.uint64(1))
    nb = np.uint64(buckets)
    per_chunk = (size + chunks - 1) // chunks
    counts = np.zeros((chunks, buckets), dtype=np.int64)
    bucket_of = np.empty(size, dtype=np.uint32)
    for c in prange(chunks):
        for i in range(c * per_chunk, min(size, (c + 1) * per_chunk)):
            t = np.uint32(((random_bits(bucket_key, np.uint64(i)) >> _HALF) * nb) >> _HALF)
            bucket_of[i] = t
            counts[c, t] += 1
    starts = np.empty(buckets, dtype=np.int64)
    cursor = np.empty((chunks, buckets), dtype=np.int64)
    position = 0
    for t in range(buckets):
        starts[t] = position
        for c in range(chunks):
            cursor[c, t] = position
            position += counts[c, t]
    out_items = np.empty_like(items)
    out_weights = np.empty(size if with_weights else 0, dtype=weights.dtype)
    for c in prange(chunks):
        for i in range(c * per_chunk, min(size, (c + 1) * per_chunk)):
            t = bucket_of[i]
            slot = cursor[c, t]
            out_items[slot] = items[i]
            if with_weights:
                out_weights[slot] = weights[i]
            cursor[c, t] = slot + 1
    for t in prange(buckets):
        start = starts[t]
        stop = starts[t + 1] if t + 1 < buckets else size
        for i in range(stop - start - 1, 0, -1):
            here = start + i
            there = start + np.int64(((random_bits(swap_key, np.uint64(here)) >> _HALF) * np.uint64(i + 1)) >> _HALF)
            out_items[here], out_items[there] = out_items[there], out_items[here]
            if with_weights:
                out_weights[here], out_weights[there] = out_weights[there], out_weights[here]
    return out_items, out_weights


def shuffle_permutation(size: int, key: np.uint64, device: str | None = None) -> np.ndarray:
    """``reference.shuffle_permutation``, bit-identical; ``device`` is ignored (computed on the host)."""
    items, _ = _scatter_shuffle.for_size(size)(
        np.arange(size, dtype=np.int64), np.empty(0, np.float32), key, shuffle_buckets(size), numba.get_num_threads()
    )
    return items


def plan(
    scores: Any,
    seen: Any | None,
    sample_size: int,
    smoothing: float,
    uniform: bool,
    keys: EpochKeys,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``reference.plan``, bit-identical (numpy arrays out; inputs copied to the host, ``device`` ignored)."""
    num_examples = scores.shape[0]
    if sample_size == num_examples:
        return shuffle_permutation(num_examples, keys.shuffle), np.ones(num_examples, np.float32)
    weights, total = None, None
    if not uniform:
        scores = np.ascontiguousarray(to_host(scores))
        all_seen = seen is None
        counts = np.zeros(1, np.uint32) if all_seen else np.ascontiguousarray(to_host(seen))
        seen_total, count = _seen_mean.for_size(num_examples)(scores, counts, all_seen)
        if count > 0 and seen_total / count > 0.0:
            weights, total = _smooth.for_size(num_examples)(
                scores, counts, all_seen, seen_total / count, float(smoothing)
            )
    if weights is None:
        weights = np.ones(num_examples, dtype=np.float32)
    positive = num_examples if smoothing > 0 else int(np.count_nonzero(weights > 0))
    reference.check_feasible(positive, num_examples, sample_size)
    if positive == sample_size:  # as in the reference: every positive weight is drawn
        scale, capped = 0.0, (weights > 0).view(np.uint8)
    else:
        scale, capped = capping_scale(weights, sample_size, total)
    fixed, totals = _quantize.for_size(num_examples)(weights, scale, capped, sample_size)
    del weights
    walk = _walk.for_size(num_examples)
    picks, pick_weights = walk(
        fixed, capped, totals, keys.block_order, keys.block_maps, keys.offset, sample_size, not uniform
    )
    del fixed, capped
    shuffle = _scatter_shuffle.for_size(sample_size)
    return shuffle(picks, pick_weights, keys.shuffle, shuffle_buckets(sample_size), numba.get_num_threads())
