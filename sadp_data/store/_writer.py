"""The in-memory mirror of a score sidecar and the background thread that persists it.

Design and trade-offs:

* ``MirrorWriter.apply`` writes into the mirror (O(batch), under a lock held for microseconds) and
  marks the touched chunks dirty. It never waits for disk. The writer thread persists dirty chunks,
  copying each chunk under the lock so a chunk on disk always holds values that were really in
  memory together. Pending work is a set of chunk ids, so memory is bounded by the number of chunks
  however fast updates arrive: the backpressure is structural, and training never blocks.
* Zarr's local store writes every chunk and metadata file through a temporary file and an atomic
  rename, so a process killed at any instant leaves a sidecar that opens cleanly: each chunk file is
  either its previous or its new version. Nothing flushed is lost; of later updates, those not yet
  persisted are (at most ``flush_interval`` seconds' worth). The three arrays are separate files, so
  after a kill a chunk of ``seen`` may be one round ahead of the same chunk of ``score``.
* Errors in the writer thread are kept and raised in the caller's thread by ``check_error``, so a
  full or read-only disk never fails silently.
* One writer per sidecar: a persisting mirror holds an exclusive ``flock`` on the sidecar's folder.
* Open mirrors are flushed and closed at interpreter exit; a forked child (a DataLoader worker)
  treats its copies as closed, since it has none of their writer threads.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from ._format import ScoreStoreError
from ._snapshot import ScoreSnapshot, with_keep_ratio, write_snapshot
from ._update import apply_update


class MirrorWriter:
    """The ``score``/``seen``/``epoch`` arrays in memory, their update version, keep-ratio history and
    pending snapshot, persisted to ``arrays`` by a background thread when ``persist`` is true.

    Without ``persist`` (read-only stores and the mirrors of ranks > 0) there is no thread and no
    writer lock: updates stay in memory.
    """

    def __init__(
        self,
        path: Path,
        group: zarr.Group,
        arrays: dict[str, zarr.Array],
        values: dict[str, np.ndarray],
        *,
        version: int,
        history: list[list[float]],
        flush_interval: float,
        persist: bool,
    ) -> None:
        self.path = path
        self.persist = persist
        self.closed = False
        #: Runs before the exit flush: the owning store's ``drain`` (updates still on their way), held weakly.
        self.before_exit_flush: weakref.WeakMethod[Callable[[], None]] | None = None
        #: The sidecar's zarr arrays, by name; looked up on every write round.
        self.arrays = arrays
        self.scores, self.seen, self.epochs = values["score"], values["seen"], values["epoch"]
        self._group = group
        self._chunk = int(arrays["score"].chunks[0])
        self._flush_interval = float(flush_interval)
        self._version = version
        self._persisted_version = version
        self._history = [list(entry) for entry in history]
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._dirty = np.zeros(-(-self.scores.shape[0] // self._chunk), dtype=np.bool_)
        self._has_dirty = False
        self._attrs_dirty = False
        self._writing = False
        self._flush_requested = False
        self._stop = False
        self._error: BaseException | None = None
        self._pending_snapshot: ScoreSnapshot | None = None
        self._saved_snapshot_version: int | None = None  # set by this process's last submit_snapshot
        self._snapshot_arrays: dict[str, zarr.Array] = {}
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        if persist:
            self._lock_fd = acquire_writer_lock(path, int(group.attrs.get("owner_rank", 0)))
            self._thread = threading.Thread(target=self._loop, name=f"sadp-store-writer:{path.name}", daemon=True)
            self._thread.start()
        _track(self)

    @property
    def version(self) -> int:
        """Number of update batches applied so far (monotone)."""
        return self._version

    def apply(self, index: np.ndarray, values: np.ndarray, stamp: int) -> int:
        """Apply one batch (int64 indices, float32 scores, equal lengths) atomically and mark its chunks dirty.

        Returns -1, or the position of the first bad entry, in which case nothing changed.
        """
        with self._lock:
            bad = apply_update(self.scores, self.seen, self.epochs, self._dirty, index, values, stamp, self._chunk)
            if bad < 0:
                self._version += 1
                if not self._has_dirty:  # wake the writer on the first change only, not on every update
                    self._has_dirty = True
                    self._wake.notify()
        return bad

    def snapshot(self) -> ScoreSnapshot:
        """A consistent copy of scores, seen counts and epochs, tagged with the current version."""
        with self._lock:
            return ScoreSnapshot(self.scores.copy(), self.seen.copy(), self._version, self.epochs.copy())

    def keep_ratio_history(self) -> list[list[float]]:
        """A copy of the ``[epoch, keep_ratio]`` history, oldest first."""
        with self._lock:
            return [list(entry) for entry in self._history]

    def record_keep_ratio(self, epoch: int, keep_ratio: float) -> None:
        """Record ``keep_ratio`` for ``epoch``; persisted with the next round of chunks, or by flush/close."""
        with self._lock:
            self._history = with_keep_ratio(self._history, epoch, keep_ratio)
            self._attrs_dirty = True

    def submit_snapshot(self, snapshot: ScoreSnapshot) -> None:
        """Queue ``snapshot`` for the next round, replacing one not yet written; skip the version saved last."""
        with self._lock:
            if snapshot.version == self._saved_snapshot_version:
                return
            self._saved_snapshot_version = snapshot.version
            self._pending_snapshot = snapshot
            self._wake.notify()

    def pending_snapshot(self) -> ScoreSnapshot | None:
        """The snapshot queued and not yet written, if any."""
        with self._lock:
            return self._pending_snapshot

    def write_snapshot(self, snapshot: ScoreSnapshot) -> None:
        """Writer thread: persist ``snapshot`` (see ``_snapshot.write_snapshot``)."""
        write_snapshot(self._group, self._snapshot_arrays, snapshot, self._chunk)

    def check_error(self) -> None:
        """Raise ``ScoreStoreError`` (naming the sidecar, chained to the cause) if the writer thread failed."""
        if self._error is not None:
            raise ScoreStoreError(f"writing scores to {self.path} failed: {self._error!r}") from self._error

    def flush(self) -> None:
        """Block until every update, history entry and snapshot so far is on disk; raise the writer's error."""
        self.check_error()
        if not self.persist or self.closed:
            return
        with self._lock:
            target = self._version
            self._flush_requested = True
            self._wake.notify()
            while self._error is None and (
                self._has_dirty
                or self._attrs_dirty
                or self._writing
                or self._pending_snapshot is not None
                or self._persisted_version < target
            ):
                self._wake.wait(timeout=0.1)
            self._flush_requested = False
        self.check_error()

    def close(self) -> None:
        """Flush, stop the thread and release the writer lock (even if the flush fails). Idempotent."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            with self._lock:
                self._stop = True
                self._wake.notify()
            if self._thread is not None:
                self._thread.join()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the writer lock
                self._lock_fd = None
            _OPEN.discard(self)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (
                    self._has_dirty
                    or self._stop
                    or self._pending_snapshot is not None
                    or (self._attrs_dirty and self._flush_requested)
                ):
                    self._wake.wait()
                if not (self._has_dirty or self._attrs_dirty or self._pending_snapshot is not None):
                    return
                snapshot, self._pending_snapshot = self._pending_snapshot, None
                chunks = np.flatnonzero(self._dirty).tolist()
                version = self._version  # every update up to here lands in this round
                self._dirty[:] = False
                self._has_dirty = False
                self._attrs_dirty = False
                self._writing = True
            try:
                self._write_round(snapshot, chunks, version)
                snapshot = None  # written: the thread must not hold a copy of the table while it waits
            except BaseException as error:  # surfaced in the caller's thread by check_error
                with self._lock:
                    self._error = error
                    self._writing = False
                    self._wake.notify_all()
                return
            with self._lock:
                self._writing = False
                self._persisted_version = max(self._persisted_version, version)
                self._wake.notify_all()
                wait = not (self._flush_requested or self._stop)
            if wait:
                with self._lock:
                    self._wake.wait_for(lambda: self._flush_requested or self._stop, timeout=self._flush_interval)

    def _write_round(self, snapshot: ScoreSnapshot | None, chunks: list[int], version: int) -> None:
        if snapshot is not None:
            self.write_snapshot(snapshot)
        count = self.scores.shape[0]
        for chunk in chunks:
            start = chunk * self._chunk
            stop = min(start + self._chunk, count)
            with self._lock:
                parts = {
                    "score": self.scores[start:stop].copy(),
                    "seen": self.seen[start:stop].copy(),
                    "epoch": self.epochs[start:stop].copy(),
                }
            for name, values in parts.items():
                self.arrays[name][start:stop] = values
        history = self.keep_ratio_history()
        self._group.attrs.update({"version": version, "keep_ratio_history": history})


def acquire_writer_lock(path: Path, owner: int = 0) -> int:
    """Take the sidecar's exclusive writer lock (``flock`` on its folder) or raise ``ScoreStoreError``.

    The OS releases the lock when the holder closes the store or dies (SIGKILL included), so a crashed
    run never blocks the next one. Two writers of one sidecar, in one process or two, would silently
    lose each other's updates; this makes the second one fail instead. The lock is on the folder
    itself (its inode never changes, and zarr sees no extra file); ``flock`` is advisory and local:
    on network filesystems that do not support it the lock does nothing. In a process group only rank
    ``owner`` may take it.
    """
    _refuse_other_ranks(path, owner)
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ScoreStoreError(
            f"{path} is already open for writing by another ScoreStore (this process or another); a second "
            "writer would lose updates. Open it read-only with ScoreStore.open(path, mode='r'), as an in-memory "
            "mirror with mode='mirror', or, in a data-parallel run, with sadp_data.distributed.open_store(path) "
            "on every rank"
        ) from None
    return fd


def _refuse_other_ranks(path: Path, owner: int) -> None:
    """In an initialised process group, only rank ``owner`` writes the sidecar (rank 0; ``-1``: any rank,
    for a ``PartitionedScoreStore`` region, one file per rank, where the writer lock alone keeps one writer)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if owner >= 0 and dist.is_available() and dist.is_initialized() and dist.get_rank() != owner:
        raise ScoreStoreError(
            f"{path}: rank {dist.get_rank()} opened the sidecar for writing, but rank {owner} writes it; use "
            "sadp_data.distributed.open_store(path) on every rank (rank 0 writes, the others mirror), or "
            "ScoreStore.open(path, mode='mirror')"
        )


