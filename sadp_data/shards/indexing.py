"""``index_shards``: make WebDataset shards a user already has into scored shards, without rewriting them.

Each tar is read once: the byte span of every sample (``sadp_data.shards._tar``: the samples
webdataset's reader would deliver, or a ``ShardError`` naming the shard, member and byte offset), a
crc32c of those bytes and the shard's SHA-256. A sample's global index is its ``index.cls`` member
where every sample has one (what ``sadp-data convert`` writes), otherwise its
position in shard order; either way the indices must be exactly ``0 … N-1``. The result is the usual
``index.json``, ``offsets.npy``, ``{name}.wids.json`` and ``scores.zarr`` in ``out``; the shards stay
where they are (``index.json``'s ``shard_root`` says where, relative to ``out``). The fingerprint is
computed from the shards' SHA-256 the way ``convert`` computes it, so indexing shards that
``convert`` wrote reproduces their index and keeps their sidecar valid.

Shards may be remote (``s3://bucket/train-{000000..000009}.tar``, ``https://…``; ``sadp_data.remote``):
each is then downloaded once, ``shard_root`` is their folder's URL, and each shard's ETag is recorded
so a reader refuses a replaced object. ``out`` (the index and the sidecar) is a local folder.

Trade-off: every byte of every shard is read once (to checksum it); a shard is held in memory
while it is indexed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._folder_lock import folder_lock
from .._staging import staged
from ..remote import Location, is_remote
from ..store import ScoreStore
from . import FORMAT, INDEX, OFFSETS, SIDECAR, ShardError, ShardIndex, sample_checksum
from ._tar import shard_samples
from .writer import check_name


def expand_shards(shards: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths or URLs from brace patterns (``train-{000000..000009}.tar``) or a list; local ones must exist
    (remote ones are checked when they are read)."""
    from webdataset.shardlists import expand_urls

    items = [shards] if isinstance(shards, (str, Path)) else list(shards)
    urls = [url for item in items for url in expand_urls(str(item))]
    if not urls:
        raise ValueError(f"no shards in {shards!r}")
    if len({is_remote(url) for url in urls}) > 1:
        raise ValueError(f"shard list {shards!r} mixes local paths and URLs")
    for url in urls:
        if not is_remote(url) and not Path(url).is_file():
            raise FileNotFoundError(f"shard {url} does not exist")
    if len(set(urls)) != len(urls):
        raise ValueError(f"shard list {shards!r} names a shard twice")
    return urls


def _samples(path: str, data: bytes) -> list[tuple[str, int, int, int | None, set[str]]]:
    """``(key, start, stop, index.cls or None, fields)`` of every sample of one shard, in tar order
    (``shard_samples``: the reader's own rule; ``ShardError`` for a shard it cannot read back)."""
    samples = []
    for span in shard_samples(data, path):
        number = None
        if "index.cls" in span.fields:
            raw = data[span.fields["index.cls"]]
            try:
                number = int(raw.decode().strip())
            except (UnicodeDecodeError, ValueError) as error:
                raise ShardError(
                    f"shard {path}: sample {span.key!r} has index.cls {raw[:20]!r}, not an integer"
                ) from error
        samples.append((span.key, span.start, span.stop, number, set(span.fields)))
    return samples


