"""Numpy reference implementation of the epoch-planning kernels.

Every other backend (``numba_cpu``, and later CUDA/torch) implements exactly these functions with
exactly these semantics and is tested against this module. Three choices make the results
bit-reproducible across backends:

* Floating-point totals are *sequential* left-to-right sums (``np.cumsum``), which a plain loop in
  any backend reproduces exactly. Numpy's pairwise ``np.sum`` would be slightly more accurate but
  cannot be matched by a compiled loop.
* Inclusion probabilities are turned into 32.32 fixed-point integers (``quantize_probabilities``)
  whose total is exactly ``K * 2**32``. The systematic draw then works on exact integer prefix sums,
  so it always picks exactly ``K`` examples, never picks one twice, and has no float drift at any
  ``N`` (no 2**24 limit: totals stay below 2**64 for ``K`` < 4e9).
* All randomness (the permutation, the offset, the final shuffle) is drawn by the caller from one
  ``numpy.random.Generator`` and passed in, so kernels are deterministic functions of their inputs.
"""

from __future__ import annotations

import numpy as np

#: Fixed-point scale of quantised inclusion probabilities: a probability of 1 is ``ONE``.
ONE = np.uint64(1 << 32)


def smooth_scores(scores: np.ndarray, seen: np.ndarray, smoothing: float) -> np.ndarray:
    """Mix scores with the uniform distribution: ``(1 - λ) * s / mean(s_seen) + λ``.

    Examples never scored (``seen == 0``) take the mean seen score, i.e. a relative weight of 1,
    so they keep being explored. When nothing has been seen yet, or every seen score is 0, the
    result is uniform (all ones). The output is float64, strictly positive when ``λ > 0``; with
    ``λ = 0`` zero scores stay zero (such examples are then never drawn).
    """
    scores = np.asarray(scores)
    seen_mask = np.asarray(seen) > 0
    count = int(np.count_nonzero(seen_mask))
    if count == 0:
        return np.ones(scores.shape[0], dtype=np.float64)
    total = np.cumsum(np.where(seen_mask, scores.astype(np.float64), 0.0))[-1]
    mean = total / count
    if mean <= 0.0:
        return np.ones(scores.shape[0], dtype=np.float64)
    relative = np.where(seen_mask, scores.astype(np.float64) / mean, 1.0)
    return (1.0 - smoothing) * relative + smoothing


def inclusion_probabilities(weights: np.ndarray, sample_size: int) -> np.ndarray:
    """Capped inclusion probabilities ``π_i = min(1, c·w_i)`` with ``Σ π_i = sample_size``.

    ``c`` is found by the classic capping iteration: scale the uncapped weights to the remaining
    sample size, cap every entry that reaches 1, repeat until nothing new is capped. Each round caps
    at least one entry, so it terminates; in practice a handful of rounds, each O(N).

    Raises ``ValueError`` when fewer than ``sample_size`` weights are positive (no design with that
    sample size exists).
    """
    weights = np.asarray(weights, dtype=np.float64)
    positive = int(np.count_nonzero(weights > 0))
    if positive < sample_size:
        raise ValueError(
            f"only {positive} of {weights.shape[0]} weights are positive, fewer than the sample "
            f"size {sample_size}; use smoothing > 0 so every example keeps a chance"
        )
    capped = np.zeros(weights.shape[0], dtype=bool)
    remaining = float(sample_size)
    while True:
        total = np.cumsum(np.where(capped, 0.0, weights))[-1]
        scale = remaining / total
        newly = ~capped & (scale * weights >= 1.0)
        count = int(np.count_nonzero(newly))
        if count == 0:
            break
        capped |= newly
        remaining -= count
        if remaining == 0.0:
            scale = 0.0
            break
    return np.where(capped, 1.0, scale * weights)


def quantize_probabilities(probabilities: np.ndarray, sample_size: int) -> np.ndarray:
    """Turn probabilities into uint64 fixed point (units of 2**-32) summing to exactly ``K * 2**32``.

    Entries are floored; the small remaining deficit (or excess, from float rounding in ``π``) is
    spread over entries in index order, each moved by at most what keeps it within ``[0, 2**32]``.
    The change per entry is at most a few units of 2**-32, far below any statistical resolution,
    and the quantised values are the *exact* inclusion probabilities of the draw that follows.
    """
    scaled = np.floor(np.asarray(probabilities, dtype=np.float64) * float(ONE))
    quantized = np.clip(scaled, 0.0, float(ONE)).astype(np.uint64)
    target = np.uint64(sample_size) * ONE
    current = np.cumsum(quantized, dtype=np.uint64)[-1]
    if current < target:
        _spread(quantized, target - current, ONE - quantized, +1)
    elif current > target:
        _spread(quantized, current - target, quantized.copy(), -1)
    return quantized


def _spread(values: np.ndarray, amount: np.uint64, capacity: np.ndarray, sign: int) -> None:
    """Add (sign=+1) or remove (sign=-1) ``amount`` units, greedily in index order, within capacity."""
    taken_before = np.cumsum(capacity, dtype=np.uint64) - capacity
    open_slots = taken_before < amount
    step = np.where(open_slots, np.minimum(capacity, amount - np.where(open_slots, taken_before, 0)), 0)
    step = step.astype(np.uint64)
    if sign > 0:
        values += step
    else:
        values -= step


def systematic_select(quantized: np.ndarray, permutation: np.ndarray, offset: int) -> np.ndarray:
    """Systematic PPS: walk ``quantized`` in ``permutation`` order and pick where ``⌊(C + u)/2³²⌋`` steps.

    ``C`` is the exact integer prefix sum and ``u = offset`` a uniform integer in ``[0, 2**32)``.
    Example ``i`` is picked with probability exactly ``quantized[i] / 2**32``; the number of picks is
    exactly ``Σ quantized / 2**32``. Returns the picked example indices in permutation order (int64).
    """
    walk = np.cumsum(quantized[permutation], dtype=np.uint64) + np.uint64(offset)
    level = walk >> np.uint64(32)
    previous = np.empty_like(level)
    previous[0] = 0
    previous[1:] = level[:-1]
    return np.asarray(permutation[level > previous], dtype=np.int64)


def importance_weights(quantized: np.ndarray, picks: np.ndarray, sample_size: int) -> np.ndarray:
    """Horvitz–Thompson weights ``K / (N π_i)`` of the picked examples, as float32.

    With batches drawn from the picks, ``mean(w_i * loss_i)`` over the picks is an unbiased
    estimate of the full-data mean loss.
    """
    num_examples = quantized.shape[0]
    probabilities = quantized[picks].astype(np.float64) / float(ONE)
    return (sample_size / (num_examples * probabilities)).astype(np.float32)
