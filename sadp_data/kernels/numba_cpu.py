"""Numba CPU backend: the reference plan as parallel compiled loops, bit-identical to ``reference``.

Parallel over fixed blocks (``prange``): float totals are per-block sequential sums combined in
block order, exactly as ``reference.blocked_sum``; integer prefix sums over walk blocks are split
into a per-block total pass, a short sequential pass over blocks, and a per-block walk; the shuffle
is a stable counting-sort scatter (per-thread histograms, so the result does not depend on the
thread count) and per-bucket Fisher–Yates. Probabilities are kept as uint32 plus a capped mask and
the smoothed weights are freed before the walk, so N = 10^8 plans in under 4 GB.
"""

from __future__ import annotations

import os
import types

import numba
import numpy as np
from numba import prange

# GNU OpenMP, numba's default parallel layer when TBB is absent, kills processes forked after it
# has run — which is what a DataLoader with workers does. The work-queue layer is fork-safe, at a
# price: a 10^6-example plan takes ~22 ms on it vs ~17 ms on OpenMP (2 cores). A user's explicit
# NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

from ..jit import CACHE
from . import reference
from .reference import GUESS_MIN, GUESS_SAMPLE, ONE, SUM_BLOCK, WALK_BLOCK, shuffle_buckets

_ONE = np.uint64(ONE)
_TOP = np.uint64(ONE - 1)
_ZERO = np.uint64(0)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = np.uint64(WALK_BLOCK - 1)
_HALF = np.uint64(32)
#: Candidate window of the capping shortcut (see ``_capping``).
_WINDOW = 0.99

_OPTIONS = {"cache": CACHE, "nogil": True}
#: Below this many elements the serial twin of a kernel runs: starting parallel work costs more.
SERIAL_BELOW = 1 << 18


class _Kernel:
    """A kernel compiled twice: parallel (``prange`` across threads) and serial (``prange`` as ``range``).

    Both come from one Python function and give identical results; ``for_size(n)`` picks the serial
    one for small inputs, where thread start-up dominates (0.3 ms vs 0.9 ms for a 60,000-item
    shuffle here). The serial twin gets its own name so numba caches the two separately.
    """

    def __init__(self, function) -> None:
        self.parallel = numba.njit(parallel=True, **_OPTIONS)(function)
        twin = types.FunctionType(function.__code__, function.__globals__, function.__name__ + "_serial")
        twin.__qualname__ = function.__qualname__ + "_serial"
        twin.__doc__ = function.__doc__
        self.serial = numba.njit(**_OPTIONS)(twin)
        self.__doc__ = function.__doc__

    def __call__(self, *args):
        return self.parallel(*args)

    def for_size(self, size: int):
        return self.serial if size < SERIAL_BELOW else self.parallel


@numba.njit(inline="always", **_OPTIONS)
def _random_bits(key, counter):
    x = key + (counter + np.uint64(1)) * _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@numba.njit(**_OPTIONS)
def _ordered_sum(partial):
    """Per-block partial sums added in block order (the outer level of ``reference.blocked_sum``)."""
    total = 0.0
    for b in range(partial.shape[0]):
        total += partial[b]
    return total


@_Kernel
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
    return _ordered_sum(partial), counts.sum()


@_Kernel
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
    return out, _ordered_sum(partial)


@_Kernel
def _total(weights):
    n = weights.shape[0]
    blocks = (n + SUM_BLOCK - 1) // SUM_BLOCK
    partial = np.zeros(blocks, dtype=np.float64)
    for b in prange(blocks):
        total = 0.0
        for i in range(b * SUM_BLOCK, min(n, (b + 1) * SUM_BLOCK)):
            total += np.float64(weights[i])
        partial[b] = total
    return _ordered_sum(partial)


@_Kernel
def _cap_pass(weights, capped, scale):
    """Cap every uncapped entry with ``scale·w ≥ 1``; returns (newly capped, their blocked sum).

    ``capped`` is uint8 and the update branch-free so the loop vectorises; adding ``weight * 0``
    leaves a float sum unchanged, so the blocked sums equal the reference's.
    """
    n = weights.shape[0]
    blocks = (n + SUM_BLOCK - 1) // SUM_BLOCK
    partial = np.zeros(blocks, dtype=np.float64)
    counts = np.zeros(blocks, dtype=np.int64)
    for b in prange(blocks):
        count = 0
        newly = 0.0
        for i in range(b * SUM_BLOCK, min(n, (b + 1) * SUM_BLOCK)):
            weight = np.float64(weights[i])
            hit = np.uint8(capped[i] == 0) & np.uint8(scale * weight >= 1.0)
            capped[i] |= hit
            count += hit
            newly += weight * hit
        counts[b] = count
        partial[b] = newly
    return counts.sum(), _ordered_sum(partial)


