"""The data-moving half of ``sharded_plan``: the ranks' communication and the distributed scatter shuffle.

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
   buckets (an all-gather of one count per rank). It then runs the reference's Fisher–Yates on its
   buckets, whose swaps depend only on a bucket's global start and size (the swap randoms are keyed
   by the global slot), so it knows each pick's output position ``q``;
3. output ``q`` goes to every rank whose ``rank_positions`` slice holds it (the wrapped padding
   included), where it is placed at its offset in the slice.

Buckets are owned whole, so owners differ by up to a bucket (about ``SHUFFLE_BUCKET`` positions);
with fewer buckets than ranks some own none. Cost per rank: two exchanges of about ``K/world``
records of 20 bytes (position or slot, example, weight), one all-gather of ``world`` counts, and
``O(K/world)`` work and memory; the in-bucket Fisher–Yates is vectorised across the owner's buckets,
one numpy step per in-bucket position (about ``SHUFFLE_BUCKET`` steps whatever ``K``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .distributed import per_rank
from .kernels import reference

#: One travelling pick: ``key`` is its position in ``picks`` (to the bucket owner) or its offset in the
#: destination's slice (to the slice owner); ``index`` the example; ``weight`` its importance weight.
RECORD = np.dtype([("key", "<i8"), ("index", "<i8"), ("weight", "<f4")])
#: Elements per piece of the element-wise passes: bounds their temporaries (about 64 bytes each).
PIECE = 1 << 13


class Comm(Protocol):
    """The collectives ``sharded_plan`` uses; every rank calls each one at the same point, in the same order."""

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


def _pack(key: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Records (``RECORD``) of the given fields."""
    records = np.empty(key.shape[0], dtype=RECORD)
    records["key"], records["index"], records["weight"] = key, index, weight
    return records


def _small(world: int) -> type:
    """The narrowest unsigned type for rank ids: stable argsorts of 8- and 16-bit ints are radix sorts."""
    return np.uint8 if world <= 1 << 8 else np.uint16 if world <= 1 << 16 else np.int64


def _slices(count: int, parts: int) -> range:
    return range(0, count, parts)


