"""``PartitionedScoreStore``: each data-parallel rank holds, writes and plans from only its region of the score table.

With ``world`` ranks and ``N`` examples, rank ``r`` owns examples ``[lo, hi) = partition_bounds(N, world)[r]``
in its own sidecar ``FOLDER/w{world}-r{rank}.zarr`` (an ordinary ``ScoreStore``): no rank holds anything of
size ``N``. ``SADPSampler(store)`` plans with ``partitioned_plan`` (each rank draws its slice of the one global
plan, bit-identical to the single-process one); scores are routed to their owners (``Comm.exchange``).

Guarantees and trade-offs:

* ``update`` buffers; every ``sync_every`` updates, and at every epoch boundary, the ranks exchange
  their buffers (a collective: every rank calls ``update`` equally often, as data-parallel training
  steps do). Scores keep the epoch they were pushed in; they are applied in rank order, oldest epoch
  first (as ``distributed.ScoreExchange`` does for replicated stores).
* ``begin_epoch`` snapshots every region, stamps it with the global version (the sum of the regions'
  versions, all-gathered) and persists it before the epoch starts, so a mid-epoch checkpoint of any
  rank resumes on every rank from the same snapshots (``saved_snapshot`` agrees across ranks).
  ``version`` is ``None``: between boundaries there is no single version without a collective.
* Every rank owns at least one block of ``SUM_BLOCK`` (65,536) examples; smaller tables are refused.
* A folder of regions is tied to its world size: another world size is refused, naming the regions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._moved import renamed
from ..kernels.reference import SUM_BLOCK
from ..store import (
    ScoreSnapshot,
    ScoreStore,
    as_epoch_stamp,
    as_index_array,
    as_score_array,
    bad_indices,
    bad_scores,
    raise_bad_entries,
)
from ..store.table import RankRegion
from . import apply_packed, pack_scores, partition_bounds, rank_and_world
from ._partition_shuffle import Comm, LocalComm, TorchComm
from .partitioned_plan import require_partitionable_method

__getattr__ = renamed(__name__, {"ShardedScoreStore": "PartitionedScoreStore"})


def _raise_if_any_failed(votes: list[np.ndarray], failure: Exception | None, what: str) -> None:
    """After a collective vote (``-1``: that rank failed): raise on every rank, this rank's own error if it had one."""
    failed = [rank for rank, vote in enumerate(votes) if int(vote[0]) == -1]
    if failure is not None:
        raise failure
    if failed:
        raise RuntimeError(f"rank {failed[0]} failed at {what} (its error says why); every rank stops here")


class StaleRegionError(ValueError):
    """A rank's region is older than the checkpoint being resumed (restored from a stale copy)."""


def region_name(world: int, rank: int) -> str:
    """The file name of rank ``rank``'s region of a table sharded over ``world`` ranks."""
    return f"w{world}-r{rank}.zarr"


