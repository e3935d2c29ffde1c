"""Data-parallel training: which rank visits which part of an epoch's plan.

Every rank computes the *same* global plan (same score snapshot, seed and epoch) and visits an
equal, contiguous slice of it. When the plan's length ``K`` is not a multiple of the world size, the
last slices wrap around to the start of the plan (``DistributedSampler``'s padding): every rank
takes exactly ``ceil(K / world)`` steps' worth of examples, so no rank waits for another at the end
of an epoch, and a repeated example carries its own importance weight. Nothing is dropped. The
trade-off: up to ``world - 1`` examples are visited twice in an epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..kernels.reference import SUM_BLOCK

if TYPE_CHECKING:
    from ..store import ScoreStore

#: The low 32 bits of an exchanged int64 word: a score's float32 bits (its epoch is in the high 32).
_LOW_32 = 0xFFFFFFFF


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


def remaining_positions(count: int, saved_world: int, delivered: int) -> np.ndarray:
    """Plan positions not yet delivered when each of ``saved_world`` ranks had delivered the first
    ``delivered`` positions of its slice (``rank_positions``): ascending, each once.

    Ranks run in lockstep (equal slices, equal batch size, equal step counts), so one rank's position
    is every rank's, and this set is the same whichever rank's state is read. Positions delivered as
    padding (a wrapped repeat) count as delivered.
    """
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    size = per_rank(count, saved_world)
    if not 0 <= delivered <= size:
        raise ValueError(f"delivered={delivered} is outside [0, {size}], a rank's slice of {count} positions")
    done = np.zeros(count, dtype=bool)
    starts = np.arange(saved_world, dtype=np.int64) * size
    taken = (starts[:, None] + np.arange(delivered, dtype=np.int64)[None, :]).reshape(-1) % count
    done[taken] = True
    return np.flatnonzero(~done)


def elastic_positions(count: int, saved_world: int, delivered: int, rank: int, world: int) -> np.ndarray:
    """The positions ``rank`` of a new ``world`` visits to finish an epoch checkpointed at ``saved_world``.

    The remaining positions (``remaining_positions``), in plan order, split into ``world`` contiguous
    equal slices, padded by repeating the first remaining ones: every remaining example is delivered
    once across the new ranks, plus at most ``world − 1`` repeats so that the ranks stay in lockstep.
    """
    remaining = remaining_positions(count, saved_world, delivered)
    return remaining[rank_positions(remaining.shape[0], rank, world)]


def partition_bounds(num_examples: int, world: int) -> list[tuple[int, int]]:
    """``[(lo, hi)]`` per rank: rank ``r`` owns examples ``[lo, hi)``; contiguous, in rank order, covering ``[0, N)``.

    Boundaries are multiples of ``SUM_BLOCK`` (blocks are split as evenly as they go, ``⌊r·B/world⌋``
    of the ``B = ⌈N/SUM_BLOCK⌉`` blocks before rank ``r``), so a rank owns whole float-sum and walk
    blocks and the last rank the partial final block. With fewer blocks than ranks some ranks own
    nothing (``lo == hi``). Raises ``ValueError`` for ``world <= 0`` or ``num_examples < 0``.
    """
    if world <= 0 or num_examples < 0:
        raise ValueError(f"need world > 0 and num_examples >= 0, got world={world}, num_examples={num_examples}")
    blocks = -(-num_examples // SUM_BLOCK)
    edges = [min(num_examples, (r * blocks // world) * SUM_BLOCK) for r in range(world)] + [num_examples]
    return [(edges[r], edges[r + 1]) for r in range(world)]


def open_store(path, **open_kwargs: Any) -> ScoreStore:
    """Open a score sidecar for a data-parallel run: rank 0 for writing, every other rank as a mirror.

    Only rank 0 writes the sidecar; the other ranks hold identical in-memory copies, kept in step
    by the scorer's all-gathers (``ScoreExchange``). Without ``torch.distributed`` this is
    ``ScoreStore.open(path, "r+")``.
    """
    from ..store import ScoreStore

    rank, _ = rank_and_world()
    return ScoreStore.open(path, "r+" if rank == 0 else "mirror", **open_kwargs)


class ScoreExchange:
    """All-gathers every rank's ``(index, score)`` pairs so that every rank's store mirror is identical.

    ``push`` buffers this rank's scores with the epoch they belong to; every ``every`` pushes, ``sync``
    all-gathers the buffers of all ranks (two collectives: counts, then one packed int64 tensor of
    indices and, per score, its epoch in the high and its float32 bits in the low 32 bits) and
    applies them to the store in rank order, one update per epoch present (oldest first, so for an
    example scored twice the later score wins), on every rank. Each score keeps the epoch it was
    pushed in, however late it is exchanged. The exchange registers ``sync`` as a store sync hook,
    so ``ScoreStore.begin_epoch`` flushes the buffers at each epoch boundary before it takes the
    snapshot an epoch is planned from. Trade-off of ``every > 1``: fewer collectives, but other ranks
    see a rank's scores up to ``every`` steps later (never later than the next epoch's start).
    Works with gloo (CPU tensors) and NCCL (tensors on the current CUDA device). ``push`` keeps the
    scores where they are, but ``sync`` synchronises host and device: it reads the gathered counts and
    scores on the host (``SpikeAwareScorer`` checks the mean-logit closed form at once on this path).
    """

    def __init__(self, store: ScoreStore, every: int = 1, group: Any = None) -> None:
        if every <= 0:
            raise ValueError(f"sync_every must be a positive number of steps, got {every}")
        self.store = store
        self.every = int(every)
        self.group = group
        self._pending: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self._pushes = 0
        store.add_sync_hook(self.sync)

    def push(self, indices: torch.Tensor, scores: torch.Tensor, epoch: int | None = None) -> None:
        """Queue one batch's scores, stamped ``epoch`` (default: the store's ``current_epoch`` now);
        all-gathers when ``every`` batches have been queued."""
        stamp = self.store.current_epoch if epoch is None else int(epoch)
        self._pending.append((indices.detach().reshape(-1).to(torch.int64), scores.detach().reshape(-1).float(), stamp))
        self._pushes += 1
        if self._pushes % self.every == 0:
            self.sync()

    def sync(self) -> None:
        """Collective: every rank must call it at the same point (``push`` and ``ScoreStore.begin_epoch`` do)."""
        import torch.distributed as dist

        nccl = dist.get_backend(self.group) == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        if self._pending:
            indices = torch.cat([entry[0] for entry in self._pending]).to(device)
            scores = torch.cat([entry[1] for entry in self._pending]).to(device)
            epochs = torch.cat([torch.full(entry[0].shape, entry[2], dtype=torch.int64) for entry in self._pending]).to(
                device
            )
        else:
            indices = torch.zeros(0, dtype=torch.int64, device=device)
            scores = torch.zeros(0, dtype=torch.float32, device=device)
            epochs = torch.zeros(0, dtype=torch.int64, device=device)
        self._pending = []
        bits = scores.view(torch.int32).to(torch.int64) & _LOW_32
        packed = torch.stack([indices, (epochs << 32) | bits])
        world = dist.get_world_size(self.group)
        count = torch.tensor([packed.shape[1]], dtype=torch.int64, device=packed.device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=self.group)
        sizes = [int(c.item()) for c in counts]
        most = max(sizes)
        if most == 0:
            return
        padded = torch.zeros((2, most), dtype=torch.int64, device=packed.device)
        padded[:, : packed.shape[1]] = packed
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=self.group)
        merged = torch.cat([part[:, :size] for part, size in zip(gathered, sizes, strict=True)], dim=1).cpu().numpy()
        apply_packed(self.store, merged[0], merged[1])


def pack_scores(scores: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """One int64 word per score: its epoch in the high 32 bits, its float32 bits in the low 32."""
    return (epochs.astype(np.int64) << 32) | (scores.astype(np.float32).view(np.uint32).astype(np.int64) & _LOW_32)


def apply_packed(store: Any, indices: np.ndarray, words: np.ndarray, offset: int = 0) -> None:
    """Apply exchanged ``(index, word)`` pairs (``pack_scores``) to ``store`` at ``indices − offset``: one
    update per epoch present, oldest first, so for an example scored twice the later score wins."""
    scores = (words & _LOW_32).astype(np.uint32).view(np.float32)
    epochs = words >> 32  # arithmetic shift: epoch -1 (never set) survives
    for epoch in np.unique(epochs).tolist():
        chosen = epochs == epoch
        store.update(indices[chosen] - offset, scores[chosen], epoch=int(epoch))
