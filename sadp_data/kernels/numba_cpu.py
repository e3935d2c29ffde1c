"""Numba CPU backend: the reference kernels as compiled single-pass loops.

Each function has the signature and the exact semantics of its twin in ``reference``: sums are
sequential, the selection walks exact uint64 prefix sums, so for the same inputs the outputs are
bit-identical (the tests check this). The gain over numpy is memory and passes: no temporary arrays
for prefix sums, masks or levels, which matters at N = 10^8.
"""

from __future__ import annotations

import numba
import numpy as np

from .reference import ONE

_ONE = np.uint64(ONE)
_ZERO = np.uint64(0)
_SHIFT = np.uint64(32)


@numba.njit(cache=True)
def _smooth(scores, seen, smoothing):
    n = scores.shape[0]
    out = np.ones(n, dtype=np.float64)
    total = 0.0
    count = 0
    for i in range(n):
        if seen[i] > 0:
            total += np.float64(scores[i])
            count += 1
    if count == 0:
        return out
    mean = total / count
    if mean <= 0.0:
        return out
    for i in range(n):
        relative = np.float64(scores[i]) / mean if seen[i] > 0 else 1.0
        out[i] = (1.0 - smoothing) * relative + smoothing
    return out


def smooth_scores(scores: np.ndarray, seen: np.ndarray, smoothing: float) -> np.ndarray:
    """See ``reference.smooth_scores``."""
    return _smooth(np.ascontiguousarray(scores), np.ascontiguousarray(seen), float(smoothing))


@numba.njit(cache=True)
def _capped_probabilities(weights, sample_size):
    n = weights.shape[0]
    capped = np.zeros(n, dtype=np.bool_)
    remaining = np.float64(sample_size)
    scale = 0.0
    while True:
        total = 0.0
        for i in range(n):
            if not capped[i]:
                total += weights[i]
        scale = remaining / total
        count = 0
        for i in range(n):
            if not capped[i] and scale * weights[i] >= 1.0:
                capped[i] = True
                count += 1
        if count == 0:
            break
        remaining -= count
        if remaining == 0.0:
            scale = 0.0
            break
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        out[i] = 1.0 if capped[i] else scale * weights[i]
    return out


def inclusion_probabilities(weights: np.ndarray, sample_size: int) -> np.ndarray:
    """See ``reference.inclusion_probabilities``."""
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    positive = int(np.count_nonzero(weights > 0))
    if positive < sample_size:
        raise ValueError(
            f"only {positive} of {weights.shape[0]} weights are positive, fewer than the sample "
            f"size {sample_size}; use smoothing > 0 so every example keeps a chance"
        )
    return _capped_probabilities(weights, int(sample_size))


@numba.njit(cache=True)
def _quantize(probabilities, target):
    n = probabilities.shape[0]
    out = np.empty(n, dtype=np.uint64)
    one = np.float64(_ONE)
    current = _ZERO
    for i in range(n):
        value = np.floor(probabilities[i] * one)
        if value < 0.0:
            value = 0.0
        elif value > one:
            value = one
        out[i] = np.uint64(value)
        current += out[i]
    if current < target:
        amount = target - current
        for i in range(n):
            if amount == _ZERO:
                break
            step = min(_ONE - out[i], amount)
            out[i] += step
            amount -= step
    elif current > target:
        amount = current - target
        for i in range(n):
            if amount == _ZERO:
                break
            step = min(out[i], amount)
            out[i] -= step
            amount -= step
    return out


def quantize_probabilities(probabilities: np.ndarray, sample_size: int) -> np.ndarray:
    """See ``reference.quantize_probabilities``."""
    target = np.uint64(sample_size) * _ONE
    return _quantize(np.ascontiguousarray(probabilities, dtype=np.float64), target)


@numba.njit(cache=True)
def _select(quantized, permutation, offset, sample_size):
    picks = np.empty(sample_size, dtype=np.int64)
    walk = offset
    previous = _ZERO
    count = 0
    for j in range(permutation.shape[0]):
        index = permutation[j]
        walk += quantized[index]
        level = walk >> _SHIFT
        if level > previous:
            picks[count] = index
            count += 1
            previous = level
    return picks[:count]


def systematic_select(quantized: np.ndarray, permutation: np.ndarray, offset: int) -> np.ndarray:
    """See ``reference.systematic_select``."""
    total = int(quantized.sum(dtype=np.uint64))
    sample_size = (total + int(offset)) >> 32
    return _select(
        np.ascontiguousarray(quantized),
        np.ascontiguousarray(permutation, dtype=np.int64),
        np.uint64(offset),
        sample_size,
    )


@numba.njit(cache=True)
def _weights(quantized, picks, sample_size):
    n = quantized.shape[0]
    out = np.empty(picks.shape[0], dtype=np.float32)
    one = np.float64(_ONE)
    for j in range(picks.shape[0]):
        probability = np.float64(quantized[picks[j]]) / one
        out[j] = np.float32(sample_size / (n * probability))
    return out


def importance_weights(quantized: np.ndarray, picks: np.ndarray, sample_size: int) -> np.ndarray:
    """See ``reference.importance_weights``."""
    return _weights(quantized, np.ascontiguousarray(picks, dtype=np.int64), int(sample_size))
