"""Per-example score store: an in-memory mirror persisted to a Zarr v3 sidecar by a writer thread.

Layout of the sidecar (a Zarr v3 group, one directory):

* ``score``  float32[N]: the latest importance score of each example (0 until scored);
* ``seen``   uint32[N]: how many times each example has been scored;
* ``epoch``  int32[N]: the epoch of the latest score (-1: never scored);
* attributes: ``num_examples``, ``fingerprint``, ``format_version``, ``version`` (number of
  update batches applied when the arrays were last persisted) and ``keep_ratio_history``.

Design and trade-offs:

* ``update`` writes into the in-memory mirror (O(batch), under a lock held for microseconds) and
  marks the touched chunks dirty. It never waits for disk. The writer thread persists dirty chunks,
  copying each chunk under the lock so a chunk on disk always holds values that were really in
  memory together. Pending work is a set of chunk ids, so memory is bounded by the number of
  chunks however fast updates arrive: the backpressure is structural, and training never blocks.
* Zarr's local store writes every chunk and metadata file through a temporary file and an atomic
  rename, so a process killed at any instant leaves a sidecar that opens cleanly: each chunk file is
  either its previous or its new version. Nothing flushed is lost; of later updates, those not yet
  persisted are (at most ``flush_interval`` seconds' worth). The three arrays are separate files, so
  after a kill a chunk of ``seen`` may be one round ahead of the same chunk of ``score``.
* Errors in the writer thread are kept and raised in the caller on its next call to ``update``,
  ``flush`` or ``close``, so a full or read-only disk never fails silently.
* Open stores are flushed and closed at interpreter exit.
* Data-parallel runs: rank 0 opens the sidecar for writing; the other ranks open it with
  ``mode="mirror"`` — an in-memory mirror that takes updates (the all-gathered scores) but never
  writes, so exactly one process persists (``sadp_data.distributed.open_store`` picks the mode).
* Resume: samplers save the score snapshot an epoch's plan was made from (``save_snapshot``,
  arrays ``snapshot_score``/``snapshot_seen``, written by the writer thread; its version attribute
  is cleared before and set after the arrays, so a kill never leaves a half-written snapshot that
  claims to be whole). A run resumed mid-epoch rebuilds the identical plan from it. Cost: one more
  copy of scores and seen counts on disk (8 bytes per example), rewritten once per pruned epoch.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from .store_update import apply_update, bad_indices, bad_scores

#: 2: every array is checksummed (crc32c per chunk) and every chunk is written at creation.
FORMAT_VERSION = 2
DEFAULT_CHUNK_SIZE = 1 << 18

_OPEN_STORES: weakref.WeakSet[ScoreStore] = weakref.WeakSet()


class ScoreStoreError(RuntimeError):
    """The sidecar is missing, malformed, or does not belong to this dataset."""


@dataclass(frozen=True)
class ScoreSnapshot:
    """An immutable copy of the scores at one instant, tagged with the store's update version."""

    scores: np.ndarray
    seen: np.ndarray
    version: int
    #: int32[N] epoch of each example's latest score (-1: never); ``None`` in snapshots persisted by
    #: versions before it was recorded.
    last_epoch: np.ndarray | None = None

    @property
    def num_examples(self) -> int:
        return int(self.scores.shape[0])


def _as_index_array(indices: Any) -> np.ndarray:
    """``indices`` as a 1-D int64 array (values are checked by the update kernel)."""
    array = indices.detach().cpu().numpy() if hasattr(indices, "detach") else np.asarray(indices)
    if array.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"indices must be an integer array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)


