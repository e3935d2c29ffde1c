"""Scored shards: WebDataset tar shards plus a byte-offset index and a Zarr score sidecar.

Layout of a scored-shards folder ``OUT``:

* ``{name}-000000.tar`` …: tar shards written by webdataset's ``ShardWriter`` (mtime 0, fixed owner,
  so the same input always gives byte-identical shards). Sample ``i`` has key ``%09d`` and fields
  such as ``x.npy``, ``y.cls`` and ``index.cls`` (its global index).
* ``index.json``: name, ``num_examples``, ``fingerprint`` (from the shards' SHA-256), fields, and per
  shard ``url``, ``nsamples``, ``first_index``, ``bytes``, ``sha256``.
* ``offsets.npy``: int64 ``[N, 4]`` = (shard, byte offset of the sample's first tar header, byte
  length of all its members, crc32c of those bytes): random access to any sample with one seek and
  one read, and a per-sample checksum that readers verify (indexes written before version 2 have
  3 columns and no checksum).
* ``{name}.wids.json``: the shard list in the format of the ``wids`` package.
* ``scores.zarr``: the ``ScoreStore`` sidecar, created for N examples with the same fingerprint.

Shards a user already has are indexed in place by ``sadp_data.indexing.index_shards`` (``sadp-data
index``); their ``index.json`` may then name a ``shard_root``, the shards' folder relative to the index.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .staging import staged
from .store import ScoreStore

INDEX = "index.json"
OFFSETS = "offsets.npy"
SIDECAR = "scores.zarr"
FORMAT = "sadp-data scored shards"


class ShardError(RuntimeError):
    """A shard is missing, truncated or does not match the index; the message names it."""


@dataclass
class ShardIndex:
    """The parsed ``index.json`` and ``offsets.npy`` of a scored-shards folder."""

    root: Path
    meta: dict[str, Any]
    offsets: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.meta["num_examples"])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.meta["shards"])

    @property
    def shard_size(self) -> int:
        return int(self.meta["shard_size"])

    def shard_path(self, shard: int) -> Path:
        """Where shard ``shard`` lives: the index's folder, or ``shard_root`` relative to it (``index_shards``)."""
        return self.root / self.meta.get("shard_root", ".") / self.meta["shards"][shard]["url"]

    @property
    def keys_are_indices(self) -> bool:
        """Whether sample ``i``'s key is ``%09d`` of ``i`` (``convert``; readers check it). Indexed shards
        keep their own keys (``"keys": "as written"`` in ``index.json``); their crc32c still checks every read."""
        return self.meta.get("keys", "index") == "index"

    @property
    def consecutive_shards(self) -> bool:
        """Whether shard ``s`` holds examples ``[s·shard_size, (s+1)·shard_size)`` (what ``convert`` writes).

        Shards indexed from elsewhere may not; samplers then take the shard of every example as its
        locality group instead of ``shard_size``.
        """
        expected = np.arange(self.num_examples) // self.shard_size
        return bool(np.array_equal(self.offsets[:, 0], expected))

    def open_store(self, mode: str = "r+") -> ScoreStore:
        """The score sidecar, checked against this index's size and fingerprint."""
        return ScoreStore.open(self.root / SIDECAR, mode, num_examples=self.num_examples, fingerprint=self.fingerprint)

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> ShardIndex:
        """Read the index; with ``verify``, check every shard exists with the indexed size."""
        root = Path(root)
        index_path = root / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"{root}: no {INDEX}; convert data with `sadp-data convert SRC {root}`")
        try:
            meta = json.loads(index_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ShardError(f"{index_path}: not valid JSON ({error}); convert again") from error
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ShardError(f"{index_path}: not a scored-shards index (format {found!r})")
        _check_index(index_path, meta)
        try:
            offsets = np.load(root / OFFSETS, allow_pickle=False)
        except Exception as error:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
            raise ShardError(f"{root / OFFSETS}: unreadable ({error!r}); convert again") from error
        columns = 4 if meta["version"] >= 2 else 3
        if offsets.shape != (meta["num_examples"], columns) or offsets.dtype.kind not in "iu":
            raise ShardError(
                f"{root / OFFSETS}: shape {offsets.shape} {offsets.dtype}, "
                f"expected ({meta['num_examples']}, {columns}) integers"
            )
        if offsets.size:
            shard, start, length = offsets[:, 0], offsets[:, 1], offsets[:, 2]
            bad = np.flatnonzero((shard < 0) | (shard >= len(meta["shards"])) | (start < 0) | (length <= 0))
            if bad.size:
                raise ShardError(
                    f"{root / OFFSETS}: row {int(bad[0])} {offsets[bad[0]].tolist()} points outside the "
                    f"{len(meta['shards'])} shards ({bad.size} bad rows); convert again"
                )
        index = cls(root, meta, offsets)
        if verify:
            for shard, entry in enumerate(meta["shards"]):
                path = index.shard_path(shard)
                if not path.is_file():
                    raise ShardError(f"shard {path} is missing")
                if path.stat().st_size != entry["bytes"]:
                    raise ShardError(
                        f"shard {path} has {path.stat().st_size} bytes but the index says {entry['bytes']}: "
                        "it was truncated or rewritten; convert again"
                    )
        return index


#: Keys of ``index.json`` and of each of its shard entries, with the types they must have.
_INDEX_KEYS = {
    "version": int,
    "num_examples": int,
    "fingerprint": str,
    "shard_size": int,
    "fields": list,
    "shards": list,
    "name": str,
}
_SHARD_KEYS = {"url": str, "nsamples": int, "first_index": int, "bytes": int}


def _check_index(path: Path, meta: dict[str, Any]) -> None:
    """Raise ``ShardError`` naming ``path`` and the key when ``index.json`` lacks a key or has a wrong type."""

    def check(entry: Any, keys: dict[str, type], where: str) -> None:
        if not isinstance(entry, dict):
            raise ShardError(f"{path}: {where} is a {type(entry).__name__}, not an object; convert again")
        for key, kind in keys.items():
            value = entry.get(key)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ShardError(f"{path}: {where} key {key!r} is {value!r}, expected {kind.__name__}; convert again")

    check(meta, _INDEX_KEYS, "the index")
    if not isinstance(meta.get("shard_root", "."), str):
        raise ShardError(f"{path}: shard_root is {meta['shard_root']!r}, expected a folder relative to the index")
    for number, shard in enumerate(meta["shards"]):
        check(shard, _SHARD_KEYS, f"shard entry {number}")
        if "/" in shard["url"] or shard["url"].startswith(".."):
            raise ShardError(f"{path}: shard entry {number} url {shard['url']!r} is not a file name in the folder")
    if meta["num_examples"] <= 0 or sum(s["nsamples"] for s in meta["shards"]) != meta["num_examples"]:
        raise ShardError(f"{path}: the shards' nsamples do not add up to num_examples={meta['num_examples']}")


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
    """
    out = Path(out)
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
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
        meta, offsets = _write_into(source, stage / out.name, shard_size, name, progress)
    return ShardIndex(out, meta, offsets)


def _write_into(source, out: Path, shard_size: int, name: str, progress: bool) -> tuple[dict, np.ndarray]:
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


def sample_checksum(buffer: bytes) -> int:
    """crc32c of one sample's bytes (as stored in the 4th column of ``offsets.npy``)."""
    import google_crc32c

    return int(google_crc32c.value(buffer))


def verify_shards(index: ShardIndex) -> list[str]:
    """Every shard's SHA-256 against ``index.json``: the paths of the shards that differ (empty: all intact).

    Reads every byte of every shard (``sadp-data info --verify``); the per-sample crc32c is checked on
    every read anyway.
    """
    bad = []
    for shard, entry in enumerate(index.shards):
        path = index.shard_path(shard)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != entry.get("sha256"):
            bad.append(str(path))
    return bad


def parse_sample(buffer: bytes, where: str) -> dict[str, bytes]:
    """Split the bytes of one sample's tar members into ``{"__key__": key, field: bytes}``.

    ``where`` (shard and offset) is used in error messages.
    """
    sample: dict[str, Any] = {}
    position = 0
    while position < len(buffer):
        header = buffer[position : position + tarfile.BLOCKSIZE]
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.TarError as error:
            raise ShardError(f"{where}: corrupt tar header at +{position}: {error}") from error
        if info.type in _EXTENDED_HEADERS:  # pax or GNU long-name headers (e.g. a fractional mtime)
            return _parse_extended(buffer, where)
        start = position + tarfile.BLOCKSIZE
        data = buffer[start : start + info.size]
        if len(data) != info.size:
            raise ShardError(f"{where}: member {info.name} is truncated ({len(data)} of {info.size} bytes)")
        key, _, field = info.name.partition(".")
        if sample.setdefault("__key__", key) != key:
            raise ShardError(f"{where}: member {info.name} belongs to another sample than {sample['__key__']}")
        sample[field] = data
        position = start + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return sample


#: Header types that change the next member's metadata: parsed by ``tarfile`` instead of the fast path.
_EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


def _parse_extended(buffer: bytes, where: str) -> dict[str, bytes]:
    """``parse_sample`` for samples with pax or GNU extended headers, through ``tarfile`` (slower, complete)."""
    import io

    from webdataset.tariterators import base_plus_ext

    sample: dict[str, Any] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(buffer), mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, field = base_plus_ext(member.name)
                if sample.setdefault("__key__", key) != key:
                    raise ShardError(
                        f"{where}: member {member.name} belongs to another sample than {sample['__key__']}"
                    )
                sample[field] = archive.extractfile(member).read()
    except tarfile.TarError as error:
        raise ShardError(f"{where}: corrupt tar data: {error}") from error
    return sample
