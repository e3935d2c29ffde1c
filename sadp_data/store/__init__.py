"""Per-example score store: an in-memory mirror persisted to a Zarr v3 sidecar by a writer thread.

``ScoreStore`` is the facade; the parts are ``store_format`` (the sidecar's layout, creation,
validation, checked reads, fingerprints), ``store_writer`` (the mirror, its background writer,
the writer lock, exit and fork hooks), ``store_snapshot`` (snapshots, their persistence for
resume, the keep-ratio history) and ``store_update`` (the update kernel).

* ``update`` never waits for disk: it writes the mirror and the writer thread persists it; a
  process killed at any instant leaves a sidecar that opens cleanly (``store_writer``).
* Epoch boundary: ``begin_epoch`` is the one call between two epochs. It synchronises the ranks,
  stamps the epoch on later updates, takes the snapshot the epoch is planned from, persists it for
  exact resume when the epoch is pruned, and records the keep ratio. Samplers call it when they
  plan an epoch; nothing else about an epoch's start depends on call order.
* Data-parallel runs: rank 0 opens the sidecar for writing; the other ranks open it with
  ``mode="mirror"`` — an in-memory mirror that takes updates (the all-gathered scores) but never
  writes, so exactly one process persists (``sadp_data.distributed.open_store`` picks the mode).
* Resume: a run resumed mid-epoch rebuilds the identical plan from the persisted snapshot
  (``saved_snapshot``, passed back to ``begin_epoch(..., resume_from=...)``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from ._format import (
    ARRAYS,
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    ScoreStoreError,
    check_store_belongs,
    dataset_fingerprint,
    keep_every_chunk,
    open_sidecar,
    read_mirror,
)
from ._format import write_empty as _write_empty
from ._snapshot import ScoreSnapshot, read_snapshot
from ._update import as_epoch_stamp, as_index_array, as_score_array, raise_bad_entries
from ._update import bad_indices as bad_indices
from ._update import bad_scores as bad_scores
from ._writer import MirrorWriter
from ._writer import acquire_writer_lock as acquire_writer_lock
from .table import RankRegion

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "ScoreSnapshot",
    "ScoreStore",
    "ScoreStoreError",
    "check_store_belongs",
    "dataset_fingerprint",
]


class ScoreStore:
    """Scores of N examples, in memory for the trainer and on disk as a Zarr sidecar (a ``ScoreTable``
    that every rank holds whole).

    Create with ``ScoreStore.create(path, num_examples)``, reopen with ``ScoreStore.open(path)``.
    Use as a context manager, or call ``close()``; both flush.
    """

    def __init__(
        self,
        path: Path,
        group: zarr.Group,
        *,
        read_only: bool,
        flush_interval: float,
        persist: bool = True,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.persist = persist and not read_only
        self.flush_interval = float(flush_interval)
        self._group = group
        attrs = dict(group.attrs)
        self.num_examples = int(attrs["num_examples"])
        self.fingerprint: str | None = attrs.get("fingerprint")
        arrays = {name: keep_every_chunk(group[name]) for name, _, _ in ARRAYS}
        self._current_epoch = -1
        self._sync_hooks: list[Callable[[], None]] = []
        self._drain_hooks: list[Callable[[], None]] = []
        self._mirror = MirrorWriter(
            path,
            group,
            arrays,
            read_mirror(path, group, arrays),
            version=int(attrs.get("version", 0)),
            history=list(attrs.get("keep_ratio_history", [])),
            flush_interval=self.flush_interval,
            persist=self.persist,
        )
        self._mirror.before_exit_flush = weakref.WeakMethod(self.drain)  # no cycle: the store frees its arrays

    @classmethod
    def create(
        cls,
        path: str | Path,
        num_examples: int,
        fingerprint: str | None = None,
        *,
        overwrite: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        flush_interval: float = 1.0,
        owner_rank: int = 0,
    ) -> ScoreStore:
        """Create an empty sidecar for ``num_examples`` examples and open it for writing.

        Refuses to replace an existing sidecar unless ``overwrite=True`` (scores are costly to
        recompute). ``fingerprint`` identifies the dataset (see ``dataset_fingerprint``); opening
        with a different one later is refused. In a process group only rank ``owner_rank`` may open
        it for writing (0; ``-1``: any rank, for the regions of a ``PartitionedScoreStore``). Atomic: the
        sidecar is written beside ``path`` and renamed into place, so a failure leaves ``path`` as it
        was (``sadp_data._staging``).
        """
        path = Path(path)
        if not isinstance(num_examples, (int, np.integer)) or isinstance(num_examples, bool) or num_examples <= 0:
            raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; open it with ScoreStore.open or pass overwrite=True")
        from .._staging import staged

        with staged([path]) as stage:  # a failure (a full disk, say) leaves no half-made sidecar at path
            _write_empty(stage / path.name, int(num_examples), fingerprint, int(chunk_size), int(owner_rank))
        group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
        return cls(path, group, read_only=False, flush_interval=flush_interval)

    @classmethod
    def open(
        cls,
        path: str | Path,
        mode: Literal["r", "r+", "mirror"] = "r+",
        *,
        num_examples: int | None = None,
        fingerprint: str | None = None,
        flush_interval: float = 1.0,
    ) -> ScoreStore:
        """Open an existing sidecar; ``mode="r"`` is read-only (no writer thread); ``mode="mirror"``
        takes updates in memory and never writes (the non-zero ranks of a data-parallel run).

        When ``num_examples`` or ``fingerprint`` are given they must match the sidecar's, so
        scores of one dataset are never applied to another.
        """
        path = Path(path)
        if mode not in ("r", "r+", "mirror"):
            raise ValueError(f"mode must be 'r', 'r+' or 'mirror', got {mode!r}")
        group = open_sidecar(path, writable=mode == "r+", num_examples=num_examples, fingerprint=fingerprint)
        try:
            return cls(path, group, read_only=mode == "r", flush_interval=flush_interval, persist=mode == "r+")
        except ScoreStoreError:
            raise
        except Exception as error:  # zarr raises TypeError, ValueError, KeyError, ... on damaged array metadata
            raise ScoreStoreError(f"{path} is not a readable score sidecar: {error!r}") from error

    # -- reading -----------------------------------------------------------------------------

    def scores(self) -> np.ndarray:
        """Read-only view of the in-memory scores (float32[N]); changes as updates arrive."""
        self.drain()
        return self._readonly_view(self._mirror.scores)

    def seen(self) -> np.ndarray:
        """Read-only view of how often each example was scored (uint32[N])."""
        self.drain()
        return self._readonly_view(self._mirror.seen)

    def last_epoch(self) -> np.ndarray:
        """Read-only view of the epoch of each example's latest score (int32[N], -1: never)."""
        self.drain()
        return self._readonly_view(self._mirror.epochs)

    @property
    def version(self) -> int:
        """Number of update batches applied so far (monotone; persisted with the arrays)."""
        return self._mirror.version

    @property
    def current_epoch(self) -> int:
        """The epoch stamped on updates that pass none: the latest ``begin_epoch``/``set_epoch`` (-1 before)."""
        return self._current_epoch

    @property
    def keep_ratio_history(self) -> list[tuple[int, float]]:
        """``(epoch, keep_ratio)`` pairs recorded by samplers, oldest first."""
        return [(int(e), float(k)) for e, k in self._mirror.keep_ratio_history()]

    @property
    def rank_region(self) -> RankRegion | None:
        """``None``: every rank holds the whole table (``ScoreTable.rank_region``)."""
        return None

    def check_sampler(self, method: Any, rank: int, world: int, localized: bool) -> None:
        """Nothing to check: every method, world size and ordering can plan from a whole table."""

    def snapshot(self) -> ScoreSnapshot:
        """A consistent copy of scores, seen counts and epochs, tagged with the current version.

        Local to this process: at an epoch boundary use ``begin_epoch``, which synchronises the ranks first.
        """
        self.drain()
        return self._mirror.snapshot()

    @staticmethod
    def _readonly_view(array: np.ndarray) -> np.ndarray:
        view = array.view()
        view.flags.writeable = False
        return view

    # -- the epoch boundary ------------------------------------------------------------------

    def begin_epoch(
        self,
        epoch: int,
        keep_ratio: float,
        *,
        resume_from: ScoreSnapshot | None = None,
        persist_snapshot: bool = True,
        num_replicas: int = 1,
    ) -> ScoreSnapshot:
        """Start ``epoch``, planned with ``keep_ratio``; return the snapshot to plan it from.

        The one call between two epochs. In this order:

        1. ``synchronize()``: every rank's pending score exchanges are pushed; with ``num_replicas > 1``
           (the sampler's data-parallel world) and ``torch.distributed`` initialised, the ranks then
           meet at a barrier, so every rank's mirror holds the same updates;
        2. ``epoch`` becomes the stamp of later updates that pass none (``current_epoch``);
        3. the snapshot is taken (``snapshot()``);
        4. if the epoch is pruned (``keep_ratio < 1``) and ``persist_snapshot``, the snapshot is
           persisted for exact resume (``save_snapshot``: a no-op on read-only stores and mirrors);
        5. ``keep_ratio`` is recorded in the history (``record_keep_ratio``), unless read-only.

        ``resume_from``: the persisted snapshot (``saved_snapshot()``) that a resumed run's
        interrupted epoch was planned from. It is returned as is, and steps 1, 3 and 4 are skipped:
        a fresh process has no pending exchanges, every rank reads the same snapshot from disk, and
        it is on disk already. ``persist_snapshot=False`` for plans that do not read scores.

        In a data-parallel run this is a collective: every rank calls it for the same epochs, in the
        same order (samplers do, when they plan an epoch). Trade-off: an O(N) copy per epoch, and for
        pruned epochs a rewrite of the persisted snapshot (12 bytes per example) by the writer thread.
        """
        if resume_from is None:
            self.synchronize()
            if num_replicas > 1:
                _barrier()
        self.set_epoch(epoch)
        snapshot = self.snapshot() if resume_from is None else resume_from
        if persist_snapshot and keep_ratio < 1.0 and resume_from is None:
            self.save_snapshot(snapshot)
        if not self.read_only:
            self.record_keep_ratio(epoch, keep_ratio)
        return snapshot

    def set_epoch(self, epoch: int) -> None:
        """Stamp ``epoch`` on later updates that pass none (``update(..., epoch=None)``).

        ``begin_epoch`` calls this; samplers also call it from their ``set_epoch``, so scores recorded
        in epoch ``e`` carry ``e`` even before its plan is made. Changes nothing on disk.
        """
        self._current_epoch = int(epoch)

    def record_keep_ratio(self, epoch: int, keep_ratio: float) -> None:
        """Append ``(epoch, keep_ratio)`` to the history attribute (replacing an entry for that epoch).

        ``begin_epoch`` calls this. Persisted with the next round of chunks, or by ``flush``/``close``.
        """
        self.check_writable()
        self._mirror.record_keep_ratio(epoch, keep_ratio)

    def add_sync_hook(self, hook: Callable[[], None]) -> None:
        """Register ``hook`` to run in ``synchronize`` (score exchanges push their pending all-gathers)."""
        self._sync_hooks.append(hook)

    def add_drain_hook(self, hook: Callable[[], None]) -> None:
        """Register ``hook``, which applies updates still on their way (a scorer's device-to-host score
        copies, ``sadp_data.scoring._transfer``), blocking if need be: ``drain`` runs it before the store is
        read (``scores``, ``seen``, ``last_epoch``, ``snapshot``), synchronised, flushed or closed.
        Local to this process, never a collective."""
        self._drain_hooks.append(hook)

    def remove_drain_hook(self, hook: Callable[[], None]) -> None:
        """Unregister a hook added with ``add_drain_hook``."""
        self._drain_hooks.remove(hook)

    def drain(self) -> None:
        """Apply every update still on its way (the drain hooks, in registration order)."""
        for hook in tuple(self._drain_hooks):
            hook()

    def synchronize(self) -> None:
        """Drain, then run the sync hooks in registration order (a data-parallel run's pending score exchanges).

        ``begin_epoch`` calls this at each epoch boundary, then, for ``num_replicas > 1``, meets the
        other ranks at a barrier. A collective when hooks are registered: every rank must call it at
        the same point.
        """
        self.drain()
        for hook in self._sync_hooks:
            hook()

    # -- writing -----------------------------------------------------------------------------

    def update(self, indices: Any, scores: Any, epoch: int | None = None) -> None:
        """Record new scores for ``indices`` (numpy arrays or tensors); returns without waiting for disk.

        Validates everything first and changes nothing on bad input: indices must be a 1-D
        integer array within ``[0, N)``; scores one finite, non-negative number per index.
        Repeated indices in one call: the last score wins and each occurrence counts as seen.
        Each score is stamped with ``epoch``, by default ``current_epoch`` (the latest
        ``begin_epoch``/``set_epoch``).
        """
        self.check_writable()
        index = as_index_array(indices)
        values = as_score_array(scores, index.shape[0])
        stamp = as_epoch_stamp(epoch, self._current_epoch)
        if self._mirror.apply(index, values, stamp) >= 0:
            raise_bad_entries(index, values, self.num_examples)

    def save_snapshot(self, snapshot: ScoreSnapshot) -> None:
        """Persist ``snapshot`` (the one an epoch's plan was made from) for exact resume; returns at once.

        ``begin_epoch`` calls this for pruned epochs. The writer thread writes it with its next
        round; ``flush`` waits for it. A later snapshot replaces one not yet written. No-op for
        read-only and mirror stores, and for a snapshot of the version this process saved last
        (versions only grow while a store is open, so the same version is the same content; a new
        process always saves its first snapshot).
        """
        self._mirror.check_error()
        if self.persist:
            self._mirror.submit_snapshot(snapshot)

    def saved_snapshot(self, resuming: int | None = None) -> ScoreSnapshot | None:
        """The last snapshot saved with ``save_snapshot`` (pending or on disk), or ``None``.

        ``resuming`` (the version a checkpoint's epoch was planned from) changes nothing here: one
        sidecar holds one snapshot, so there are no regions of different ages to compare.
        """
        pending = self._mirror.pending_snapshot()
        return pending if pending is not None else read_snapshot(self.path, self._group)

    def flush(self) -> None:
        """Block until every update made so far (``drain``: scores still on their way too) is on disk; raise
        the writer's error if it failed."""
        self.drain()
        self._mirror.flush()

    def close(self) -> None:
        """Drain and flush, stop the writer thread, and release the sidecar. Idempotent."""
        try:
            if not self._mirror.closed:
                self.drain()
        finally:
            self._mirror.close()

    def __enter__(self) -> ScoreStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        scored = int(np.count_nonzero(self._mirror.seen))
        return (
            f"ScoreStore({str(self.path)!r}, num_examples={self.num_examples}, scored={scored}, "
            f"version={self.version}{', read-only' if self.read_only else ''})"
        )

    def check_writable(self) -> None:
        """Raise unless updates can be taken: the writer thread's error, read-only or closed."""
        self._mirror.check_error()
        if self.read_only:
            raise PermissionError(f"{self.path} was opened read-only (mode='r')")
        if self._mirror.closed:
            raise RuntimeError(f"{self.path} is closed")


def _barrier() -> None:
    """``torch.distributed.barrier()`` when a process group is initialised (single-process runs skip it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