def bucket_slots(sizes: np.ndarray, base: int, swap_key: np.uint64) -> np.ndarray:
    """The reference's in-bucket Fisher–Yates for consecutive buckets of ``sizes`` starting at slot ``base``.

    Returns ``content`` (int64, ``sizes.sum()`` long): the slot ``base + t`` ends up holding the
    ``content[t]``-th of the buckets' members in ``(bucket, position)`` order, exactly as
    ``reference.shuffle_permutation`` arranges those buckets, because the swaps of a bucket depend
    only on its global start and size. Each slot's swap partner is hashed up front (in pieces of
    ``PIECE``); the swaps then run one vectorised step per in-bucket position, across all buckets.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    count = int(sizes.sum())
    content = np.arange(count, dtype=np.int64)
    if sizes.shape[0] == 0:
        return content
    starts = np.cumsum(sizes) - sizes
    partner = np.repeat(starts, sizes)  # each slot's bucket start, then its swap partner
    shift = np.uint64(32)
    for piece in _slices(count, PIECE):
        slot = content[piece : piece + PIECE]
        limit = (slot - partner[piece : piece + PIECE] + 1).astype(np.uint64)  # step i draws from [0, i]
        bits = reference.random_bits(swap_key, (slot + base).astype(np.uint64))
        partner[piece : piece + PIECE] += ((bits >> shift) * limit >> shift).astype(np.int64)  # reference.bounded
    by_size = np.argsort(-sizes, kind="stable")
    starts, descending = starts[by_size], sizes[by_size]
    steps = np.arange(int(descending[0]))
    active = (descending.shape[0] - np.searchsorted(descending[::-1], steps, side="right")).tolist()  # sizes > i
    for i in range(int(descending[0]) - 1, 0, -1):
        here = starts[: active[i]] + i
        there = partner[here]
        content[here], content[there] = content[there], content[here].copy()
    return content


def shuffle_picks(
    indices: np.ndarray,
    positions: np.ndarray,
    weights: np.ndarray,
    sample_size: int,
    key: np.uint64,
    rank: int,
    world: int,
    comm: Comm,
) -> tuple[np.ndarray, np.ndarray]:
    """This rank's slice ``(order, weights)`` of ``picks[shuffle_permutation(K, key)]`` (``rank_positions``).

    ``indices``, ``positions`` and ``weights`` are this rank's picks: example, position in the global
    ``picks`` array and importance weight. Across all ranks the positions must be exactly
    ``0 … K−1`` once each (``K = sample_size``); every rank must call this collectively. Returns
    int64 and float32 arrays of ``per_rank(K, world)`` entries, bit-identical to the single-process
    plan's slice. Raises ``RuntimeError`` if the positions were not a partition of ``0 … K−1``.
    """
    bucket_key, swap_key = reference.random_bits(key, np.arange(2, dtype=np.uint64))
    buckets = reference.shuffle_buckets(sample_size)
    bounds = np.array([r * buckets // world for r in range(world + 1)], dtype=np.int64)

    def bucket_of(where: np.ndarray) -> np.ndarray:
        return reference.bounded(reference.random_bits(bucket_key, where.astype(np.uint64)), buckets).astype(np.int64)

    # 1. every pick to the owner of its bucket, as records sorted by owner (a radix sort of small ints)
    owner = (np.searchsorted(bounds, bucket_of(positions), side="right") - 1).astype(_small(world))
    arrangement = np.argsort(owner, kind="stable")
    cuts = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=world))])
    del owner
    records = _pack(positions[arrangement], indices[arrangement], weights[arrangement])
    del arrangement
    received = comm.exchange([records[cuts[d] : cuts[d + 1]] for d in range(world)])
    del records
    members = np.concatenate([np.asarray(part).view(RECORD) for part in received])
    del received
    where, example, weight = (np.ascontiguousarray(members[field]) for field in RECORD.names)
    del members
    # 2. the owner's buckets in the reference's slots, i.e. sorted by (bucket, position), then its Fisher–Yates
    member_bucket = bucket_of(where) - bounds[rank]
    sizes = np.bincount(member_bucket, minlength=int(bounds[rank + 1] - bounds[rank]))
    arrangement = np.argsort(member_bucket * sample_size + where)  # distinct keys: any sort gives this order
    del member_bucket, where
    counts = comm.all_gather(np.array([example.shape[0]], dtype=np.int64))
    base = int(sum(int(count[0]) for count in counts[:rank]))  # positions in lower buckets
    arrangement = arrangement[bucket_slots(sizes, base, swap_key)]  # output base + t holds member arrangement[t]
    # 3. output q to every rank whose slice holds it: q // size, and the wrapped padding q + K, q + 2K, …
    size, count = per_rank(sample_size, world), example.shape[0]
    outputs = base + np.arange(count, dtype=np.int64)
    records = _pack(outputs % size, example[arrangement], weight[arrangement])
    del arrangement, example, weight
    edges = np.clip(np.arange(world + 1, dtype=np.int64) * size - base, 0, count)
    parts = [records[edges[d] : edges[d + 1]] for d in range(world)]
    for wrap in range(1, -(-(world * size) // sample_size)):
        spot = outputs[: max(0, min(count, world * size - wrap * sample_size - base))] + wrap * sample_size
        for destination in np.unique(spot // size).tolist():
            chosen = spot // size == destination
            extra = records[: spot.shape[0]][chosen]
            extra["key"] = spot[chosen] % size
            parts[destination] = np.concatenate([parts[destination], extra])
    del outputs
    received = comm.exchange(parts)
    del records, parts
    order = np.empty(size, dtype=np.int64)
    slice_weights = np.empty(size, dtype=np.float32)
    filled = np.zeros(size, dtype=bool)
    for part in received:
        part = np.asarray(part).view(RECORD)
        order[part["key"]], slice_weights[part["key"]], filled[part["key"]] = part["index"], part["weight"], True
    if sum(np.asarray(part).shape[0] for part in received) != size or not filled.all():
        raise RuntimeError(f"rank {rank} did not receive exactly the {size} picks of its slice")
    return order, slice_weights
