"""Data-parallel training: which rank visits which part of an epoch's plan.

Every rank computes the *same* global plan (same score snapshot, seed and epoch) and visits an
equal, contiguous slice of it. When the plan's length ``K`` is not a multiple of the world size, the
last slices wrap around to the start of the plan (``DistributedSampler``'s padding): every rank
takes exactly ``ceil(K / world)`` steps' worth of examples, so no rank waits for another at the end
of an epoch, and a repeated example carries its own importance weight. Nothing is dropped. The
trade-off: up to ``world - 1`` examples are visited twice in an epoch.
"""

from __future__ import annotations

import numpy as np


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of ``torch.distributed`` when it is initialised, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def per_rank(count: int, world: int) -> int:
    """Examples each of ``world`` ranks visits when the plan holds ``count``: ``ceil(count / world)``."""
    return -(-count // world)


def rank_positions(count: int, rank: int, world: int) -> np.ndarray:
    """Positions in a plan of ``count`` examples that ``rank`` visits: its contiguous slice, wrapped.

    The slices of ranks ``0 … world-1`` concatenated are positions ``0 … world·per_rank − 1`` modulo
    ``count``: every position at least once, the first ``world·per_rank − count`` twice.
    """
    if world <= 0 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world > 0, got rank={rank}, world={world}")
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    size = per_rank(count, world)
    return np.arange(rank * size, (rank + 1) * size, dtype=np.int64) % count
