"""Epoch planning when the score table is sharded across data-parallel ranks, bit-identical to one process.

``partitioned_plan`` gives rank ``r`` exactly ``order[rank_positions(K, r, world)]`` and the matching
weights of ``reference.plan(all_scores, all_seen, K, smoothing, False, keys)`` (``np.array_equal`` on
the int64 order and the float32 weights), while no rank ever holds all ``N`` scores: rank ``r``
owns the examples ``partition_bounds(N, world)[r]``, contiguous runs of whole ``SUM_BLOCK`` blocks, so
every block of a float sum and every walk block lies inside one rank. Each step of the reference is
reproduced on the shards:

1. smoothing: per-block sequential float64 sums of the seen scores, all-gathered and added in global
   block order (``reference.blocked_sum`` exactly), and the seen count (exact integers);
2. capping (``reference.capping_scale``): the positive count, the blocked total, the capping guess
   (its strided sample is gathered from the owners and fed to the reference's own
   ``guess_from_sample`` on every rank), and each round's capped count and blocked sum; every rank
   takes the same branch because it sees the same gathered numbers;
3. quantisation (``reference.quantize``): local fixed point; the global sum (uint64 arithmetic,
   wrapping as numpy's does) and each rank's total room, so the greedy remainder is taken in global
   index order (a rank starts its prefix sum at the room of all lower ranks);
4. the walk (``reference.systematic_select``): every rank computes ``walk_blocks`` (``N/WALK_BLOCK``
   entries) and receives every walk block's integer total, hence the running total at each block's
   start; it walks its own blocks (``sharded_walk.walk_partition``) and knows each pick's position ``p``
   in the global ``picks`` array (the level before the pick) and its importance weight ``K / (N π_i)``;
5. the shuffle and the slices: ``sharded_shuffle.shuffle_picks``.

Communication per rank and epoch (``R``: capping rounds, usually 1–3): ``5 + R`` all-gathers (one
more when the capping guess runs) of a few integers, ``R + 2`` of them also carrying one float64 per
sum block (a rank receives ``N/SUM_BLOCK`` values per gather); the guess sample (``GUESS_SAMPLE``
float64, 512 KiB received, only for ``N ≥ GUESS_MIN``); the walk block totals (``N/WALK_BLOCK``
uint64); two gathers of ``world`` counts; and two exchanges of 12-byte records (20 once ``N > 2³²``),
in rounds of at most ``sharded_shuffle.ROUND`` records: a rank sends its picks (about ``K·n/N`` for a
shard of ``n``) and receives its buckets' members (about ``K/world``), then sends those and receives
its slice (``per_rank(K, world)``). Nothing of size ``N`` or ``K`` is gathered.

Memory per rank: 13 bytes per owned example while quantising (float32 weights, capped flags, uint64
fixed point), 8 while walking (the fixed point) and temporaries of ``PIECE`` elements; the picks
(12 bytes each) are made once at their exact count and freed once they have travelled; at the
shuffle's peak about 30 bytes per pick it handles (its walk's picks, their send order, its buckets'
members; then the members, their slots and order; then its slice) plus one round's messages; about
3 MB while the guess sample is processed; ``O(N/WALK_BLOCK)`` for the walk blocks. The inputs may be
memory-mapped slices. At ``W = 4``, ``K = N/2`` that is about 4 bytes per example of ``N`` over the
score table (``sadp-data bench scale``).

Not supported (use ``kernels.plan_epoch`` on a full table): ``uniform=True`` (which needs no scores),
``localize``/``shard_size``/``groups`` reordering, the ``sadp_data.methods`` baselines and levers,
and device (torch, CUDA) arrays other than by copying them to the host. Every rank must call
``partitioned_plan`` collectively with the same ``num_examples``, ``sample_size``, ``smoothing`` and
``keys``; invalid shards or scores raise ``ValueError`` on every rank (after one collective).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._moved import renamed
from ..kernels import reference
from ..kernels.arrays import to_host
from ..kernels.reference import GUESS_MIN, GUESS_SAMPLE, ONE, SUM_BLOCK, WALK_BLOCK, EpochKeys
from . import partition_bounds
from ._partition_shuffle import PIECE, Comm, LocalComm, TorchComm, shuffle_picks
from ._partition_walk import all_picks, walk_partition

__all__ = ["Comm", "LocalComm", "TorchComm", "partition_bounds", "partitioned_plan", "partitioned_plan_epoch"]
__getattr__ = renamed(
    __name__,
    {
        "shard_bounds": "partition_bounds",
        "sharded_plan": "partitioned_plan",
        "sharded_plan_epoch": "partitioned_plan_epoch",
    },
)

_MOD = 1 << 64


def _chunks(count: int) -> range:
    """Starts of the pieces (``PIECE`` elements) that element-wise passes work on, bounding their temporaries."""
    return range(0, count, PIECE)


def _block_sums(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``float(np.cumsum(block)[-1])`` of each ``SUM_BLOCK`` block of ``where(mask, values, 0)`` in float64.

    Each block is summed piece by piece, the running sum added to a piece's first element: the
    same sequential additions, in the same order, as one ``np.cumsum`` over the block.
    """
    sums = np.empty(-(-values.shape[0] // SUM_BLOCK), dtype=np.float64)
    for block in range(sums.shape[0]):
        running = None
        for start in range(block * SUM_BLOCK, min((block + 1) * SUM_BLOCK, values.shape[0]), PIECE):
            part = values[start : start + PIECE].astype(np.float64)
            if mask is not None:
                part = np.where(mask[start : start + PIECE], part, 0.0)
            if running is not None:
                part[0] += running
            running = np.cumsum(part)[-1]
        sums[block] = running
    return sums


def _fold(sums: np.ndarray) -> float:
    """The blocks' sums added in global block order, as ``reference.blocked_sum`` adds them."""
    total = 0.0
    for value in sums.tolist():
        total += value
    return total


def _gather(comm: Comm, *parts: np.ndarray) -> list[list[np.ndarray]]:
    """All-gather several 1-D arrays in one collective: ``result[part][rank]`` (each part's dtype kept)."""
    header = np.array([part.nbytes for part in parts], dtype=np.int64)
    payload = np.concatenate(
        [header.view(np.uint8), *(np.ascontiguousarray(p).reshape(-1).view(np.uint8) for p in parts)]
    )
    gathered: list[list[np.ndarray]] = [[] for _ in parts]
    for buffer in comm.all_gather(payload):
        raw = np.asarray(buffer).view(np.uint8)
        lengths = raw[: header.nbytes].copy().view(np.int64)
        offset = header.nbytes
        for slot, (part, length) in enumerate(zip(parts, lengths.tolist(), strict=True)):
            gathered[slot].append(raw[offset : offset + length].copy().view(part.dtype))
            offset += length
    return gathered


def _total(parts: list[np.ndarray]) -> int:
    """Exact sum of integer arrays gathered from all ranks."""
    return sum(int(value) for part in parts for value in part.tolist())


def _over(weights: np.ndarray, scale: float) -> np.ndarray:
    """``scale · float64(w) >= 1`` per example (the reference's capping test), chunk by chunk."""
    hits = np.empty(weights.shape[0], dtype=bool)
    for start in _chunks(weights.shape[0]):
        hits[start : start + PIECE] = scale * weights[start : start + PIECE].astype(np.float64) >= 1.0
    return hits


def _count_and_sum(comm: Comm, weights: np.ndarray, chosen: np.ndarray) -> tuple[int, float]:
    """Global count of ``chosen`` and ``blocked_sum(where(chosen, w, 0))``: one collective."""
    counts, sums = _gather(comm, np.array([np.count_nonzero(chosen)], dtype=np.int64), _block_sums(weights, chosen))
    return _total(counts), _fold(np.concatenate(sums))


def _smoothed(
    comm: Comm, scores: np.ndarray, seen: np.ndarray | None, smoothing: float, lo: int, bad: int, needed: bool
) -> np.ndarray | None:
    """``reference.smooth_scores`` of this shard (float32); ``None`` unless ``needed``.

    The first collective also checks every shard: ``bad`` is this rank's problem (1: wrong shape),
    and scores that are not finite and ``>= 0`` are reported with their global position.
    """
    first_bad, seen_count, sums = -1, 0, np.zeros(0, np.float64)
    if not bad and needed:
        seen_count = scores.shape[0] if seen is None else int(np.count_nonzero(np.asarray(seen) > 0))
        sums = _block_sums(scores, None if seen is None else np.asarray(seen) > 0)
    if not bad:
        valid = np.isfinite(scores) & (scores >= 0)
        if not valid.all():
            first_bad = lo + int(np.flatnonzero(~valid)[0])
    status, all_sums = _gather(comm, np.array([bad, first_bad, seen_count], dtype=np.int64), sums)
    for rank, (wrong, position, _) in enumerate(part.tolist() for part in status):
        if wrong:
            raise ValueError(f"rank {rank}'s shard does not have the length partition_bounds gives it (or seen's)")
        if position >= 0:
            raise ValueError(f"the score at position {position} (on rank {rank}) is not a finite number >= 0")
    count = sum(int(part[2]) for part in status)
    if not needed:
        return None
    weights = np.ones(scores.shape[0], dtype=np.float32)
    if count == 0:
        return weights
    mean = _fold(np.concatenate(all_sums)) / count
    if mean <= 0.0:
        return weights
    for start in _chunks(scores.shape[0]):
        part = scores[start : start + PIECE].astype(np.float64)
        chosen = True if seen is None else np.asarray(seen[start : start + PIECE]) > 0
        relative = np.where(chosen, part / mean, 1.0)
        weights[start : start + PIECE] = ((1.0 - smoothing) * relative + smoothing).astype(np.float32)
    return weights


def _guess_sample(weights: np.ndarray, num_examples: int, lo: int) -> np.ndarray:
    """This shard's entries of ``capping_guess``'s strided sample ``w[::N // GUESS_SAMPLE][:GUESS_SAMPLE]``."""
    if num_examples < GUESS_MIN:
        return np.zeros(0, dtype=np.float64)
    stride = num_examples // GUESS_SAMPLE
    first = -(-lo // stride) * stride
    stop = min(lo + weights.shape[0], GUESS_SAMPLE * stride)
    return weights[np.arange(first, stop, stride) - lo].astype(np.float64) if first < stop else np.zeros(0)


def _capping(comm: Comm, weights: np.ndarray, num_examples: int, sample_size: int, lo: int) -> tuple[float, np.ndarray]:
    """``reference.capping_scale`` of the whole table: the global scale and this shard's capped flags."""
    positives, sums, samples = _gather(
        comm,
        np.array([np.count_nonzero(weights > 0)], dtype=np.int64),
        _block_sums(weights),
        _guess_sample(weights, num_examples, lo),
    )
    positive = _total(positives)
    reference.check_feasible(positive, num_examples, sample_size)
    if positive == sample_size:
        return 0.0, weights > 0
    capped = np.zeros(weights.shape[0], dtype=bool)
    remaining = float(sample_size)
    total = _fold(np.concatenate(sums))
    guess = None
    if num_examples >= GUESS_MIN:
        guess = reference.guess_from_sample(np.concatenate(samples), num_examples, sample_size, total)
    if guess is not None:
        hits = _over(weights, guess)
        count, hit_total = _count_and_sum(comm, weights, hits)
        if count < sample_size:
            uncapped = total - hit_total
            if (sample_size - count) / uncapped >= guess:
                capped, remaining, total = hits, float(sample_size - count), uncapped

    def count_and_sum(newly: np.ndarray) -> tuple[int, float]:
        return _count_and_sum(comm, weights, newly)

    return reference.capping_rounds(lambda scale: _over(weights, scale), count_and_sum, capped, remaining, total)


def _room(fixed: np.ndarray, capped: np.ndarray, up: bool) -> np.ndarray:
    """What ``reference.quantize`` may add (``up``) to or take from each entry: nothing for capped ones."""
    return np.where(capped, 0, np.uint64(ONE - 1) - fixed if up else fixed).astype(np.uint64)


def _quantize(
    comm: Comm, weights: np.ndarray, scale: float, capped: np.ndarray, sample_size: int, rank: int
) -> np.ndarray:
    """``reference.quantize`` of the whole table: this shard's fixed-point probabilities (uint64)."""
    fixed = np.empty(weights.shape[0], dtype=np.uint64)
    current = up = down = 0
    for start in _chunks(weights.shape[0]):
        stop = start + PIECE
        probabilities = scale * weights[start:stop].astype(np.float64)
        part = np.clip(np.floor(probabilities * float(ONE)), 0.0, float(ONE - 1)).astype(np.uint64)
        part[capped[start:stop]] = ONE
        fixed[start:stop] = part
        current += int(part.sum(dtype=np.uint64))
        up += int(_room(part, capped[start:stop], True).sum(dtype=np.uint64))
        down += int(_room(part, capped[start:stop], False).sum(dtype=np.uint64))
    (table,) = _gather(comm, np.array([current % _MOD, up % _MOD, down % _MOD], dtype=np.uint64))
    current = _total([part[:1] for part in table]) % _MOD  # numpy's uint64 sum wraps the same way
    target = sample_size * ONE
    if current == target:
        return fixed
    grow = current < target
    wanted = np.uint64(target - current if grow else current - target)
    running = _total([part[2 - grow : 3 - grow] for part in table[:rank]]) % _MOD  # lower ranks' room
    for start in _chunks(fixed.shape[0]):
        stop = start + PIECE
        room = _room(fixed[start:stop], capped[start:stop], grow)
        before = np.uint64(running) + np.cumsum(room, dtype=np.uint64) - room
        take = np.where(before < wanted, np.minimum(room, wanted - np.minimum(before, wanted)), 0).astype(np.uint64)
        if grow:
            fixed[start:stop] += take
        else:
            fixed[start:stop] -= take
        running = (running + int(room.sum(dtype=np.uint64))) % _MOD
    return fixed


def _walk(comm: Comm, fixed: np.ndarray, num_examples: int, sample_size: int, lo: int, keys: EpochKeys) -> np.ndarray:
    """This shard's picks as records (``sharded_walk.walk_partition``), after gathering every walk block's total."""
    count = fixed.shape[0]
    own = np.add.reduceat(fixed, np.arange(0, count, WALK_BLOCK)) if count else np.zeros(0, np.uint64)
    (totals,) = _gather(comm, own.astype(np.uint64))
    return walk_partition(fixed, np.concatenate(totals), num_examples, sample_size, lo, keys)


def _picks(
    comm: Comm, scores: np.ndarray, seen: np.ndarray | None, num_examples: int, sample_size: int, smoothing: float,
    keys: EpochKeys, rank: int, world: int,
) -> np.ndarray:  # fmt: skip
    """Steps 1–4 on this rank's shard: its picks as records; the per-example arrays are freed on return."""
    lo, hi = partition_bounds(num_examples, world)[rank]
    bad = int(scores.shape != (hi - lo,) or (seen is not None and seen.shape != (hi - lo,)))
    weights = _smoothed(comm, scores, seen, smoothing, lo, bad, sample_size != num_examples)
    if weights is None:  # the reference shuffles all examples with weights of exactly 1
        return all_picks(lo, hi, num_examples)
    scale, capped = _capping(comm, weights, num_examples, sample_size, lo)
    fixed = _quantize(comm, weights, scale, capped, sample_size, rank)
    del weights, capped
    return _walk(comm, fixed, num_examples, sample_size, lo, keys)


def partitioned_plan(
    local_scores: Any,
    local_seen: Any | None,
    num_examples: int,
    sample_size: int,
    smoothing: float,
    keys: EpochKeys,
    rank: int,
    world: int,
    comm: Comm,
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's slice of the epoch plan from this rank's shard of the scores; collective.

    Args:
        local_scores: scores of examples ``partition_bounds(num_examples, world)[rank]`` (any array type
            ``to_host`` takes; a memory-mapped slice is read block by block).
        local_seen: their seen counts, or ``None``: this shard's examples all count as seen.
        num_examples, sample_size: ``N`` and ``K`` (``1 <= K <= N``, e.g. ``kernels.sample_size``).
        smoothing: λ in [0, 1]; keys: ``reference.epoch_keys(seed, epoch)``.
        rank, world, comm: this rank, the number of ranks and their collectives (``TorchComm``,
            ``LocalComm`` for one process).

    Returns ``(order, weights)``, int64 and float32 arrays of ``per_rank(K, world)`` entries, equal to
    ``order[p]``, ``weights[p]`` of ``reference.plan(scores, seen, K, smoothing, False, keys)`` at
    ``p = rank_positions(K, rank, world)``. Raises ``ValueError`` (on every rank) for an infeasible
    ``K``, invalid scores or a shard of the wrong length.
    """
    num_examples, sample_size, smoothing = int(num_examples), int(sample_size), float(smoothing)
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world), got rank={rank}, world={world}")
    if not 1 <= sample_size <= num_examples or not 0.0 <= smoothing <= 1.0:
        raise ValueError(
            f"need 1 <= sample_size <= {num_examples} and smoothing in [0, 1], got {sample_size}, {smoothing}"
        )
    scores = to_host(local_scores)
    seen = None if local_seen is None else to_host(local_seen)
    return shuffle_picks(  # no reference to the picks is kept here: the shuffle frees them once they travel
        _picks(comm, scores, seen, num_examples, sample_size, smoothing, keys, rank, world),
        sample_size, keys.shuffle, rank, world, comm,
    )  # fmt: skip


def partitioned_plan_epoch(
    local_scores: Any,
    keep_ratio: float,
    seed: int,
    epoch: int,
    num_examples: int,
    *,
    seen: Any | None = None,
    smoothing: float = 0.1,
    comm: Comm | None = None,
    rank: int | None = None,
    world: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``partitioned_plan`` with ``plan_epoch``'s arguments: this rank's slice of ``plan_epoch(...)[rank_positions]``.

    ``local_scores`` and ``seen`` are this rank's shard (``partition_bounds``); ``K = kernels.sample_size(N,
    keep_ratio)``, keys from ``(seed, epoch)``; ``rank``/``world`` default to ``torch.distributed``'s
    (with ``TorchComm``, which needs a gloo group), or one process (``LocalComm``) when it is not initialised.
    """
    from ..kernels import sample_size
    from . import rank_and_world

    if rank is None or world is None:
        rank, world = rank_and_world()
    if comm is None:
        comm = LocalComm() if world == 1 else TorchComm()
    keys = reference.epoch_keys(seed, epoch)
    size = sample_size(int(num_examples), keep_ratio)
    return partitioned_plan(local_scores, seen, num_examples, size, smoothing, keys, rank, world, comm)


def require_partitionable_method(method: Any) -> None:
    """Raise ``ValueError`` unless ``method`` plans on a sharded table: ``sadp`` with at most ``weight_power`` set."""
    from dataclasses import replace

    from ..methods.sadp import SADP

    if not isinstance(method, SADP) or replace(method, weight_power=SADP.weight_power) != SADP():
        raise ValueError(
            f"a PartitionedScoreStore plans with method='sadp' and at most its weight_power option, not {method!r}: "
            "use a replicated ScoreStore for the other methods and options"
        )


def plan_rank_slice(method: Any, snapshot: Any, request: dict[str, Any], store: Any) -> tuple[np.ndarray, np.ndarray]:
    """This rank's slice of ``sadp``'s plan from its region ``snapshot`` of the sharded ``store``; collective.

    ``request``: ``keep_ratio``, ``seed``, ``epoch``, ``smoothing``. Equal to the replicated
    sampler's ``plan.rank_slice(rank, world)`` for the same scores: the draw of ``partitioned_plan_epoch``,
    its weights raised to ``weight_power`` on pruned epochs, as ``SADP.plan_with_info`` does.
    """
    keep = float(request["keep_ratio"])
    order, weights = partitioned_plan_epoch(
        snapshot.scores, keep, request["seed"], request["epoch"], store.num_examples, seen=snapshot.seen,
        smoothing=request["smoothing"], comm=store.comm, rank=store.rank, world=store.world,
    )  # fmt: skip
    if keep < 1.0 and method.weight_power != 1.0:
        weights = np.power(weights.astype(np.float64), method.weight_power).astype(np.float32)
    return order, weights
