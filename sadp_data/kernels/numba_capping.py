"""Numba CPU capping iteration: ``reference.capping_scale`` as parallel passes, bit-identical.

Every pass is one parallel loop over fixed ``SUM_BLOCK`` blocks whose per-block sequential float
sums are added in block order (``ordered_sum``), exactly as ``reference.blocked_sum``. The iteration
starts from the reference's sampled guess; after the guessed pass, rounds revisit only the
*candidates* (entries close to being capped at the guessed scale), so they cost O(candidates)
instead of O(N). Trade-off: one extra full pass collects the candidates (8 bytes each), and a round
whose scale leaves the candidates' window falls back to full passes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import reference
from .numba_jit import OPTIONS, Kernel, ordered_sum
from .reference import GUESS_MIN, GUESS_SAMPLE, SUM_BLOCK

#: Candidate window of the capping shortcut (see ``capping_scale``).
_WINDOW = 0.99


@Kernel
def blocked_sum(weights):
    """``reference.blocked_sum`` of ``weights``: one parallel iteration per block."""
    n = weights.shape[0]
    blocks = (n + SUM_BLOCK - 1) // SUM_BLOCK
    partial = np.zeros(blocks, dtype=np.float64)
    for b in prange(blocks):
        total = 0.0
        for i in range(b * SUM_BLOCK, min(n, (b + 1) * SUM_BLOCK)):
            total += np.float64(weights[i])
        partial[b] = total
    return ordered_sum(partial)


@Kernel
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
    return counts.sum(), ordered_sum(partial)


def capping_scale(weights: np.ndarray, sample_size: int, total: float | None = None) -> tuple[float, np.ndarray]:
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
    total = blocked_sum.for_size(size)(weights) if total is None else total
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


@Kernel
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
    return counts.sum(), ordered_sum(partial), near


@Kernel
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


@numba.njit(**OPTIONS)
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
    return reference.guess_from_sample(
        np.ascontiguousarray(sample), count, sample_size, total, capping_scale, blocked_sum
    )
