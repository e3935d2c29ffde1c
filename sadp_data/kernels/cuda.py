"""CUDA backend (numba.cuda): the reference plan on the GPU, bit-identical to ``reference``.

Device arrays in (numpy arrays are copied over) and device arrays out. Each kernel reproduces one
reference step with the same arithmetic in the same order, which fixes the parallel structure:

* float totals: one thread per ``SUM_BLOCK`` block summing sequentially, partial sums combined on the
  host in block order (they are few);
* smoothing, capping passes, quantisation: one thread per block, the capping loop driven by the host
  (with the same sampled guess, computed on the host by the numba CPU kernels);
* the walk: block totals per walk block, their prefix in walk order on the host, then one thread per
  walk block;
* the shuffle: per-chunk bucket histograms, a stable scatter, one Fisher–Yates thread per bucket.

The greedy remainder of the quantisation touches only the first few entries and runs on the host.
Run the tests with ``NUMBA_ENABLE_CUDASIM=1`` on machines without a GPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda

from . import reference
from .numba_capping import capping_guess_from_sample
from .reference import ONE, SUM_BLOCK, WALK_BLOCK, EpochKeys

#: Backend interface (``sadp_data.kernels.KernelBackend``).
name = "cuda"
arrays = "numba.cuda"
exact = True

_THREADS = 128
_CHUNKS = 256

_ONE = np.uint64(ONE)
_TOP = np.uint64(ONE - 1)
_MASK = np.uint64(WALK_BLOCK - 1)
_HALF = np.uint64(32)

#: ``reference.splitmix64`` itself as a device function.
_random_bits = cuda.jit(device=True, inline=True)(reference.splitmix64)


@cuda.jit
def _seen_partial(scores, seen, all_seen, partial, counts):
    b = cuda.grid(1)
    if b >= partial.shape[0]:
        return
    total = 0.0
    count = 0
    for i in range(b * SUM_BLOCK, min(scores.shape[0], (b + 1) * SUM_BLOCK)):
        if all_seen or seen[i] > 0:
            total += np.float64(scores[i])
            count += 1
    partial[b] = total
    counts[b] = count


@cuda.jit
def _smooth(scores, seen, all_seen, mean, smoothing, out, partial):
    b = cuda.grid(1)
    if b >= partial.shape[0]:
        return
    total = 0.0
    for i in range(b * SUM_BLOCK, min(scores.shape[0], (b + 1) * SUM_BLOCK)):
        relative = np.float64(scores[i]) / mean if (all_seen or seen[i] > 0) else 1.0
        value = np.float32((1.0 - smoothing) * relative + smoothing)
        out[i] = value
        total += np.float64(value)
    partial[b] = total


@cuda.jit
def _cap_pass(weights, capped, scale, counts, partial):
    b = cuda.grid(1)
    if b >= partial.shape[0]:
        return
    count = 0
    newly = 0.0
    for i in range(b * SUM_BLOCK, min(weights.shape[0], (b + 1) * SUM_BLOCK)):
        weight = np.float64(weights[i])
        if capped[i] == 0 and scale * weight >= 1.0:
            capped[i] = 1
            count += 1
            newly += weight
    counts[b] = count
    partial[b] = newly


@cuda.jit
def _quantize(weights, scale, capped, fixed, totals):
    w = cuda.grid(1)
    if w >= totals.shape[0]:
        return
    one = np.float64(_ONE)
    top = np.float64(_TOP)
    total = np.uint64(0)
    for i in range(w * WALK_BLOCK, min(weights.shape[0], (w + 1) * WALK_BLOCK)):
        if capped[i] != 0:
            fixed[i] = 0
            total += _ONE
        else:
            value = min(max(float(math.floor(scale * np.float64(weights[i]) * one)), 0.0), top)
            fixed[i] = np.uint32(value)
            total += np.uint64(fixed[i])
    totals[w] = total


@cuda.jit
def _walk(fixed, capped, multipliers, offsets, starts, first_pick, sample_size, with_weights, picks, weights):
    b = cuda.grid(1)
    if b >= starts.shape[0]:
        return
    n = fixed.shape[0]
    walk = starts[b]
    level = walk >> _HALF
    slot = first_pick[b]
    one = np.float64(_ONE)
    for j in range(WALK_BLOCK):
        index = b * WALK_BLOCK + np.int64((multipliers[b] * np.uint64(j) + offsets[b]) & _MASK)
        if index < n:
            value = np.uint64(fixed[index]) | (np.uint64(capped[index]) << _HALF)
            walk += value
            if (walk >> _HALF) > level:
                picks[slot] = index
                if with_weights:
                    weights[slot] = np.float32(sample_size / (n * (np.float64(value) / one)))
                slot += 1
                level = walk >> _HALF


@cuda.jit
def _histogram(size, per_chunk, bucket_key, buckets, counts, bucket_of):
    c = cuda.grid(1)
    if c >= counts.shape[0]:
        return
    for i in range(c * per_chunk, min(size, (c + 1) * per_chunk)):
        t = np.uint32(((_random_bits(bucket_key, np.uint64(i)) >> _HALF) * np.uint64(buckets)) >> _HALF)
        bucket_of[i] = t
        counts[c, t] += 1


@cuda.jit
def _scatter(items, weights, per_chunk, bucket_of, cursor, out_items, out_weights):
    c = cuda.grid(1)
    if c >= cursor.shape[0]:
        return
    for i in range(c * per_chunk, min(items.shape[0], (c + 1) * per_chunk)):
        t = bucket_of[i]
        slot = cursor[c, t]
        out_items[slot] = items[i]
        out_weights[slot] = weights[i]
        cursor[c, t] = slot + 1


@cuda.jit
def _fisher_yates(items, weights, starts, swap_key):
    t = cuda.grid(1)
    if t >= starts.shape[0] - 1:
        return
    start = starts[t]
    for i in range(starts[t + 1] - start - 1, 0, -1):
        here = start + i
        there = start + np.int64(((_random_bits(swap_key, np.uint64(here)) >> _HALF) * np.uint64(i + 1)) >> _HALF)
        items[here], items[there] = items[there], items[here]
        weights[here], weights[there] = weights[there], weights[here]


@cuda.jit
def _gather_strided(values, stride, out):
    k = cuda.grid(1)
    if k < out.shape[0]:
        out[k] = values[k * stride]


def _grid(count: int) -> tuple[int, int]:
    return max(1, -(-count // _THREADS)), _THREADS


def _combine(partial) -> float:
    total = 0.0
    for value in partial.copy_to_host():
        total += float(value)
    return total


def _shuffle(items, weights, key: np.uint64):
    size = items.shape[0]
    buckets = reference.shuffle_buckets(size)
    bucket_key = reference.random_bits(key, np.zeros(1, np.uint64))[0]
    swap_key = reference.random_bits(key, np.ones(1, np.uint64))[0]
    per_chunk = -(-size // _CHUNKS)
    counts = cuda.to_device(np.zeros((_CHUNKS, buckets), dtype=np.int64))
    bucket_of = cuda.device_array(size, dtype=np.uint32)
    _histogram[_grid(_CHUNKS)](size, per_chunk, bucket_key, buckets, counts, bucket_of)
    host_counts = counts.copy_to_host()
    ends = np.cumsum(host_counts.T.reshape(-1)).reshape(buckets, _CHUNKS)
    cursor = (ends - host_counts.T).T.copy()
    starts = np.concatenate([[0], np.cumsum(host_counts.sum(axis=0))]).astype(np.int64)
    out_items = cuda.device_array(size, dtype=np.int64)
    out_weights = cuda.device_array(size, dtype=np.float32)
    _scatter[_grid(_CHUNKS)](items, weights, per_chunk, bucket_of, cuda.to_device(cursor), out_items, out_weights)
    _fisher_yates[_grid(buckets)](out_items, out_weights, cuda.to_device(starts), swap_key)
    return out_items, out_weights


def _capping(weights, sample_size: int, total: float, blocks: int):
    """The host-driven capping iteration of ``reference.capping_scale`` over device weights."""
    count = weights.shape[0]
    capped = cuda.to_device(np.zeros(count, dtype=np.uint8))
    counts = cuda.device_array(blocks, dtype=np.int64)
    partial = cuda.device_array(blocks, dtype=np.float64)
    remaining = float(sample_size)
    guess = None
    if count >= reference.GUESS_MIN:
        stride = count // reference.GUESS_SAMPLE
        sample = cuda.device_array(min(reference.GUESS_SAMPLE, -(-count // stride)), dtype=np.float32)
        _gather_strided[_grid(sample.shape[0])](weights, stride, sample)
        guess = capping_guess_from_sample(sample.copy_to_host(), count, sample_size, total)
    if guess is not None:
        _cap_pass[_grid(blocks)](weights, capped, guess, counts, partial)
        count = int(counts.copy_to_host().sum())
        uncapped = total - _combine(partial)
        if count < sample_size and (sample_size - count) / uncapped >= guess:
            remaining, total = float(sample_size - count), uncapped
        else:
            capped = cuda.to_device(np.zeros(weights.shape[0], dtype=np.uint8))
    while True:
        scale = remaining / total
        _cap_pass[_grid(blocks)](weights, capped, scale, counts, partial)
        count = int(counts.copy_to_host().sum())
        if count == 0:
            return scale, capped
        remaining -= count
        if remaining == 0.0:
            return 0.0, capped
        total -= _combine(partial)


def _spread_remainder(fixed, capped, totals, sample_size: int) -> None:
    """The greedy remainder of ``reference.quantize``, on the host over the first entries only."""
    target = sample_size * ONE
    host_totals = totals.copy_to_host()
    current = int(host_totals.sum(dtype=np.uint64))
    if current == target:
        return
    adding = current < target
    amount = abs(target - current)
    start = 0
    while amount > 0:
        stop = min(fixed.shape[0], start + WALK_BLOCK)
        values = fixed[start:stop].copy_to_host().astype(np.int64)
        flags = capped[start:stop].copy_to_host()
        for k in range(stop - start):
            if amount == 0:
                break
            if flags[k] == 0:
                step = min((ONE - 1 - values[k]) if adding else values[k], amount)
                block = (start + k) // WALK_BLOCK
                if adding:
                    values[k] += step
                    host_totals[block] += np.uint64(step)
                else:
                    values[k] -= step
                    host_totals[block] -= np.uint64(step)
                amount -= step
        fixed[start:stop].copy_to_device(values.astype(np.uint32))
        start = stop
    totals.copy_to_device(host_totals)


def shuffle_permutation(size: int, key: np.uint64, device: str | None = None) -> Any:
    """``reference.shuffle_permutation`` as an int64 device array, bit-identical.

    Computed on numba.cuda's current device (``device`` is ignored); the shuffle kernels move a
    float32 payload alongside, here one of ones, so it costs what shuffling a weighted plan costs.
    """
    items = cuda.to_device(np.arange(size, dtype=np.int64))
    return _shuffle(items, cuda.to_device(np.ones(size, np.float32)), key)[0]


def plan(
    scores: Any,
    seen: Any | None,
    sample_size: int,
    smoothing: float,
    uniform: bool,
    keys: EpochKeys,
    device: str | None = None,
) -> tuple[Any, Any]:
    """``reference.plan`` as device arrays ``(order, weights)``, bit-identical.

    Computed on numba.cuda's current device (``device`` is ignored); numpy scores are copied there.
    """
    num_examples = scores.shape[0]
    if sample_size == num_examples:
        return shuffle_permutation(num_examples, keys.shuffle), cuda.to_device(np.ones(num_examples, np.float32))
    scores = cuda.to_device(np.ascontiguousarray(scores)) if isinstance(scores, np.ndarray) else scores
    blocks = -(-num_examples // SUM_BLOCK)
    partial = cuda.device_array(blocks, dtype=np.float64)
    weights, total = None, None
    if not uniform:
        all_seen = seen is None
        seen_device = cuda.to_device(np.zeros(1, np.uint32) if all_seen else np.ascontiguousarray(seen))
        counts = cuda.device_array(blocks, dtype=np.int64)
        _seen_partial[_grid(blocks)](scores, seen_device, all_seen, partial, counts)
        count = int(counts.copy_to_host().sum())
        seen_total = _combine(partial)
        if count > 0 and seen_total / count > 0.0:
            weights = cuda.device_array(num_examples, dtype=np.float32)
            _smooth[_grid(blocks)](scores, seen_device, all_seen, seen_total / count, smoothing, weights, partial)
            total = _combine(partial)
    all_positive = weights is None or smoothing > 0
    if weights is None:
        weights = cuda.to_device(np.ones(num_examples, dtype=np.float32))
        total = float(num_examples)
    if all_positive:
        positive = num_examples
    else:
        positive = int(np.count_nonzero(weights.copy_to_host() > 0))
    reference.check_feasible(positive, num_examples, sample_size)
    if positive == sample_size:
        scale, capped = 0.0, cuda.to_device((weights.copy_to_host() > 0).view(np.uint8))
    else:
        scale, capped = _capping(weights, sample_size, total, blocks)
    walk_blocks = -(-num_examples // WALK_BLOCK)
    fixed = cuda.device_array(num_examples, dtype=np.uint32)
    totals = cuda.device_array(walk_blocks, dtype=np.uint64)
    _quantize[_grid(walk_blocks)](weights, scale, capped, fixed, totals)
    _spread_remainder(fixed, capped, totals, sample_size)
    order, multipliers, offsets = reference.walk_blocks(num_examples, keys)
    host_totals = totals.copy_to_host()
    ordered = host_totals[order]
    walk_before = np.uint64(reference.walk_offset(keys)) + np.concatenate(
        [np.zeros(1, np.uint64), np.cumsum(ordered, dtype=np.uint64)[:-1]]
    )
    picked_before = (walk_before >> _HALF).astype(np.int64)  # the offset itself is below 2**32
    starts = np.empty(walk_blocks, np.uint64)
    first_pick = np.empty(walk_blocks, np.int64)
    starts[order] = walk_before
    first_pick[order] = picked_before
    picks = cuda.device_array(sample_size, dtype=np.int64)
    pick_weights = cuda.to_device(np.ones(sample_size, dtype=np.float32))
    _walk[_grid(walk_blocks)](
        fixed,
        capped,
        cuda.to_device(multipliers),
        cuda.to_device(offsets),
        cuda.to_device(starts),
        cuda.to_device(first_pick),
        sample_size,
        not uniform,
        picks,
        pick_weights,
    )
    return _shuffle(picks, pick_weights, keys.shuffle)
