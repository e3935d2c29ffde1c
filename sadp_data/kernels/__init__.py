"""Epoch planning: turn N scores into an exact-size weighted sample in shuffled order.

``plan_epoch`` is the single entry point. It is a pure function of its arguments: the same scores,
seed and epoch give the same order and weights on every machine, process and backend (backends
differ only in speed). The steps, each a kernel with a numpy reference (``reference``) and compiled
twins (``numba_cpu``):

1. ``smooth_scores``: mix with uniform so every example keeps a chance and weights stay bounded;
2. ``inclusion_probabilities``: ``π_i = min(1, c·s̃_i)`` with ``Σ π = K`` exactly;
3. ``quantize_probabilities``: 32.32 fixed point, integer total ``K·2**32``;
4. ``systematic_select``: systematic PPS over a random permutation — exactly K distinct picks;
5. shuffle of the picks; ``importance_weights``: ``K / (N π_i)``.

Randomness comes from one ``numpy.random.Generator`` seeded by ``(seed, epoch)`` (see
``epoch_rng``), used in a fixed order: permutation of N, then the offset, then the shuffle of K.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import numpy as np

from . import reference

Backend = Literal["auto", "numpy", "numba"]


def available_backends() -> list[str]:
    """Names of the backends that can run here (``numpy`` always; ``numba`` when installed)."""
    names = ["numpy"]
    try:
        import numba  # noqa: F401
    except ImportError:
        return names
    return [*names, "numba"]


def get_backend(name: str = "auto") -> ModuleType:
    """The kernel module for ``name``; ``auto`` picks the fastest available CPU backend."""
    if name == "auto":
        name = "numba" if "numba" in available_backends() else "numpy"
    if name == "numpy":
        return reference
    if name == "numba":
        from . import numba_cpu

        return numba_cpu
    raise ValueError(f"unknown kernel backend {name!r}; choose from 'auto', 'numpy', 'numba'")


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The random stream of one epoch: PCG64 seeded by the pair ``(seed, epoch)``.

    Streams of different epochs (or seeds) are statistically independent; the same pair always
    gives the same stream.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))


def sample_size(num_examples: int, keep_ratio: float) -> int:
    """``K = round(keep_ratio * N)``, at least 1: the exact number of examples an epoch draws."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return max(1, min(num_examples, int(np.floor(keep_ratio * num_examples + 0.5))))


def plan_epoch(
    scores: np.ndarray,
    keep_ratio: float,
    seed: int,
    epoch: int,
    *,
    seen: np.ndarray | None = None,
    smoothing: float = 0.1,
    uniform: bool = False,
    backend: Backend = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Plan one epoch: ``(order, weights)``, ``order`` int64[K] distinct indices, ``weights`` float32[K].

    Args:
        scores: float[N] importance scores, non-negative (only their ratios matter).
        keep_ratio: fraction of examples drawn, in (0, 1]; ``K = round(keep_ratio·N)`` exactly.
        seed, epoch: select the random stream (``epoch_rng``).
        seen: counts per example; unseen examples (0) are treated as of mean importance. ``None``
            means all seen.
        smoothing: λ in [0, 1], the uniform share of the sampling weights. Every weight is at most
            1/λ; larger λ trades focus on high-score examples for lower weight variance.
        uniform: ignore scores and draw a simple random sample (the random-pruning baseline).
        backend: kernel backend; all give identical results.

    Guarantees: exactly K distinct indices; example i is drawn with probability π_i (as
    quantised, see ``reference.quantize_probabilities``); ``weights = K / (N π_i)`` so that the
    weighted mean loss over the picks is unbiased for the full-data mean. ``uniform=True`` and
    ``keep_ratio = 1`` give weights of exactly 1; equal scores give weights within 1e-6 of 1 (the
    fixed-point quantisation spreads a remainder of at most N units of 2**-32).
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    scores = np.asarray(scores)
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}")
    num_examples = scores.shape[0]
    size = sample_size(num_examples, keep_ratio)
    rng = epoch_rng(seed, epoch)
    if size == num_examples:
        return rng.permutation(num_examples).astype(np.int64), np.ones(num_examples, np.float32)
    kernels = get_backend(backend)
    if uniform:
        relative = np.ones(num_examples, dtype=np.float64)
    else:
        counts = np.ones(num_examples, dtype=np.uint32) if seen is None else np.asarray(seen)
        relative = kernels.smooth_scores(scores, counts, smoothing)
    probabilities = kernels.inclusion_probabilities(relative, size)
    quantized = kernels.quantize_probabilities(probabilities, size)
    permutation = rng.permutation(num_examples)
    offset = int(rng.integers(0, 1 << 32, dtype=np.uint64))
    picks = kernels.systematic_select(quantized, permutation, offset)
    rng.shuffle(picks)
    if uniform:
        return picks, np.ones(size, np.float32)
    return picks, kernels.importance_weights(quantized, picks, size)