class PartitionedScoreStore:
    """Rank ``rank``'s region of a score table sharded over ``world`` ranks (see the module docstring)."""

    def __init__(
        self,
        region: ScoreStore,
        num_examples: int,
        rank: int,
        world: int,
        comm: Comm,
        sync_every: int = 1,
        fingerprint: str | None = None,
        created: bool = False,
    ) -> None:
        if sync_every <= 0:
            raise ValueError(f"sync_every must be a positive number of updates, got {sync_every}")
        self.region = region
        self.fingerprint = fingerprint  #: the dataset's (each region pins it with its bounds)
        self.num_examples = int(num_examples)
        self.rank, self.world, self.comm = int(rank), int(world), comm
        self.bounds = partition_bounds(self.num_examples, self.world)
        self.lo, self.hi = self.bounds[self.rank]
        if region.num_examples != self.hi - self.lo:
            owned = self.hi - self.lo
            raise ValueError(f"{region.path} holds {region.num_examples} examples; rank {rank} owns {owned}")
        self.sync_every = int(sync_every)
        self._starts = np.array([lo for lo, _ in self.bounds], dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray, int]] = []
        self._updates = 0
        self._bad: Exception | None = None
        self._hooks: list[Callable[[], None]] = []
        #: 0: this rank found no region file and started an empty one; 1: found one, unscored; 2: found scores
        self.found = 0 if created else 1 + bool(np.any(region.seen()))

    @classmethod
    def open(
        cls,
        folder: str | Path,
        num_examples: int,
        *,
        fingerprint: str | None = None,
        sync_every: int = 1,
        flush_interval: float = 1.0,
        rank: int | None = None,
        world: int | None = None,
        comm: Comm | None = None,
    ) -> PartitionedScoreStore:
        """This rank's region in ``folder`` (created empty on first use); collective-free.

        ``rank``/``world`` default to ``torch.distributed``'s, ``comm`` to ``TorchComm()`` (gloo; under
        NCCL pass ``TorchComm(dist.new_group(backend="gloo"))``) or ``LocalComm()`` for one process.
        ``fingerprint`` (the dataset's) is pinned in every region with the region's bounds, so a
        region of other data or of another ``num_examples`` is refused by name.
        """
        if (rank is None) != (world is None):
            raise ValueError(f"pass both rank and world or neither, got rank={rank}, world={world}")
        if rank is None or world is None:
            rank, world = rank_and_world()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        others = sorted(p.name for p in folder.glob("w*-r*.zarr") if not p.name.startswith(f"w{world}-r"))
        if others:
            raise ValueError(
                f"{folder} holds score regions of another world size ({', '.join(others[:4])}); a sharded "
                f"store is resumed at the world size it was written with, not at {world}"
            )
        bounds = partition_bounds(int(num_examples), int(world))
        if any(lo == hi for lo, hi in bounds):
            raise ValueError(
                f"{num_examples} examples are too few to shard over {world} ranks (every rank owns whole blocks of "
                f"{SUM_BLOCK:,} examples): use a replicated ScoreStore, whose table is small at this size"
            )
        lo, hi = bounds[int(rank)]
        pin = f"{fingerprint or 'scores'}|examples {lo}-{hi} of {num_examples}"
        path = folder / region_name(world, rank)
        created = not path.exists()
        if created:
            ScoreStore.create(path, hi - lo, fingerprint=pin, owner_rank=-1).close()  # its rank's own file
        region = ScoreStore.open(path, "r+", num_examples=hi - lo, fingerprint=pin, flush_interval=flush_interval)
        comm = comm if comm is not None else (LocalComm() if world == 1 else TorchComm())
        return cls(region, num_examples, rank, world, comm, sync_every, fingerprint, created)

    # -- what the sampler and scorer read ------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.region.path

    @property
    def rank_region(self) -> RankRegion:
        """The examples ``[lo, hi)`` this rank owns (``ScoreTable.rank_region``)."""
        return RankRegion(self.rank, self.world, self.lo, self.hi)

    @property
    def version(self) -> None:
        """``None``: a sharded table has a global version only at epoch boundaries (snapshots carry it)."""
        return None

    @property
    def current_epoch(self) -> int:
        return self.region.current_epoch

    @property
    def read_only(self) -> bool:
        return self.region.read_only

    @property
    def keep_ratio_history(self) -> list[tuple[int, float]]:
        return self.region.keep_ratio_history

    def scores(self) -> np.ndarray:
        """This rank's region of the scores (read-only view; example ``lo + i`` at ``i``)."""
        return self.region.scores()

    def seen(self) -> np.ndarray:
        return self.region.seen()

    def last_epoch(self) -> np.ndarray:
        return self.region.last_epoch()

    def set_epoch(self, epoch: int) -> None:
        """Stamp ``epoch`` on later updates that pass none."""
        self.region.set_epoch(epoch)

    def check_sampler(self, method: Any, rank: int, world: int, localized: bool) -> None:
        """Raise ``ValueError`` unless a sampler with these settings can plan from this store."""
        require_partitionable_method(method)
        if (rank, world) != (self.rank, self.world):
            raise ValueError(f"{self!r} is rank {self.rank} of {self.world}; the sampler is rank {rank} of {world}")
        if localized:
            raise ValueError("shard_size/groups (shard-local ordering) are not supported with a PartitionedScoreStore")

    # -- scores -------------------------------------------------------------------------------

    def update(self, indices: Any, scores: Any, epoch: int | None = None) -> None:
        """Queue scores of any examples (global indices); every ``sync_every`` calls, route (collective).

        Bad input (an index outside ``[0, N)``, a NaN, infinite or negative score, arrays of the wrong
        shape or type, an epoch outside ``[-1, 2**31)``) queues nothing of the call and raises at the
        route it would have joined, on every rank at once (so no rank is left waiting in a collective):
        on the calling rank the error names positions and values, on the others it names the rank.
        """
        try:  # any error is raised at the next route, on every rank at once
            index = as_index_array(indices)
            values = as_score_array(scores, index.shape[0])
            stamp = as_epoch_stamp(epoch, self.region.current_epoch)
            if bad_indices(index, self.num_examples).any() or bad_scores(values).any():
                raise_bad_entries(index, values, self.num_examples)
        except (IndexError, TypeError, ValueError) as error:
            self._bad = self._bad or error
            index, values, stamp = np.zeros(0, np.int64), np.zeros(0, np.float32), self.region.current_epoch
        self._pending.append((index.astype(np.int64, copy=True), values.astype(np.float32, copy=True), stamp))
        self._updates += 1
        if self._updates >= self.sync_every:
            self.route()

    def route(self) -> None:
        """Collective: send every queued score to the rank owning its example; apply what arrives here."""
        if self._pending:
            index = np.concatenate([entry[0] for entry in self._pending])
            values = np.concatenate([entry[1] for entry in self._pending])
            stamps = np.concatenate([np.full(entry[0].shape[0], entry[2], np.int64) for entry in self._pending])
        else:
            index, values, stamps = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        words = pack_scores(values, stamps)
        records = np.stack([index, words], axis=1)
        owners = np.searchsorted(self._starts, index, side="right") - 1
        parts = [records[owners == rank].reshape(-1) for rank in range(self.world)]
        if self._bad is None:
            try:  # a failed writer thread (say, a full disk) stops every rank here, not this one alone
                self.region.check_writable()
            except (OSError, RuntimeError) as error:
                self._bad = error
        if self._bad is not None:  # a record no index can be: every rank learns that this one failed
            parts = [np.concatenate([part, np.array([-1, self.rank], np.int64)]) for part in parts]
        received = self.comm.exchange(parts)
        self._pending, self._updates = [], 0
        merged = np.concatenate(received).reshape(-1, 2) if received else np.zeros((0, 2), np.int64)
        failed = merged[merged[:, 0] < 0, 1]
        merged = merged[merged[:, 0] >= 0]
        error, self._bad = self._bad, None
        if not isinstance(error, OSError | RuntimeError):  # the good scores go in, unless this region's writer failed
            apply_packed(self.region, merged[:, 0], merged[:, 1], offset=self.lo)
        if error is not None:  # then every rank stops here: this one with its own error
            raise error
        if failed.size:
            raise ValueError(
                f"rank {int(failed[0])} failed at the score route (bad scores or a failed writer; its error says "
                "which); its call was not kept"
            )

    def add_sync_hook(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    def synchronize(self) -> None:
        """Collective: route the queued scores, then run the sync hooks."""
        self.route()
        for hook in self._hooks:
            hook()

    # -- the epoch boundary ---------------------------------------------------------------------

    def begin_epoch(
        self,
        epoch: int,
        keep_ratio: float,
        *,
        resume_from: ScoreSnapshot | None = None,
        persist_snapshot: bool = True,
        num_replicas: int = 1,
    ) -> ScoreSnapshot:
        """``ScoreStore.begin_epoch`` on the regions (collective): this rank's region snapshot, stamped
        with the global version, persisted and on disk before it is returned for pruned epochs."""
        if resume_from is not None:
            return self.region.begin_epoch(epoch, keep_ratio, resume_from=resume_from)
        self.synchronize()
        local = failure = None
        try:
            local = self.region.begin_epoch(epoch, keep_ratio, persist_snapshot=False)
        except (OSError, RuntimeError, ValueError) as error:  # e.g. the region's writer failed: tell every rank
            failure = error
        versions = self.comm.all_gather(np.array([-1 if local is None else local.version, self.found], np.int64))
        _raise_if_any_failed(versions, failure, f"epoch {epoch}'s boundary")
        self._check_regions_found([int(v[1]) for v in versions])
        assert local is not None
        snapshot = ScoreSnapshot(local.scores, local.seen, int(sum(int(v[0]) for v in versions)), local.last_epoch)
        if persist_snapshot and keep_ratio < 1.0:
            try:  # a full disk while writing the snapshot stops every rank here, not this one alone
                self.region.save_snapshot(snapshot)
                self.region.flush()
            except (OSError, RuntimeError) as error:
                failure = error
            votes = self.comm.all_gather(np.array([-1 if failure is not None else 0], np.int64))
            _raise_if_any_failed(votes, failure, f"epoch {epoch}'s snapshot")
        return snapshot

    def saved_snapshot(self, resuming: int | None = None) -> ScoreSnapshot | None:
        """Collective: this region's persisted snapshot if every rank has one of the same global version.

        ``resuming``: the snapshot version a checkpoint's epoch was planned from. Every region persisted
        that snapshot before the epoch started, so a region holding none, or an older one, was restored
        from a stale copy (or lost its last writes): ``StaleRegionError`` on every rank, naming each
        rank's region with the epoch and snapshot it holds, since replanning would mix scores of
        different ages. Regions all at that version or newer (the run went on past the checkpoint)
        are not stale: ``None`` unless they agree.
        """
        local = failure = None
        try:
            local = self.region.saved_snapshot()
        except (OSError, RuntimeError, ValueError) as error:  # a damaged region: every rank raises, none waits
            failure = error
        history = self.region.keep_ratio_history
        version, last_begun = -1 if local is None else local.version, history[-1][0] if history else -1
        # what every rank learns of every region: has a snapshot, its version, failed, found, last epoch, updates
        fields = [local is not None, version, failure is not None, self.found, last_begun, self.region.version]
        mine = np.array(fields, np.int64)
        everyone = self.comm.all_gather(mine)
        _raise_if_any_failed([np.array([-1 if int(v[2]) else 0]) for v in everyone], failure, "the saved snapshots")
        self._check_regions_found([int(v[3]) for v in everyone])
        if resuming is not None:
            self._check_not_stale(everyone, resuming)
        agreed = all(int(v[0]) == 1 and int(v[1]) == int(mine[1]) for v in everyone)
        return local if agreed else None

    def _check_not_stale(self, everyone: list[np.ndarray], resuming: int) -> None:
        """Raise ``StaleRegionError`` on every rank when some region holds no snapshot, or one older than
        ``resuming`` (every rank gathered the same ``everyone``: each region's snapshot, epoch, version)."""
        stale = [rank for rank, v in enumerate(everyone) if int(v[1]) < resuming]
        if not stale:
            return
        folder = self.region.path.parent

        def holds(rank: int) -> str:
            has, snapshot, _, _, epoch, updates = (int(x) for x in everyone[rank])
            what = f"the snapshot of global version {snapshot}" if has else "no snapshot"
            return f"rank {rank} ({region_name(self.world, rank)}: {what}, last epoch begun {epoch}, {updates} updates)"

        fresh = [rank for rank in range(self.world) if rank not in stale]
        raise StaleRegionError(
            f"resuming from a checkpoint planned from snapshot version {resuming}, but in {folder} "
            f"{'; '.join(holds(rank) for rank in stale)} hold(s) an older state than the checkpoint, while "
            f"{'; '.join(holds(rank) for rank in fresh) or 'no rank'} hold(s) it or newer: "
            f"{'those regions were' if len(stale) > 1 else 'that region was'} restored from a stale copy (or lost "
            "its last writes). Resuming would plan from scores of different ages. Restore every rank's region from "
            "copies taken at the same moment, at or after the checkpoint (or resume from a checkpoint no newer "
            "than the copies)"
        )

    def _check_regions_found(self, found: list[int]) -> None:
        """Raise on every rank when some ranks started empty regions while others found scored ones (a region
        file lost, or node-local regions after the job moved): its examples would silently count as unseen."""
        if 0 in found and 2 in found:
            new = [rank for rank, code in enumerate(found) if code == 0]
            raise ValueError(
                f"ranks {new} found no region file in {self.region.path.parent} (started empty) while the other "
                "ranks found theirs: a resumed sharded store needs every rank's region (on node-local storage, "
                "copy the regions back to the ranks that wrote them)"
            )

    def record_keep_ratio(self, epoch: int, keep_ratio: float) -> None:
        self.region.record_keep_ratio(epoch, keep_ratio)

    def flush(self) -> None:
        """Wait until this rank's region is on disk (queued, unrouted scores stay queued)."""
        self.region.flush()

    def close(self) -> None:
        """Close this rank's region. Scores still queued (``sync_every > 1``) are not routed here, since
        routing is a collective: a ``RuntimeWarning`` counts them (call ``route()`` on every rank first).
        A refused ``update`` that no route has reported yet is raised after the region is closed."""
        queued = sum(entry[0].shape[0] for entry in self._pending)
        if queued:
            warnings.warn(
                f"{self!r} closed with {queued} scores queued and not routed to their owners: they are lost; "
                "call store.route() on every rank before closing",
                RuntimeWarning,
                stacklevel=2,
            )
            self._pending = []
        self.region.close()
        if self._bad is not None:  # a refused call that no route reported: report it now, not never
            error, self._bad = self._bad, None
            raise error

    def __enter__(self) -> PartitionedScoreStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PartitionedScoreStore({self.path}, examples {self.lo}-{self.hi} of {self.num_examples})"
