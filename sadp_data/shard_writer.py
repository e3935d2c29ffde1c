"""Writing scored shards: ``write_shards`` converts a ``sources.Source`` into a local scored-shards folder.

The layout it writes is described in ``sadp_data.shards`` (which reads it); ``build_shards`` does the
work into a new folder and is shared with ``sadp_data.publish`` (the same shards, uploaded).
Conversions are deterministic: the same source always gives byte-identical shards.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from .remote import is_remote
from .shards import FORMAT, INDEX, OFFSETS, SIDECAR, ShardError, ShardIndex, sample_checksum
from .staging import staged
from .store import ScoreStore


def _encode_fields(index: int, fields: dict[str, Any]) -> dict[str, Any]:
    sample = {"__key__": f"{index:09d}", "index.cls": index}
    for name, value in fields.items():
        if "." not in name:
            raise ValueError(f"field {name!r} of example {index} needs an extension (e.g. {name}.npy) to be encoded")
        sample[name] = value
    return sample


def write_shards(
    source,
    out: str | Path,
    shard_size: int = 10_000,
    name: str = "train",
    progress: bool = True,
    overwrite: bool = False,
) -> ShardIndex:
    """Convert ``source`` (a ``sources.Source``) into scored shards in ``out``; returns the index.

    Atomic (``sadp_data.staging``): the shards, index and a fresh sidecar are built in a hidden folder
    beside ``out`` and swapped in at the end, so a failure or kill leaves an existing ``out`` whole,
    and ``overwrite=True`` replaces all of it (no stale shards of an earlier conversion remain).
    For a remote ``out`` (``s3://bucket/prefix``) use ``sadp_data.publish.publish_shards``.
    """
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if is_remote(out):
        raise ValueError(f"{out} is remote: write it with sadp_data.publish.publish_shards (or sadp-data convert)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} is not empty; choose a new folder or pass --overwrite (scores are never overwritten silently)"
        )
    count = len(source)
    if count == 0:
        raise ValueError(f"{source.name}: the source has no examples")
    with staged([out]) as stage:
        meta, offsets = build_shards(source, stage / out.name, shard_size, name, progress)
    return ShardIndex(out, meta, offsets)


def build_shards(source, out: Path, shard_size: int, name: str, progress: bool) -> tuple[dict, np.ndarray]:
    """Write the shards, the index files and an empty sidecar of ``source`` into the new folder ``out``."""
    import webdataset as wds
    from tqdm.auto import tqdm

    out.mkdir()
    count = len(source)
    fields: set[str] = set()
    with wds.ShardWriter(str(out / f"{name}-%06d.tar"), maxcount=shard_size, verbose=0, mtime=0) as writer:
        for index in tqdm(range(count), desc=f"convert {name}", unit="ex", disable=not progress):
            sample = _encode_fields(index, source[index])
            fields.update(key for key in sample if not key.startswith("__"))
            writer.write(sample)
    shard_files = sorted(out.glob(f"{name}-*.tar"))
    offsets = np.zeros((count, 4), dtype=np.int64)
    shards, digests = [], []
    first = 0
    for shard, path in enumerate(shard_files):
        spans = _sample_spans(path)
        data = path.read_bytes()
        for key, (start, stop) in spans.items():
            offsets[int(key)] = (shard, start, stop - start, sample_checksum(data[start:stop]))
        digest = hashlib.sha256(data).hexdigest()
        digests.append(digest)
        shards.append(
            {"url": path.name, "nsamples": len(spans), "first_index": first, "bytes": len(data), "sha256": digest}
        )
        first += len(spans)
    if first != count:
        raise ShardError(f"{out}: wrote {first} samples for {count} examples")
    fingerprint = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    meta = {
        "format": FORMAT,
        "version": 2,
        "name": name,
        "num_examples": count,
        "fingerprint": fingerprint,
        "source": source.name,
        "shard_size": shard_size,
        "fields": sorted(fields),
        "shards": shards,
    }
    (out / INDEX).write_text(json.dumps(meta, indent=1) + "\n")
    np.save(out / OFFSETS, offsets)
    wids = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": [{"url": s["url"], "nsamples": s["nsamples"]} for s in shards],
    }
    (out / f"{name}.wids.json").write_text(json.dumps(wids, indent=1) + "\n")
    ScoreStore.create(out / SIDECAR, count, fingerprint=fingerprint).close()
    return meta, offsets


def _sample_spans(path: Path) -> dict[str, tuple[int, int]]:
    """Byte range ``[first header, end of last member's data blocks)`` of every sample in a shard."""
    spans: dict[str, tuple[int, int]] = {}
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            key = member.name.split(".", 1)[0]
            end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            start = spans[key][0] if key in spans else member.offset
            spans[key] = (start, end)
    return spans
