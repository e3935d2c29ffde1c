"""Writing scored shards: ``write_shards`` converts a ``sources.Source`` into a local scored-shards folder.

The layout it writes is described in ``sadp_data.shards`` (which reads it); ``build_shards`` does the
work into a new folder and is shared with ``sadp_data.shards.publish`` (the same shards, uploaded).
Conversions are deterministic: the same source always gives byte-identical shards, serially
(``workers=1``: one webdataset ``ShardWriter``) or with ``workers=P`` processes each writing whole shards
(``sadp_data.shards.parallel_convert``), whose output is byte for byte the serial one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._folder_lock import folder_lock, sidecar_released
from .._staging import staged
from ..remote import is_remote
from ..store import ScoreStore
from . import FORMAT, INDEX, OFFSETS, SIDECAR, ShardError, ShardIndex
from .parallel_convert import (
    MAX_SHARD_BYTES,
    ShardRecord,
    check_workers,
    encode_fields,
    naming_example,
    shard_record,
    write_shards_parallel,
)

#: An engine that writes every shard of a source into a folder: ``(source, folder, shard_size, name,
#: progress) -> [ShardRecord, ...]`` in shard order, shard ``k`` holding examples ``[k·S, (k+1)·S)``.
ShardsWriter = Callable[[Any, Path, int, str, bool], list[ShardRecord]]


def write_shards(
    source,
    out: str | Path,
    shard_size: int = 10_000,
    name: str = "train",
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    writer: ShardsWriter | None = None,
) -> ShardIndex:
    """Convert ``source`` (a ``sources.Source``) into scored shards in ``out``; returns the index.

    Atomic (``sadp_data._staging``): the shards, index and a fresh sidecar are built in a hidden folder
    beside ``out`` and swapped in at the end, so a failure or kill leaves an existing ``out`` whole,
    and ``overwrite=True`` replaces all of it (no stale shards of an earlier conversion remain).
    For a remote ``out`` (``s3://bucket/prefix``) use ``sadp_data.shards.publish.publish_shards``.

    ``workers=P`` converts with ``P`` processes (at most one per shard; ``sadp_data.shards.parallel_convert``):
    the same bytes as ``workers=1``; errors name the example and the source. ``writer`` replaces the
    engine that writes the shards (``writer(source, folder, shard_size, name, progress)`` returns their
    ``ShardRecord``s in shard order; e.g. Ray tasks, ``sadp_data.adapters.ray``); the index, the
    staging and the checks stay these.
    """
    check_workers(workers)
    check_name(name)
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if is_remote(out):
        raise ValueError(
            f"{out} is remote: write it with sadp_data.shards.publish.publish_shards (or sadp-data convert)"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    count = len(source)
    if count == 0:
        raise ValueError(f"{source.name}: the source has no examples")
    with folder_lock(out, "convert"):
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{out} is not empty; choose a new folder or pass --overwrite (scores are never overwritten silently)"
            )
        with sidecar_released(out / SIDECAR), staged([out]) as stage:
            meta, offsets = build_shards(source, stage / out.name, shard_size, name, progress, workers, writer)
    return ShardIndex(out, meta, offsets)


def check_name(name: object) -> str:
    """``name`` as a plain file-name stem (shards are ``{name}-000000.tar`` inside OUT); ``ValueError`` naming
    ``--name`` for anything else (empty, a path separator, ``..``), so no output can leave OUT."""
    separators = {"/", "\\", os.sep, os.altsep or "/", "\0"}
    if not isinstance(name, str) or not name or name == ".." or any(char in separators for char in name):
        raise ValueError(
            f"--name must be a plain file-name stem (no path separator or '..', not empty), got {name!r}: "
            "the shards are written inside OUT"
        )
    return name


def build_shards(
    source, out: Path, shard_size: int, name: str, progress: bool, workers: int = 1, writer: ShardsWriter | None = None
) -> tuple[dict, np.ndarray]:
    """Write the shards, the index files and an empty sidecar of ``source`` into the new folder ``out``.

    ``workers > 1`` with more than one shard writes the shards in that many processes; otherwise one
    ``ShardWriter`` writes them in order. Both give the same bytes (``sadp_data.shards.parallel_convert``).
    """
    check_name(name)
    out.mkdir()
    count = len(source)
    if writer is not None:
        records = writer(source, out, shard_size, name, progress)
    elif check_workers(workers) > 1 and count > shard_size:
        records = write_shards_parallel(source, out, shard_size, name, progress, workers)
    else:
        records = _write_serially(source, out, shard_size, name, progress)
    return finish_shards(out, records, count, source.name, shard_size, name, progress)


def finish_shards(
    out: Path,
    records: list[ShardRecord],
    count: int,
    source_name: str,
    shard_size: int,
    name: str,
    progress: bool = False,
) -> tuple[dict, np.ndarray]:
    """Merge the shards' ``records`` (in shard order) into ``index.json``, ``offsets.npy``, the ``wids``
    list and an empty sidecar in ``out``, whichever engine wrote the shards (serial, processes, Ray).

    ``progress`` shows a bar over the four files (the sidecar takes longest for large datasets)."""
    from tqdm.auto import tqdm

    with tqdm(total=4, desc=f"index {name}", unit="file", disable=not progress) as bar:
        meta, offsets = _write_index(out, records, count, source_name, shard_size, name, bar.update)
        ScoreStore.create(out / SIDECAR, count, fingerprint=meta["fingerprint"]).close()
        bar.update()
    return meta, offsets


def _write_index(
    out: Path,
    records: list[ShardRecord],
    count: int,
    source_name: str,
    shard_size: int,
    name: str,
    written: Callable[[], object],
) -> tuple[dict, np.ndarray]:
    """``index.json``, ``offsets.npy`` and the ``wids`` list of ``records``; ``written()`` after each file."""
    fields = set().union(*(record.fields for record in records))
    offsets = np.zeros((count, 4), dtype=np.int64)
    shards, digests = [], []
    first = 0
    for record in records:
        offsets[record.indices] = record.rows
        digests.append(record.sha256)
        shards.append(
            {
                "url": record.url,
                "nsamples": len(record.indices),
                "first_index": first,
                "bytes": record.size,
                "sha256": record.sha256,
            }
        )
        first += len(record.indices)
    if first != count:
        raise ShardError(f"{out}: wrote {first} samples for {count} examples")
    fingerprint = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    meta = {
        "format": FORMAT,
        "version": 2,
        "name": name,
        "num_examples": count,
        "fingerprint": fingerprint,
        "source": source_name,
        "shard_size": shard_size,
        "fields": sorted(fields),
        "shards": shards,
    }
    (out / INDEX).write_text(json.dumps(meta, indent=1) + "\n")
    written()
    np.save(out / OFFSETS, offsets)
    written()
    wids = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": [{"url": s["url"], "nsamples": s["nsamples"]} for s in shards],
    }
    (out / f"{name}.wids.json").write_text(json.dumps(wids, indent=1) + "\n")
    written()
    return meta, offsets


def _write_serially(source, out: Path, shard_size: int, name: str, progress: bool) -> list[ShardRecord]:
    """One ``ShardWriter`` over every example in order; the shards' records read back afterwards."""
    import webdataset as wds
    from tqdm.auto import tqdm

    fields: set[str] = set()
    pattern = str(out / f"{name}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, maxsize=MAX_SHARD_BYTES, verbose=0, mtime=0) as writer:
        for index in tqdm(range(len(source)), desc=f"convert {name}", unit="ex", disable=not progress):
            with naming_example(source, index, index // shard_size):
                sample = encode_fields(index, source[index])
                writer.write(sample)
            fields.update(key for key in sample if not key.startswith("__"))
    paths = sorted(out.glob(f"{name}-*.tar"))  # read back: sample offsets, crc32c and SHA-256 of what is on disk
    check = tqdm(paths, desc=f"check {name} shards", unit="shard", disable=not progress)
    return [shard_record(path, shard, frozenset(fields)) for shard, path in enumerate(check)]
