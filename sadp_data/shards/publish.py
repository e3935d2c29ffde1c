"""Publish scored shards to object storage: built locally, uploaded, ``index.json`` last.

``sadp-data convert SRC s3://bucket/prefix`` (``publish_shards``, the remote twin of
``shard_writer.write_shards``) builds the shards in a local temporary folder exactly as for a local
``out`` (byte-identical shards, the same fingerprint), uploads the shards, ``offsets.npy`` and the
``wids`` list, records each shard's ETag as the store reports it after the upload, and uploads
``index.json`` last. A reader that finds an ``index.json`` therefore finds every object it names,
and the ETags it records make a reader refuse a shard replaced later (``ShardIndex.check_shards``).

With ``overwrite``, the old ``index.json`` is deleted first (readers see no dataset, never a mixed
one), and shards of the old index that the new one does not name are deleted after the new index
is up. The score sidecar is not uploaded: scores of a remote dataset live on local disk
(``ShardIndex.sidecar_path``), written by the training process (rank 0 under DDP).

Trade-off: the whole dataset is staged on local disk before the upload starts (the temporary
folder needs as much free space as the shards).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ..remote import Location
from . import INDEX, OFFSETS, ShardError, ShardIndex
from .writer import build_shards


def publish_shards(
    source,
    out: str,
    *,
    shard_size: int = 10_000,
    name: str = "train",
    progress: bool = True,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    workers: int = 1,
) -> ShardIndex:
    """Convert ``source`` into scored shards at the URL ``out`` (see the module docstring); returns the index.

    ``workers > 1`` builds the shards in that many processes (``sadp_data.shards.parallel_convert``; the same bytes).
    """
    from tqdm.auto import tqdm

    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    location = Location(out, storage_options)
    if not location.remote:
        raise ValueError(f"{out} is a local path: write it with sadp_data.shards.writer.write_shards")
    old_shards: list[str] = []
    if location.exists(INDEX):
        if not overwrite:
            raise FileExistsError(
                f"{location.join(INDEX)} exists; choose a new prefix or pass --overwrite (scores are never "
                "overwritten silently)"
            )
        try:
            old_shards = [entry["url"] for entry in json.loads(location.read_bytes(INDEX))["shards"]]
        except (ValueError, KeyError, TypeError) as error:
            raise ShardError(f"{location.join(INDEX)}: unreadable ({error!r}); delete it to convert again") from error
        location.remove(INDEX)
    if len(source) == 0:
        raise ValueError(f"{source.name}: the source has no examples")
    with tempfile.TemporaryDirectory(prefix="sadp-publish-") as scratch:
        folder = Path(scratch) / "shards"
        meta, offsets = build_shards(source, folder, shard_size, name, progress, workers)
        for entry in tqdm(meta["shards"], desc=f"upload to {out}", unit="shard", disable=not progress):
            location.upload(folder / entry["url"], entry["url"])
            info = location.info(entry["url"])
            if info.size != entry["bytes"]:
                where = location.join(entry["url"])
                raise ShardError(f"{where}: uploaded {entry['bytes']} bytes but the store has {info.size}")
            if info.etag:
                entry["etag"] = info.etag
        for extra in (OFFSETS, f"{name}.wids.json"):
            location.upload(folder / extra, extra)
        (folder / INDEX).write_text(json.dumps(meta, indent=1) + "\n")
        location.upload(folder / INDEX, INDEX)
    for stale in sorted(set(old_shards) - {entry["url"] for entry in meta["shards"]}):
        location.remove(stale)
    return ShardIndex(location.url, meta, offsets, location)
