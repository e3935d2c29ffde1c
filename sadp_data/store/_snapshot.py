"""Score snapshots (what an epoch is planned from), their persistence for exact resume, keep-ratio history.

A snapshot is persisted as the arrays ``snapshot_score``/``snapshot_seen``/``snapshot_epoch`` of the
sidecar and the attribute ``snapshot_version``. The attribute is cleared before and set after the
arrays are written, so a kill at any instant never leaves a half-written snapshot that claims to be
whole. Cost: one more copy of scores, seen counts and epochs on disk (12 bytes per example),
rewritten once per pruned epoch.

The keep-ratio history is the ``keep_ratio_history`` attribute: ``[epoch, keep_ratio]`` pairs, oldest
first, one per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ._format import checksum, is_checked, keep_every_chunk, read_checked


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


def write_snapshot(group: zarr.Group, arrays: dict[str, zarr.Array], snapshot: ScoreSnapshot, chunk: int) -> None:
    """Persist ``snapshot`` in ``group``: invalidate, write the arrays, then stamp the version (kill-safe order).

    ``arrays`` caches the snapshot arrays between calls (filled on the first call, creating them if
    absent): zarr's listing of a group costs milliseconds. Runs on the writer thread.
    """
    group.attrs.update({"snapshot_version": None})
    pairs = [("snapshot_score", snapshot.scores), ("snapshot_seen", snapshot.seen)]
    if snapshot.last_epoch is not None:
        pairs.append(("snapshot_epoch", snapshot.last_epoch))
    if len(arrays) < len(pairs):
        present = set(group.array_keys())
        for name, values in pairs:
            arrays[name] = keep_every_chunk(
                group[name]
                if name in present
                else group.create_array(
                    name, shape=values.shape, chunks=(chunk,), dtype=values.dtype, compressors=checksum()
                )
            )
    for name, values in pairs:
        arrays[name][:] = values
    group.attrs.update({"snapshot_version": snapshot.version})


def read_snapshot(path: Path, group: zarr.Group) -> ScoreSnapshot | None:
    """The snapshot persisted in the sidecar at ``path``, or ``None`` if there is none or it is incomplete.

    Checks chunks like every other read (``ScoreStoreError`` on damage). Snapshots persisted before
    epochs were recorded come back with ``last_epoch=None``.
    """
    attrs = dict(group.attrs)
    version = attrs.get("snapshot_version")
    names = set(group.array_keys())
    if version is None or not {"snapshot_score", "snapshot_seen"} <= names:
        return None
    checked = is_checked(group)
    scores = read_checked(path, group["snapshot_score"], np.float32, checked)
    seen = read_checked(path, group["snapshot_seen"], np.uint32, checked)
    last_epoch = read_checked(path, group["snapshot_epoch"], np.int32, checked) if "snapshot_epoch" in names else None
    return ScoreSnapshot(scores, seen, int(version), last_epoch)


def with_keep_ratio(history: list[list[float]], epoch: int, keep_ratio: float) -> list[list[float]]:
    """``history`` with ``[epoch, keep_ratio]`` appended, replacing an entry for that epoch (a new list)."""
    kept = [list(entry) for entry in history if int(entry[0]) != epoch]
    return [*kept, [int(epoch), float(keep_ratio)]]