def _capping(weights: np.ndarray, sample_size: int, total: float | None = None) -> tuple[float, np.ndarray]:
    """``reference.capping_scale`` (same rounds, same guess, same float operations).

    ``total`` is the blocked sum of ``weights`` when the caller already has it. After the guessed
    pass, later rounds only touch *candidates* — entries within ``_WINDOW`` of being capped at the
    guessed scale, collected in index order — for as long as the scale stays below
    ``guess / _WINDOW`` (no other entry can be capped before that). Their blocked sums equal the
    full pass's, since every other entry would add exactly 0; beyond the window it falls back to
    full passes, so results never depend on the shortcut.
    """
    capped = np.zeros(weights.shape[0], dtype=np.uint8)
    remaining = float(sample_size)
    size = weights.shape[0]
    total = _total.for_size(size)(weights) if total is None else total
    guess = _capping_guess(weights, sample_size, total)
    candidates = np.empty(0, dtype=np.int64)
    limit = 0.0
    if guess is not None:
        count, hit_sum, per_block = _guess_pass.for_size(size)(weights, capped, guess, _WINDOW)
        uncapped = total - hit_sum
        if count < sample_size and (sample_size - count) / uncapped >= guess:
            remaining, total = float(sample_size - count), uncapped
            candidates = _collect_candidates.for_size(size)(weights, capped, guess, _WINDOW, per_block)
            limit = guess / _WINDOW
        else:
            capped[:] = 0
    while True:
        scale = remaining / total
        if scale < limit:
            count, newly = _candidate_pass(weights, capped, candidates, scale)
        else:
            count, newly = _cap_pass.for_size(size)(weights, capped, scale)
        if count == 0:
            return scale, capped
        remaining -= count
        if remaining == 0.0:
            return 0.0, capped
        total -= newly


@_Kernel
def _guess_pass(weights, capped, scale, window):
    """``_cap_pass`` from nothing, also counting per block the entries with ``window ≤ scale·w < 1``."""
    n = weights.shape[0]
    blocks = (n + SUM_BLOCK - 1) // SUM_BLOCK
    partial = np.zeros(blocks, dtype=np.float64)
    counts = np.zeros(blocks, dtype=np.int64)
    near = np.zeros(blocks, dtype=np.int64)
    for b in prange(blocks):
        count = 0
        close = 0
        newly = 0.0
        for i in range(b * SUM_BLOCK, min(n, (b + 1) * SUM_BLOCK)):
            weight = np.float64(weights[i])
            value = scale * weight
            hit = np.uint8(value >= 1.0)
            capped[i] = hit
            count += hit
            close += np.uint8(value >= window) & (1 - hit)
            newly += weight * hit
        counts[b] = count
        near[b] = close
        partial[b] = newly
    newly = 0.0
    for b in range(blocks):
        newly += partial[b]
    return counts.sum(), newly, near


@_Kernel
def _collect_candidates(weights, capped, scale, window, near):
    n = weights.shape[0]
    blocks = near.shape[0]
    starts = np.zeros(blocks + 1, dtype=np.int64)
    for b in range(blocks):
        starts[b + 1] = starts[b] + near[b]
    out = np.empty(starts[blocks], dtype=np.int64)
    for b in prange(blocks):
        slot = starts[b]
        for i in range(b * SUM_BLOCK, min(n, (b + 1) * SUM_BLOCK)):
            if capped[i] == 0 and scale * np.float64(weights[i]) >= window:
                out[slot] = i
                slot += 1
    return out


@numba.njit(**_OPTIONS)
def _candidate_pass(weights, capped, candidates, scale):
    """``_cap_pass`` restricted to ``candidates`` (ascending), with the same blocked float sums."""
    count = 0
    total = 0.0
    partial = 0.0
    block = -1
    for k in range(candidates.shape[0]):
        i = candidates[k]
        if i // SUM_BLOCK != block:
            total += partial
            partial = 0.0
            block = i // SUM_BLOCK
        weight = np.float64(weights[i])
        if capped[i] == 0 and scale * weight >= 1.0:
            capped[i] = 1
            count += 1
            partial += weight
    total += partial
    return count, total