_OPEN: weakref.WeakSet[MirrorWriter] = weakref.WeakSet()
_EXIT_FLUSH_REGISTERED = False


def _track(writer: MirrorWriter) -> None:
    """Remember an open mirror so it is flushed at exit, and flush open mirrors when the interpreter exits.

    zarr writes through a ``concurrent.futures`` thread pool, which refuses new work once the
    interpreter starts shutting down — before ordinary ``atexit`` handlers run. The threading
    module's own exit hooks run before that pool shuts down (last registered, first run), so the
    final flush is registered there, with plain ``atexit`` as the fallback.
    """
    global _EXIT_FLUSH_REGISTERED
    _OPEN.add(writer)
    if _EXIT_FLUSH_REGISTERED:
        return
    register = getattr(threading, "_register_atexit", atexit.register)
    register(_close_open)
    _EXIT_FLUSH_REGISTERED = True


def _close_open() -> None:
    for writer in list(_OPEN):
        try:
            drain = None if writer.before_exit_flush is None else writer.before_exit_flush()
            if drain is not None and not writer.closed:
                drain()
            writer.close()
        except Exception as error:
            print(f"sadp-data: could not save scores to {writer.path} at exit: {error}", file=sys.stderr)


def _forget_in_child() -> None:
    """A forked child (e.g. a DataLoader worker) holds copies of open mirrors but not their writer
    threads: its copies must never try to flush (that would wait for a thread that does not exist).
    The parent process keeps owning and persisting the store."""
    for writer in list(_OPEN):
        writer.closed = True
    _OPEN.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