def _as_score_array(scores: Any, length: int) -> np.ndarray:
    """``scores`` as a 1-D float32 array of ``length`` (values are checked by the update kernel)."""
    array = scores.detach().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"scores must be 1-D with one value per index ({length}), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"scores must be numeric, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _raise_bad_entries(index: np.ndarray, values: np.ndarray, num_examples: int) -> None:
    """The error for a batch the update kernel refused, naming up to five bad positions and values."""
    bad = np.flatnonzero(bad_indices(index, num_examples))
    if bad.size:
        shown = ", ".join(f"position {p}: {int(index[p])}" for p in bad[:5])
        raise IndexError(
            f"{bad.size} indices out of range [0, {num_examples}) ({shown}{', ...' if bad.size > 5 else ''})"
        )
    bad = np.flatnonzero(bad_scores(values))
    shown = ", ".join(f"position {p}: {values[p]}" for p in bad[:5])
    raise ValueError(f"{bad.size} scores are NaN, infinite or negative ({shown}{', ...' if bad.size > 5 else ''})")


class ScoreStore:
    """Scores of N examples, in memory for the trainer and on disk as a Zarr sidecar.

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
        self._arrays = {name: _keep_every_chunk(group[name]) for name in ("score", "seen", "epoch")}
        attrs = dict(group.attrs)
        self.num_examples = int(attrs["num_examples"])
        self.fingerprint: str | None = attrs.get("fingerprint")
        self._keep_ratio_history: list[list[float]] = list(attrs.get("keep_ratio_history", []))
        self._chunk = int(self._arrays["score"].chunks[0])
        checked = int(attrs.get("format_version", 0)) >= 2
        self._scores = _read_checked(path, self._arrays["score"], np.float32, checked)
        self._seen = _read_checked(path, self._arrays["seen"], np.uint32, checked)
        self._epochs = _read_checked(path, self._arrays["epoch"], np.int32, checked)
        bad = np.flatnonzero(~(np.isfinite(self._scores) & (self._scores >= 0)))
        if bad.size:
            raise ScoreStoreError(
                f"{path}: score of example {int(bad[0])} is {self._scores[bad[0]]} ({bad.size} bad in all): the "
                "sidecar is damaged; recreate it (ScoreStore.create(..., overwrite=True)) or restore it from a copy"
            )
        self._version = int(attrs.get("version", 0))
        self._persisted_version = self._version
        self._current_epoch = -1
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._dirty = np.zeros(-(-self.num_examples // self._chunk), dtype=np.bool_)
        self._has_dirty = False
        self._attrs_dirty = False
        self._writing = False
        self._flush_requested = False
        self._stop = False
        self._error: BaseException | None = None
        self._closed = False
        self._writer: threading.Thread | None = None
        self._pending_snapshot: ScoreSnapshot | None = None
        self._saved_snapshot_version: int | None = None  # set by this process's last save_snapshot
        self._snapshot_arrays: dict[str, zarr.Array] = {}
        self._sync_hooks: list[Callable[[], None]] = []
        self._lock_fd: int | None = None
        if self.persist:
            self._lock_fd = _acquire_writer_lock(path)
            self._writer = threading.Thread(target=self._write_loop, name=f"sadp-store-writer:{path.name}", daemon=True)
            self._writer.start()
        _OPEN_STORES.add(self)
        _register_exit_flush()

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
    ) -> ScoreStore:
        """Create an empty sidecar for ``num_examples`` examples and open it for writing.

        Refuses to replace an existing sidecar unless ``overwrite=True`` (scores are costly to
        recompute). ``fingerprint`` identifies the dataset (see ``dataset_fingerprint``); opening
        with a different one later is refused. Atomic: the sidecar is written beside ``path`` and
        renamed into place, so a failure leaves ``path`` as it was (``sadp_data.staging``).
        """
        path = Path(path)
        if not isinstance(num_examples, (int, np.integer)) or isinstance(num_examples, bool) or num_examples <= 0:
            raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; open it with ScoreStore.open or pass overwrite=True")
        from .staging import staged

        with staged([path]) as stage:  # a failure (a full disk, say) leaves no half-made sidecar at path
            _write_empty(stage / path.name, int(num_examples), fingerprint, int(chunk_size))
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
        if not (path / "zarr.json").is_file():
            raise ScoreStoreError(f"{path} is not a score sidecar (no zarr.json); create one with ScoreStore.create")
        try:
            writable = mode == "r+"
            group = zarr.open_group(
                zarr.storage.LocalStore(path, read_only=not writable), mode="r+" if writable else "r"
            )
            attrs = dict(group.attrs)
            names = set(group.array_keys())
        except Exception as error:  # zarr raises JSONDecodeError, ValueError, KeyError, TypeError, ... on bad metadata
            raise ScoreStoreError(f"{path} is not a readable score sidecar: {error}") from error
        missing = {"score", "seen", "epoch"} - names
        if missing or "num_examples" not in attrs:
            raise ScoreStoreError(f"{path} is not a score sidecar: missing {sorted(missing) or ['num_examples']}")
        if attrs.get("format_version", 0) > FORMAT_VERSION:
            raise ScoreStoreError(
                f"{path} has format version {attrs['format_version']}; this sadp-data reads up to {FORMAT_VERSION}"
            )
        if num_examples is not None and int(attrs["num_examples"]) != num_examples:
            raise ScoreStoreError(
                f"{path} holds scores for {attrs['num_examples']} examples, but the dataset has {num_examples}"
            )
        if fingerprint is not None and attrs.get("fingerprint") != fingerprint:
            raise ScoreStoreError(
                f"{path} was created for dataset fingerprint {attrs.get('fingerprint')!r}, "
                f"not {fingerprint!r}: these scores belong to another dataset"
            )
        try:
            return cls(path, group, read_only=mode == "r", flush_interval=flush_interval, persist=mode == "r+")
        except ScoreStoreError:
            raise
        except Exception as error:  # zarr raises TypeError, ValueError, KeyError, ... on damaged array metadata
            raise ScoreStoreError(f"{path} is not a readable score sidecar: {error!r}") from error

    # -- reading -----------------------------------------------------------------------------

    def scores(self) -> np.ndarray:
        """Read-only view of the in-memory scores (float32[N]); changes as updates arrive."""
        return self._readonly_view(self._scores)

    def seen(self) -> np.ndarray:
        """Read-only view of how often each example was scored (uint32[N])."""
        return self._readonly_view(self._seen)

    def last_epoch(self) -> np.ndarray:
        """Read-only view of the epoch of each example's latest score (int32[N], -1: never)."""
        return self._readonly_view(self._epochs)

    @property
    def version(self) -> int:
        """Number of update batches applied so far (monotone; persisted with the arrays)."""
        return self._version

    @property
    def keep_ratio_history(self) -> list[tuple[int, float]]:
        """``(epoch, keep_ratio)`` pairs recorded by samplers, oldest first."""
        return [(int(e), float(k)) for e, k in self._keep_ratio_history]

    def snapshot(self) -> ScoreSnapshot:
        """A consistent copy of scores and seen counts, tagged with the current version."""
        with self._lock:
            return ScoreSnapshot(self._scores.copy(), self._seen.copy(), self._version, self._epochs.copy())

    @staticmethod
    def _readonly_view(array: np.ndarray) -> np.ndarray:
        view = array.view()
        view.flags.writeable = False
        return view

    # -- writing -----------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Epoch recorded with subsequent updates (samplers call this from ``set_epoch``)."""
        self._current_epoch = int(epoch)

    def record_keep_ratio(self, epoch: int, keep_ratio: float) -> None:
        """Append ``(epoch, keep_ratio)`` to the history attribute (replacing an entry for that epoch)."""
        self._check_writable()
        with self._lock:
            self._keep_ratio_history = [h for h in self._keep_ratio_history if int(h[0]) != epoch]
            self._keep_ratio_history.append([int(epoch), float(keep_ratio)])
            self._attrs_dirty = True  # persisted with the next round of chunks, or by flush/close

    def update(self, indices: Any, scores: Any, epoch: int | None = None) -> None:
        """Record new scores for ``indices`` (numpy arrays or tensors); returns without waiting for disk.

        Validates everything first and changes nothing on bad input: indices must be a 1-D
        integer array within ``[0, N)``; scores one finite, non-negative number per index.
        Repeated indices in one call: the last score wins and each occurrence counts as seen.
        """
        self._check_writable()
        index = _as_index_array(indices)
        values = _as_score_array(scores, index.shape[0])
        stamp = self._current_epoch if epoch is None else int(epoch)
        with self._lock:
            bad = apply_update(self._scores, self._seen, self._epochs, self._dirty, index, values, stamp, self._chunk)
            if bad < 0:
                self._version += 1
                if not self._has_dirty:  # wake the writer on the first change only, not on every update
                    self._has_dirty = True
                    self._wake.notify()
        if bad >= 0:
            _raise_bad_entries(index, values, self.num_examples)

    def save_snapshot(self, snapshot: ScoreSnapshot) -> None:
        """Persist ``snapshot`` (the one an epoch's plan was made from) for exact resume; returns at once.

        The writer thread writes it with its next round; ``flush`` waits for it. A later snapshot
        replaces one not yet written. No-op for read-only and mirror stores, and for a snapshot of
        the version this process saved last (versions only grow while a store is open, so the same
        version is the same content; a new process always saves its first snapshot).
        """
        self._check_error()
        if not self.persist:
            return
        with self._lock:
            if snapshot.version == self._saved_snapshot_version:
                return
            self._saved_snapshot_version = snapshot.version
            self._pending_snapshot = snapshot
            self._wake.notify()

    def saved_snapshot(self) -> ScoreSnapshot | None:
        """The last snapshot saved with ``save_snapshot`` (pending or on disk), or ``None``."""
        with self._lock:
            if self._pending_snapshot is not None:
                return self._pending_snapshot
        version = dict(self._group.attrs).get("snapshot_version")
        names = set(self._group.array_keys())
        if version is None or not {"snapshot_score", "snapshot_seen"} <= names:
            return None
        checked = int(dict(self._group.attrs).get("format_version", 0)) >= 2
        scores = _read_checked(self.path, self._group["snapshot_score"], np.float32, checked)
        seen = _read_checked(self.path, self._group["snapshot_seen"], np.uint32, checked)
        last_epoch = (
            _read_checked(self.path, self._group["snapshot_epoch"], np.int32, checked)
            if "snapshot_epoch" in names
            else None
        )
        return ScoreSnapshot(scores, seen, int(version), last_epoch)

    def add_sync_hook(self, hook: Callable[[], None]) -> None:
        """Register ``hook`` to run in ``synchronize`` (scorers push their pending all-gathers)."""
        self._sync_hooks.append(hook)

    def synchronize(self) -> None:
        """Run the sync hooks. Samplers call this on every rank at each epoch boundary of a
        data-parallel run, before taking the snapshot, so every rank's mirror holds the same scores."""
        for hook in self._sync_hooks:
            hook()

    def flush(self) -> None:
        """Block until every update made so far is on disk; raise the writer's error if it failed."""
        self._check_error()
        if not self.persist or self._closed:
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
        self._check_error()

    def close(self) -> None:
        """Flush, stop the writer thread, and release the sidecar. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            with self._lock:
                self._stop = True
                self._wake.notify()
            if self._writer is not None:
                self._writer.join()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the writer lock
                self._lock_fd = None
            _OPEN_STORES.discard(self)

    def __enter__(self) -> ScoreStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        scored = int(np.count_nonzero(self._seen))
        return (
            f"ScoreStore({str(self.path)!r}, num_examples={self.num_examples}, scored={scored}, "
            f"version={self._version}{', read-only' if self.read_only else ''})"
        )

    def _check_writable(self) -> None:
        self._check_error()
        if self.read_only:
            raise PermissionError(f"{self.path} was opened read-only (mode='r')")
        if self._closed:
            raise RuntimeError(f"{self.path} is closed")

    def _check_error(self) -> None:
        if self._error is not None:
            raise ScoreStoreError(f"writing scores to {self.path} failed: {self._error!r}") from self._error

    def _write_loop(self) -> None:
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
                if snapshot is not None:
                    self._write_snapshot(snapshot)
                for chunk in chunks:
                    start = chunk * self._chunk
                    stop = min(start + self._chunk, self.num_examples)
                    with self._lock:
                        parts = {
                            "score": self._scores[start:stop].copy(),
                            "seen": self._seen[start:stop].copy(),
                            "epoch": self._epochs[start:stop].copy(),
                        }
                    for name, values in parts.items():
                        self._arrays[name][start:stop] = values
                with self._lock:
                    history = [list(h) for h in self._keep_ratio_history]
                self._group.attrs.update({"version": version, "keep_ratio_history": history})
            except BaseException as error:  # surfaced in the caller's thread by _check_error
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
                    self._wake.wait_for(lambda: self._flush_requested or self._stop, timeout=self.flush_interval)

    def _write_snapshot(self, snapshot: ScoreSnapshot) -> None:
        """Writer thread: invalidate, write the arrays, then stamp the version (kill-safe order)."""
        self._group.attrs.update({"snapshot_version": None})
        pairs = [("snapshot_score", snapshot.scores), ("snapshot_seen", snapshot.seen)]
        if snapshot.last_epoch is not None:
            pairs.append(("snapshot_epoch", snapshot.last_epoch))
        if len(self._snapshot_arrays) < len(pairs):  # looked up (or created) once: zarr's listing costs ms
            present = set(self._group.array_keys())
            for name, values in pairs:
                self._snapshot_arrays[name] = _keep_every_chunk(
                    self._group[name]
                    if name in present
                    else self._group.create_array(
                        name, shape=values.shape, chunks=(self._chunk,), dtype=values.dtype, compressors=_checksum()
                    )
                )
        for name, values in pairs:
            self._snapshot_arrays[name][:] = values
        self._group.attrs.update({"snapshot_version": snapshot.version})


def _write_empty(path: Path, num_examples: int, fingerprint: str | None, chunk_size: int) -> None:
    """Write a new, empty format-2 sidecar at ``path`` (every chunk on disk, checksummed)."""
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="w")
    chunks = (min(chunk_size, num_examples),)
    for name, dtype, fill in (("score", "float32", 0.0), ("seen", "uint32", 0), ("epoch", "int32", -1)):
        array = _keep_every_chunk(
            group.create_array(
                name, shape=(num_examples,), chunks=chunks, dtype=dtype, fill_value=fill, compressors=_checksum()
            )
        )
        array[:] = np.full(num_examples, fill, dtype=dtype)  # every chunk on disk: a missing one is damage
    group.attrs.update(
        {
            "num_examples": num_examples,
            "fingerprint": fingerprint,
            "format_version": FORMAT_VERSION,
            "version": 0,
            "keep_ratio_history": [],
        }
    )


def _checksum() -> list[Any]:
    """The bytes-to-bytes codecs of every sidecar array: a crc32c checksum per chunk."""
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]


def _keep_every_chunk(array: zarr.Array) -> zarr.Array:
    """The same array, writing chunks equal to the fill value too (zarr skips, even deletes, them by
    default): with every chunk on disk, a missing chunk file is detectable damage."""
    return array.with_config({"write_empty_chunks": True})


def _read_checked(path: Path, array: zarr.Array, dtype: Any, checked: bool) -> np.ndarray:
    """All of ``array`` as ``dtype``; for checksummed sidecars, refuse a missing or corrupt chunk by name.

    Every chunk of a format-2 sidecar is written at creation, so a missing chunk file is damage (zarr
    would silently read its fill value); a chunk whose crc32c does not match is damage too.
    """
    if not checked:
        return np.asarray(array[:], dtype=dtype)
    chunk = int(array.chunks[0])
    count = -(-int(array.shape[0]) // chunk)
    folder = path / array.path / "c"
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    missing = [i for i in range(count) if str(i) not in present]
    if missing:
        raise ScoreStoreError(
            f"{folder / str(missing[0])}: chunk file missing ({len(missing)} of {count} chunks of {array.path!r} "
            "missing): the sidecar is damaged; recreate it or restore it from a copy"
        )
    try:
        return np.asarray(array[:], dtype=dtype)
    except ValueError as error:
        if "checksum" not in str(error):
            raise
    for i in range(count):
        try:
            array[i * chunk : (i + 1) * chunk]
        except ValueError as error:
            raise ScoreStoreError(
                f"{folder / str(i)}: {error} (chunk {i} of {array.path!r} is corrupt): the sidecar is damaged; "
                "recreate it or restore it from a copy"
            ) from error
    raise ScoreStoreError(f"{path}: a checksum of {array.path!r} did not match")


def check_store_belongs(store: ScoreStore | None, fingerprint: str | None, data: str) -> None:
    """Raise ``ScoreStoreError`` when ``store`` was created for another dataset than ``data``.

    Compares the store's fingerprint with the data's; a store or data without a fingerprint cannot be
    checked and passes (the example count is compared separately by every caller).
    """
    if store is None or store.fingerprint is None or fingerprint is None or store.fingerprint == fingerprint:
        return
    raise ScoreStoreError(
        f"the sampler's score store {store.path} was created for dataset fingerprint {store.fingerprint!r}, "
        f"but {data} has fingerprint {fingerprint!r}: these scores belong to another dataset"
    )


def dataset_fingerprint(dataset: Any, probes: int = 8) -> str:
    """A short hash identifying a map-style dataset: its length and a few evenly spaced samples.

    Cheap (reads ``probes`` samples), deterministic, and sensitive to reordering or replacing the
    data; it does not prove two datasets equal. Pass it to ``ScoreStore.create``/``open``.
    """
    import hashlib
    import pickle

    length = len(dataset)
    digest = hashlib.sha256(str(length).encode())
    positions = sorted({int(p) for p in np.linspace(0, length - 1, num=min(probes, length))}) if length else []
    for position in positions:
        sample = dataset[position]
        digest.update(pickle.dumps(_to_plain(sample), protocol=4))
    return digest.hexdigest()[:16]


def _to_plain(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy().tobytes()
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


_EXIT_FLUSH_REGISTERED = False


def _register_exit_flush() -> None:
    """Flush open stores when the interpreter exits, while zarr can still do I/O.

    zarr writes through a ``concurrent.futures`` thread pool, which refuses new work once the
    interpreter starts shutting down — before ordinary ``atexit`` handlers run. The threading
    module's own exit hooks run before that pool shuts down (last registered, first run), so the
    final flush is registered there, with plain ``atexit`` as the fallback.
    """
    global _EXIT_FLUSH_REGISTERED
    if _EXIT_FLUSH_REGISTERED:
        return
    register = getattr(threading, "_register_atexit", atexit.register)
    register(_close_open_stores)
    _EXIT_FLUSH_REGISTERED = True


def _refuse_other_ranks(path: Path) -> None:
    """In an initialised process group, ranks > 0 must not write the sidecar: rank 0 does."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
        raise ScoreStoreError(
            f"{path}: rank {dist.get_rank()} opened the sidecar for writing, but rank 0 writes it; use "
            "sadp_data.distributed.open_store(path) on every rank (rank 0 writes, the others mirror), or "
            "ScoreStore.open(path, mode='mirror')"
        )


def _acquire_writer_lock(path: Path) -> int:
    """Take the sidecar's exclusive writer lock (``flock`` on its folder) or raise ``ScoreStoreError``.

    The OS releases the lock when the holder closes the store or dies (SIGKILL included), so a crashed
    run never blocks the next one. Two writers of one sidecar, in one process or two, would silently
    lose each other's updates; this makes the second one fail instead. The lock is on the folder
    itself (its inode never changes, and zarr sees no extra file); ``flock`` is advisory and local:
    on network filesystems that do not support it the lock does nothing.
    """
    _refuse_other_ranks(path)
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


def _forget_stores_in_child() -> None:
    """A forked child (e.g. a DataLoader worker) holds copies of open stores but not their writer
    threads: its copies must never try to flush (that would wait for a thread that does not exist).
    The parent process keeps owning and persisting the store."""
    for store in list(_OPEN_STORES):
        store._closed = True
    _OPEN_STORES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_stores_in_child)


def _close_open_stores() -> None:
    for store in list(_OPEN_STORES):
        try:
            store.close()
        except Exception as error:
            print(f"sadp-data: could not save scores to {store.path} at exit: {error}", file=sys.stderr)