def _capping_guess(weights: np.ndarray, sample_size: int, total: float) -> float | None:
    """``reference.capping_guess`` on the same strided sample, with this backend's kernels."""
    count = weights.shape[0]
    if count < GUESS_MIN:
        return None
    return capping_guess_from_sample(weights[:: count // GUESS_SAMPLE][:GUESS_SAMPLE], count, sample_size, total)


def capping_guess_from_sample(sample: np.ndarray, count: int, sample_size: int, total: float) -> float | None:
    """``reference.guess_from_sample`` with this backend's capping and sums."""
    return reference.guess_from_sample(np.ascontiguousarray(sample), count, sample_size, total, _capping, _total)


@_Kernel
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


@numba.njit(inline="always", **_OPTIONS)
def _fixed_value(fixed, capped, i):
    # ``fixed`` is 0 where capped, so this is ``2**32`` for capped entries, branch-free.
    return np.uint64(fixed[i]) | (np.uint64(capped[i]) << _HALF)


@_Kernel
def _walk(fixed, capped, totals, keys, sample_size, with_weights):
    n = fixed.shape[0]
    blocks = (n + WALK_BLOCK - 1) // WALK_BLOCK
    sort_keys = np.empty(blocks, dtype=np.uint64)
    multipliers = np.empty(blocks, dtype=np.uint64)
    offsets = np.empty(blocks, dtype=np.uint64)
    for b in prange(blocks):
        block = np.uint64(b)
        sort_keys[b] = _random_bits(keys[0], block) >> np.uint64(1)
        multipliers[b] = _random_bits(keys[1], np.uint64(2) * block) & _MASK | np.uint64(1)
        offsets[b] = _random_bits(keys[1], np.uint64(2) * block + np.uint64(1)) & _MASK
    order = np.argsort(sort_keys, kind="mergesort")
    offset = _random_bits(keys[2], _ZERO) >> np.uint64(32)
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


@_Kernel
def _scatter_shuffle(items, weights, key, buckets, chunks):
    """Stable scatter by hashed bucket, then Fisher–Yates per bucket (``reference.shuffle_permutation``).

    ``weights`` (one per item) move with their items; an empty ``weights`` shuffles the items alone
    and returns an empty array for them, so a plain permutation neither allocates nor moves weights.
    """
    size = items.shape[0]
    with_weights = weights.shape[0] == size
    bucket_key = _random_bits(key, _ZERO)
    swap_key = _random_bits(key, np.uint64(1))
    nb = np.uint64(buckets)
    per_chunk = (size + chunks - 1) // chunks
    counts = np.zeros((chunks, buckets), dtype=np.int64)
    bucket_of = np.empty(size, dtype=np.uint32)
    for c in prange(chunks):
        for i in range(c * per_chunk, min(size, (c + 1) * per_chunk)):
            t = np.uint32(((_random_bits(bucket_key, np.uint64(i)) >> _HALF) * nb) >> _HALF)
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
            there = start + np.int64(((_random_bits(swap_key, np.uint64(here)) >> _HALF) * np.uint64(i + 1)) >> _HALF)
            out_items[here], out_items[there] = out_items[there], out_items[here]
            if with_weights:
                out_weights[here], out_weights[there] = out_weights[there], out_weights[here]
    return out_items, out_weights


def shuffle_permutation(size: int, key: np.uint64) -> np.ndarray:
    """See ``reference.shuffle_permutation``."""
    items, _ = _scatter_shuffle.for_size(size)(
        np.arange(size, dtype=np.int64), np.empty(0, np.float32), key, shuffle_buckets(size), numba.get_num_threads()
    )
    return items


def plan(
    scores: np.ndarray, seen: np.ndarray | None, sample_size: int, smoothing: float, uniform: bool, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """See ``reference.plan``; bit-identical results."""
    num_examples = scores.shape[0]
    if sample_size == num_examples:
        return shuffle_permutation(num_examples, keys[3]), np.ones(num_examples, np.float32)
    weights, total = None, None
    if not uniform:
        scores = np.ascontiguousarray(scores)
        all_seen = seen is None
        counts = np.zeros(1, np.uint32) if all_seen else np.ascontiguousarray(seen)
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
        scale, capped = _capping(weights, sample_size, total)
    fixed, totals = _quantize.for_size(num_examples)(weights, scale, capped, sample_size)
    del weights
    picks, pick_weights = _walk.for_size(num_examples)(fixed, capped, totals, keys, sample_size, not uniform)
    del fixed, capped
    shuffle = _scatter_shuffle.for_size(sample_size)
    return shuffle(picks, pick_weights, keys[3], shuffle_buckets(sample_size), numba.get_num_threads())