def index_shards(
    shards: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    name: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> ShardIndex:
    """Index ``shards`` (see the module docstring) into ``out``; returns the loaded index.

    ``out`` may be the shards' own folder. An existing ``index.json`` is replaced only with
    ``overwrite``; an existing sidecar is kept when it belongs to these shards (same size and
    fingerprint) and refused otherwise, so scores are never lost. The index files are published
    through ``sadp_data._staging``, ``index.json`` last, while OUT's lock
    (``sadp_data._folder_lock``) keeps out a concurrent ``index`` or ``convert`` into it.

    Shards outside ``out`` are the caller's own choice here, so the returned index trusts their folder;
    a later ``ShardIndex.load(out)`` must name it in ``trusted_roots`` (``sadp-data index`` prints how),
    and, for remote shards, pass their ``storage_options`` as ``shard_storage_options``.
    """
    paths = expand_shards(shards)
    remote = is_remote(paths[0])
    parents = {path.rsplit("/", 1)[0] if remote else str(Path(path).parent.resolve()) for path in paths}
    if len(parents) > 1:
        raise ValueError(f"the shards must lie in one folder; {paths[0]} and others differ")
    folder = Location(parents.pop(), storage_options)
    names = [path.rsplit("/", 1)[-1] if remote else Path(path).name for path in paths]
    if is_remote(out):
        raise ValueError(f"{out}: the index and its sidecar are written to a local folder, not a URL")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    label = check_name(name or names[0].rsplit("-", 1)[0])
    with folder_lock(out, "index"):
        if (out / INDEX).exists() and not overwrite:
            raise FileExistsError(f"{out / INDEX} exists; pass --overwrite to index the shards again")
        _write_index(paths, folder, names, out, label, progress)
    return ShardIndex.load(out, trusted_roots=[folder.url], shard_storage_options=storage_options)


def _write_index(paths: list[str], folder: Location, names: list[str], out: Path, label: str, progress: bool) -> None:
    """Read every shard once and publish ``index.json``, ``offsets.npy``, the ``wids`` list and the sidecar."""
    from tqdm.auto import tqdm

    remote = folder.remote
    entries, rows, fields, digests = [], [], set(), []
    numbered = None
    for shard, path in enumerate(tqdm(paths, desc="index shards", unit="shard", disable=not progress)):
        data = folder.read_bytes(names[shard])
        samples = _samples(path, data)
        if not samples:
            raise ShardError(f"shard {path} holds no samples")
        has_index = {number is not None for *_, number, _ in samples}
        if len(has_index) > 1 or (numbered is not None and has_index != {numbered}):
            raise ShardError(f"shard {path}: some samples have index.cls and some do not; number all or none")
        numbered = has_index.pop()
        first = sum(entry["nsamples"] for entry in entries)
        for position, (key, start, stop, number, members) in enumerate(samples):
            index = first + position if number is None else number
            rows.append((index, shard, start, stop - start, sample_checksum(data[start:stop]), key))
            fields |= members
        digest = hashlib.sha256(data).hexdigest()
        digests.append(digest)
        entry = {"url": names[shard], "nsamples": len(samples), "first_index": first, "bytes": len(data)}
        entries.append({**entry, "sha256": digest})
        if remote:
            etag = folder.info(names[shard]).etag
            if etag:
                entries[-1]["etag"] = etag
    count = len(rows)
    offsets = _offsets(rows, count, paths)
    fingerprint = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": 2,
        "name": label,
        "num_examples": count,
        "fingerprint": fingerprint,
        "source": f"indexed: {names[0]} … {names[-1]}" if len(names) > 1 else f"indexed: {names[0]}",
        "shard_size": max(entry["nsamples"] for entry in entries),
        "fields": sorted(fields),
        "shards": entries,
    }
    out.mkdir(parents=True, exist_ok=True)
    root = folder.url if remote else os.path.relpath(folder.url, out.resolve())
    if root != ".":
        meta["shard_root"] = root
    if any(key != f"{index:09d}" for index, *_, key in rows):
        meta["keys"] = "as written"
    _keep_or_create_sidecar(out, count, fingerprint)
    wids = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": label,
        "shardlist": [{"url": Location(root).join(e["url"]), "nsamples": e["nsamples"]} for e in entries],
    }
    targets = [out / OFFSETS, out / f"{label}.wids.json", out / INDEX]  # swapped in this order: the index last
    with staged(targets) as stage:
        np.save(stage / OFFSETS, offsets)
        (stage / f"{label}.wids.json").write_text(json.dumps(wids, indent=1) + "\n")
        (stage / INDEX).write_text(json.dumps(meta, indent=1) + "\n")


def _offsets(rows: list[tuple[int, int, int, int, int, str]], count: int, paths: list[str]) -> np.ndarray:
    """The ``[N, 4]`` offsets table; the indices must be exactly ``0 … N-1`` (errors name shard and key)."""
    offsets = np.full((count, 4), -1, dtype=np.int64)
    for index, shard, start, length, checksum, key in rows:
        if not 0 <= index < count:
            raise ShardError(f"shard {paths[shard]}: sample {key!r} has index.cls {index}, outside [0, {count})")
        if offsets[index, 0] >= 0:
            raise ShardError(
                f"shard {paths[shard]}: sample {key!r} has index.cls {index}, already used by a sample of "
                f"shard {paths[int(offsets[index, 0])]}"
            )
        offsets[index] = (shard, start, length, checksum)
    return offsets


def _keep_or_create_sidecar(out: Path, count: int, fingerprint: str) -> None:
    """Create ``out/scores.zarr``, or keep an existing one that belongs to these shards (refuse any other)."""
    path = out / SIDECAR
    if not path.exists():
        ScoreStore.create(path, count, fingerprint=fingerprint).close()
        return
    try:
        ScoreStore.open(path, "r", num_examples=count, fingerprint=fingerprint).close()
    except Exception as error:
        raise FileExistsError(
            f"{path} holds scores of other data ({error}); move it away to index these shards (scores are never "
            "overwritten)"
        ) from error
