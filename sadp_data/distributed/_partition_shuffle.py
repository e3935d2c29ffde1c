"""The data-moving half of ``partitioned_plan``: the ranks' communication and the distributed scatter shuffle.

``Comm`` is all the sharded planner asks of a process group: an all-gather of variable-length 1-D
arrays and a personalised all-to-all (``exchange``). ``TorchComm`` implements it on
``torch.distributed`` (gloo: ``all_gather`` of padded byte buffers after a gather of their sizes;
``all_to_all_single`` with uneven splits, which gloo supports), ``LocalComm`` for a single process.
Both move raw bytes, so any numpy dtype, structured ones included, travels unchanged.

``shuffle_picks`` puts every rank's picks into their training order and hands each rank its
data-parallel slice, exactly as ``reference.shuffle_permutation`` followed by
``distributed.rank_positions`` would, without any rank holding the permutation of all ``K`` picks:

1. every pick knows its position ``p`` in the walk's ``picks`` array; its shuffle bucket is a hash of
   ``p``, so it is sent to the rank that owns its bucket (buckets are split into ``world`` contiguous
   ranges);
2. a bucket owner receives *every* position of its buckets. Sorted by ``(bucket, p)`` they sit in the
   slots the reference's stable counting sort gives them, offset by the number of positions in lower
   buckets (from the first exchange's counts). It then runs the reference's Fisher–Yates on its
   buckets, whose swaps depend only on a bucket's global start and size (the swap randoms are keyed
   by the global slot), so it knows each pick's output position ``q``;
3. output ``q`` goes to every rank whose ``rank_positions`` slice holds it (the wrapped padding
   included), where it is placed at its offset in the slice.

Buckets are owned whole, so owners differ by up to a bucket (about ``SHUFFLE_BUCKET`` positions);
with fewer buckets than ranks some own none. Cost per rank: two exchanges of about ``K/world``
records of 12 bytes (position or slot, example, weight; 20 once ``N > 2³²``), each after an
all-gather of ``world`` counts and in rounds of at most ``ROUND`` records, so no message holds all of
them; ``O(K/world)`` work and memory, indices kept uint32 while they fit; the in-bucket
Fisher–Yates is vectorised across the owner's buckets, one numpy step per in-bucket position (about
``SHUFFLE_BUCKET`` steps whatever ``K``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Protocol

import numpy as np

from ..kernels import reference
from . import per_rank

#: Elements per piece of the element-wise passes: bounds their temporaries (about 64 bytes each).
PIECE = 1 << 13
#: Records a rank sends, or receives, per round of an exchange of picks: bounds the message buffers.
ROUND = 1 << 20


class Comm(Protocol):
    """The collectives ``partitioned_plan`` uses; every rank calls each one at the same point, in the same order."""

    def all_gather(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's 1-D ``array`` (any length; one dtype on all ranks), in rank order."""
        ...

    def exchange(self, per_destination: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Personalised all-to-all: ``per_destination[d]`` goes to rank ``d``; returns what each rank sent here."""
        ...


class LocalComm:
    """``Comm`` of a single process (``world = 1``): collectives return copies of their input."""

    def all_gather(self, array: np.ndarray) -> list[np.ndarray]:
        """``[copy of array]``."""
        return [np.array(array, copy=True).reshape(-1)]

    def exchange(self, per_destination: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``[copy of per_destination[0]]``; raises ``ValueError`` unless exactly one destination is given."""
        if len(per_destination) != 1:
            raise ValueError(f"LocalComm has one rank, got {len(per_destination)} destinations")
        return [np.array(per_destination[0], copy=True).reshape(-1)]


def _raw(array: np.ndarray) -> np.ndarray:
    """The bytes of a 1-D array (a view when it is contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


class TorchComm:
    """``Comm`` on ``torch.distributed`` CPU collectives (gloo), optionally within ``group``.

    The buffers are CPU tensors: under an NCCL default group pass a gloo ``group``
    (``dist.new_group(backend="gloo")``).

    Buffers are numpy arrays shared with torch (``torch.from_numpy``), so no extra copies are made and
    ``tracemalloc`` sees them. gloo drops the tensors of a collective on its own threads, which need the
    GIL for numpy-backed ones: a call's buffers may stay allocated for a moment after it returns, until
    this thread next releases the GIL. ``all_gather`` pads every rank's bytes to the longest (meant for the
    planner's small per-block arrays); ``exchange`` uses ``all_to_all_single`` with uneven splits
    after exchanging the split sizes, so it moves only the payload.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group

    def _world(self) -> int:
        import torch.distributed as dist

        return dist.get_world_size(self.group)

    def all_gather(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's ``array`` in rank order: one all-gather of sizes, one of padded byte buffers."""
        import torch
        import torch.distributed as dist

        data = np.ascontiguousarray(array).reshape(-1)
        raw = _raw(data)
        world = self._world()
        sizes = np.zeros(world, dtype=np.int64)
        size_views = [torch.from_numpy(sizes[r : r + 1]) for r in range(world)]
        dist.all_gather(size_views, torch.tensor([raw.shape[0]], dtype=torch.int64), group=self.group)
        longest = max(1, int(sizes.max()))
        padded = np.zeros(longest, dtype=np.uint8)
        padded[: raw.shape[0]] = raw
        received = np.empty((world, longest), dtype=np.uint8)
        dist.all_gather([torch.from_numpy(row) for row in received], torch.from_numpy(padded), group=self.group)
        return [received[r, : int(sizes[r])].copy().view(data.dtype) for r in range(world)]

    def exchange(self, per_destination: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Personalised all-to-all of byte buffers (``all_to_all_single``); all arrays share one dtype."""
        import torch
        import torch.distributed as dist

        world = self._world()
        if len(per_destination) != world:
            raise ValueError(f"exchange needs one array per rank ({world}), got {len(per_destination)}")
        dtype = np.asarray(per_destination[0]).dtype
        # one leading byte per destination, so no buffer or split is empty (an all-empty exchange is common:
        # no rank has scores queued), which gloo has had bugs with (pytorch#85234)
        raws = [_raw(np.asarray(part, dtype=dtype)) for part in per_destination]
        send_sizes = np.array([raw.shape[0] + 1 for raw in raws], dtype=np.int64)
        receive_sizes = np.zeros(world, dtype=np.int64)
        dist.all_to_all_single(torch.from_numpy(receive_sizes), torch.from_numpy(send_sizes), group=self.group)
        send = np.zeros(int(send_sizes.sum()), dtype=np.uint8)  # each destination: a zero byte, then its bytes
        starts = np.concatenate([[0], np.cumsum(send_sizes)])
        for start, raw in zip(starts.tolist(), raws, strict=False):
            send[start + 1 : start + 1 + raw.shape[0]] = raw
        receive = np.empty(int(receive_sizes.sum()), dtype=np.uint8)
        dist.all_to_all_single(
            torch.from_numpy(receive),
            torch.from_numpy(send),
            output_split_sizes=receive_sizes.tolist(),
            input_split_sizes=send_sizes.tolist(),
            group=self.group,
        )
        edges = np.concatenate([[0], np.cumsum(receive_sizes)])
        return [receive[edges[r] + 1 : edges[r + 1]].view(dtype) for r in range(world)]


def record_dtype(num_examples: int) -> np.dtype:
    """The records of a plan over ``num_examples`` examples: 12 bytes while indices fit uint32, else 20.

    ``key`` is a pick's position in ``picks`` (to the bucket owner) or its offset in the destination's
    slice (to the slice owner), both below ``N``; ``index`` the example; ``weight`` its importance weight.
    Every rank derives the same type from ``N``, so the records travel as raw bytes.
    """
    index = "<u4" if num_examples <= 1 << 32 else "<i8"
    return np.dtype([("key", index), ("index", index), ("weight", "<f4")])


def _compact(order: np.ndarray) -> np.ndarray:
    """A sort order (or any indices below its length) as uint32 when they fit: half the bytes of int64."""
    return order.astype(np.uint32) if order.shape[0] <= 1 << 32 else order


def _small(world: int) -> type:
    """The narrowest unsigned type for rank ids: stable argsorts of 8- and 16-bit ints are radix sorts."""
    return np.uint8 if world <= 1 << 8 else np.uint16 if world <= 1 << 16 else np.int64


def _slices(count: int, parts: int) -> range:
    return range(0, count, parts)


def bucket_slots(sizes: np.ndarray, base: int, swap_key: np.uint64) -> np.ndarray:
    """The reference's in-bucket Fisher–Yates for consecutive buckets of ``sizes`` starting at slot ``base``.

    Returns ``content`` (``sizes.sum()`` long; uint32 while that fits, else int64): the slot
    ``base + t`` ends up holding the ``content[t]``-th of the buckets' members in ``(bucket,
    position)`` order, exactly as ``reference.shuffle_permutation`` arranges those buckets, because the
    swaps of a bucket depend only on its global start and size. Each slot's swap partner is hashed up
    front (in pieces of ``PIECE``); the swaps then run one vectorised step per in-bucket position,
    across all buckets.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    count = int(sizes.sum())
    content = np.empty(count, dtype=np.uint32 if count <= 1 << 32 else np.int64)
    for piece in _slices(count, PIECE):  # piece by piece: no int64 array of all the slots
        content[piece : piece + PIECE] = np.arange(piece, min(count, piece + PIECE))
    if sizes.shape[0] == 0:
        return content
    starts = np.cumsum(sizes) - sizes
    partner = np.repeat(starts.astype(content.dtype), sizes)  # each slot's bucket start, then its swap partner
    shift, first = np.uint64(32), np.uint64(base)
    for piece in _slices(count, PIECE):
        slot = content[piece : piece + PIECE].astype(np.int64)
        limit = (slot - partner[piece : piece + PIECE] + 1).astype(np.uint64)  # step i draws from [0, i]
        bits = reference.random_bits(swap_key, slot.astype(np.uint64) + first)
        partner[piece : piece + PIECE] += ((bits >> shift) * limit >> shift).astype(content.dtype)  # bounded
    by_size = np.argsort(-sizes, kind="stable")
    starts, descending = starts[by_size], sizes[by_size]
    steps = np.arange(int(descending[0]))
    active = (descending.shape[0] - np.searchsorted(descending[::-1], steps, side="right")).tolist()  # sizes > i
    for i in range(int(descending[0]) - 1, 0, -1):
        here = starts[: active[i]] + i
        there = partner[here]
        content[here], content[there] = content[there], content[here].copy()
    return content


def _exchange_in_rounds(
    comm: Comm, sending: np.ndarray, take: Callable[[int, int, int], np.ndarray], dtype: np.dtype, rank: int
) -> tuple[np.ndarray, Iterator[tuple[int, int, np.ndarray]]]:
    """A personalised all-to-all of ``sending[d]`` records to each rank ``d``, in rounds of at most ``ROUND``.

    ``take(d, start, stop)`` makes records ``[start, stop)`` of those for ``d`` when a round needs
    them, so neither side holds a message of all its records. Returns the ``[source, destination]``
    matrix of record counts (one all-gather) and an iterator that runs the rounds (collectives: every
    rank must exhaust it) and yields ``(source, offset, records)``: the records from ``source`` at
    ``offset`` among all it sends here. Raises ``RuntimeError`` if a round delivers another count.
    """
    matrix = np.stack([np.asarray(row, dtype=np.int64) for row in comm.all_gather(sending.astype(np.int64))])
    busiest = max(int(matrix.sum(axis=0).max()), int(matrix.sum(axis=1).max()))
    rounds = max(1, -(-busiest // ROUND))

    def run() -> Iterator[tuple[int, int, np.ndarray]]:
        for step in range(rounds):
            parts = [take(d, sent * step // rounds, sent * (step + 1) // rounds) for d, sent in enumerate(sending)]
            received = comm.exchange(parts)
            del parts
            for source, part in enumerate(received):
                part = np.asarray(part).view(dtype)
                total = int(matrix[source, rank])
                offset = total * step // rounds
                if part.shape[0] != total * (step + 1) // rounds - offset:
                    raise RuntimeError(
                        f"rank {rank} received {part.shape[0]} records from rank {source}, not its share"
                    )
                yield source, offset, part

    return matrix, run()


def _take_sorted(records: np.ndarray, order: np.ndarray, cuts: np.ndarray, d: int, start: int, stop: int) -> np.ndarray:
    """Records ``[start, stop)`` of those for rank ``d``: ``records[order[cuts[d]:cuts[d + 1]]]``."""
    return records[order[cuts[d] + start : cuts[d] + stop]]


def shuffle_picks(
    picks: np.ndarray, sample_size: int, key: np.uint64, rank: int, world: int, comm: Comm
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's slice ``(order, weights)`` of ``picks[shuffle_permutation(K, key)]`` (``rank_positions``).

    ``picks`` are this rank's picks as ``record_dtype(N)`` records: ``key`` the position in the global
    ``picks`` array, ``index`` the example, ``weight`` the importance weight; pass them without keeping
    a reference, so they are freed once they have travelled. Across all ranks the positions must be
    exactly ``0 … K−1`` once each (``K = sample_size``); every rank must call this collectively.
    Returns int64 and float32 arrays of ``per_rank(K, world)`` entries, bit-identical to the
    single-process plan's slice. Raises ``RuntimeError`` if the positions were not a partition of
    ``0 … K−1``.
    """
    dtype = picks.dtype
    bucket_key, swap_key = reference.random_bits(key, np.arange(2, dtype=np.uint64))
    buckets = reference.shuffle_buckets(sample_size)
    bounds = np.array([r * buckets // world for r in range(world + 1)], dtype=np.int64)

    def bucket_of(where: np.ndarray) -> np.ndarray:
        return reference.bounded(reference.random_bits(bucket_key, where.astype(np.uint64)), buckets).astype(np.int64)

    # 1. every pick to the owner of its bucket, sent in order of owner (a radix sort of small ints)
    owner = np.empty(picks.shape[0], dtype=_small(world))
    for start in _slices(picks.shape[0], PIECE):
        piece = bucket_of(picks["key"][start : start + PIECE])
        owner[start : start + PIECE] = np.searchsorted(bounds, piece, side="right") - 1
    arrangement = _compact(np.argsort(owner, kind="stable"))
    cuts = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=world))])
    del owner
    take = partial(_take_sorted, picks, arrangement, cuts)
    matrix, rounds = _exchange_in_rounds(comm, np.diff(cuts), take, dtype, rank)
    incoming = matrix[:, rank]
    members = np.empty(int(incoming.sum()), dtype=dtype)
    firsts = np.cumsum(incoming) - incoming
    for source, offset, part in rounds:
        members[firsts[source] + offset : firsts[source] + offset + part.shape[0]] = part
    del picks, arrangement, take
    # 2. the owner's buckets in the reference's slots, i.e. sorted by (bucket, position), then its Fisher–Yates
    count = members.shape[0]
    sizes = np.zeros(int(bounds[rank + 1] - bounds[rank]), dtype=np.int64)
    sort_key = np.empty(count, dtype=np.int64)
    for start in _slices(count, PIECE):
        where = members["key"][start : start + PIECE].astype(np.int64)  # a copy: no view keeps members alive
        member_bucket = bucket_of(where) - bounds[rank]
        sizes += np.bincount(member_bucket, minlength=sizes.shape[0])
        sort_key[start : start + PIECE] = member_bucket * sample_size + where
    arrangement = _compact(np.argsort(sort_key))  # distinct keys: any sort gives this order
    del sort_key
    base = int(matrix[:, :rank].sum())  # positions in lower buckets
    arrangement = arrangement[bucket_slots(sizes, base, swap_key)]  # output base + t holds member arrangement[t]
    # 3. output q to every rank whose slice holds it: q // size, and the wrapped padding q + K, q + 2K, …
    size = per_rank(sample_size, world)
    records = members[arrangement]
    del members, arrangement
    for start in _slices(count, PIECE):
        records["key"][start : start + PIECE] = (base + np.arange(start, min(count, start + PIECE))) % size
    edges = np.clip(np.arange(world + 1, dtype=np.int64) * size - base, 0, count)
    parts = [records[edges[d] : edges[d + 1]] for d in range(world)]
    for wrap in range(1, -(-(world * size) // sample_size)):
        spot = base + np.arange(max(0, min(count, world * size - wrap * sample_size - base))) + wrap * sample_size
        for destination in np.unique(spot // size).tolist():
            chosen = spot // size == destination
            extra = records[: spot.shape[0]][chosen]
            extra["key"] = spot[chosen] % size
            parts[destination] = np.concatenate([parts[destination], extra])
    del records
    sending = np.array([part.shape[0] for part in parts], dtype=np.int64)
    _, rounds = _exchange_in_rounds(comm, sending, lambda d, a, b: parts[d][a:b], dtype, rank)
    order = np.empty(size, dtype=np.int64)
    slice_weights = np.empty(size, dtype=np.float32)
    filled = np.zeros(size, dtype=bool)
    arrived = 0
    for _, _, part in rounds:
        order[part["key"]], slice_weights[part["key"]], filled[part["key"]] = part["index"], part["weight"], True
        arrived += part.shape[0]
    if arrived != size or not filled.all():
        raise RuntimeError(f"rank {rank} did not receive exactly the {size} picks of its slice")
    return order, slice_weights
