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

Shards a user already has are indexed in place by ``sadp_data.shards.indexing.index_shards`` (``sadp-data
index``); their ``index.json`` may then name a ``shard_root``, the shards' folder relative to the index
(or a URL). The folder may be remote (``s3://…``, ``http(s)://…``; ``sadp_data.remote``): shards are then
pinned by size and, where ``index.json`` records one, by ETag; the sidecar lives on local disk.

``index.json`` is untrusted: its ``shard_root`` may only lead inside the index's own folder (local) or
origin (a URL's scheme and host or bucket). Any other folder is read only when the caller names it in
``trusted_roots`` (``ForeignShardRootError`` otherwise, before any request), and the caller's
``storage_options`` never go there: a trusted foreign origin gets ``shard_storage_options`` or none.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..remote import Location, covers, origin
from ..store import ScoreStore
from ._tar import parse_sample as parse_sample
from .errors import ShardError

if TYPE_CHECKING:
    from ..remote.fetch_requests import RequestPolicy

INDEX = "index.json"
OFFSETS = "offsets.npy"
SIDECAR = "scores.zarr"
FORMAT = "sadp-data scored shards"


class ForeignShardRootError(ShardError):
    """``index.json``'s ``shard_root`` leads outside the dataset's folder or origin to a folder the caller
    did not trust (``trusted_roots``); the message names both and the option to pass."""


@dataclass
class ShardIndex:
    """The parsed ``index.json`` and ``offsets.npy`` of a scored-shards folder (``root``: a local path or a URL)."""

    root: Path | str
    meta: dict[str, Any]
    offsets: np.ndarray
    location: Location | None = None
    trusted_roots: tuple[str, ...] = ()
    shard_storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.location is None:
            self.location = Location(self.root)

    @property
    def remote(self) -> bool:
        """Whether the shards are read through fsspec (object storage or HTTP) rather than local files."""
        return self.shard_location.remote

    @cached_property
    def shard_location(self) -> Location:
        """The folder of the shards: the index's own, or ``shard_root`` (relative to it, or a URL) inside its
        folder or origin, or in one of ``trusted_roots`` (see the module docstring)."""
        shard_root = self.meta.get("shard_root", ".")
        where = self.location.join(INDEX)
        try:
            folder = self.location.child(shard_root)
        except ValueError as error:  # climbs above its bucket or host
            raise ForeignShardRootError(f"{where}: shard_root {shard_root} is not a folder: {error}") from error
        if self.location.remote and origin(folder.url) == origin(self.location.url):
            return folder
        if not self.location.remote and covers(self.location.url, folder):
            return folder
        if not any(covers(root, folder) for root in self.trusted_roots):
            raise ForeignShardRootError(
                f"{where}: shard_root {shard_root} leads to {folder.url}, outside {self.location.url} (the dataset's "
                f"{'origin' if self.location.remote else 'folder'}); refusing to read there. If you trust that "
                f"folder, pass trusted_roots=[{folder.url!r}] (sadp-data: --trust-shard-root {folder.url}); "
                "your storage_options are not sent there (pass shard_storage_options for it)"
            )
        return Location(folder.url, self.shard_storage_options, folder.policy)

    @cached_property
    def shard_urls(self) -> list[str]:
        """The path or URL of every shard, in shard order (resolved once: readers name a shard per sample)."""
        return [self.shard_location.join(entry["url"]) for entry in self.meta["shards"]]

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
        """Where shard ``shard`` lives on local disk (``shard_url`` for remote shards)."""
        if self.remote:
            raise TypeError(f"shard {shard} is remote ({self.shard_url(shard)}); it has no local path")
        return Path(self.shard_url(shard))

    def shard_url(self, shard: int) -> str:
        """The path or URL of shard ``shard``: in the index's folder or ``shard_root`` (``index_shards``)."""
        return self.shard_urls[shard]

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

    def sidecar_path(self) -> Path:
        """Where the score sidecar lives: beside a local index; for a remote one, a local cache folder
        (``$SADP_CACHE`` or ``~/.cache/sadp-data``) named by the dataset's name and fingerprint."""
        if not self.location.remote:
            return Path(self.root) / SIDECAR
        cache = Path(os.environ.get("SADP_CACHE", Path.home() / ".cache" / "sadp-data"))
        return cache / f"{self.meta['name']}-{self.fingerprint}" / SIDECAR

    def open_store(self, mode: str = "r+", path: str | Path | None = None, flush_interval: float = 1.0) -> ScoreStore:
        """The score sidecar (``path``, default ``sidecar_path()``), checked against this index's size and
        fingerprint, flushed every ``flush_interval`` seconds (``ScoreStore.open``). A remote dataset's
        sidecar is created empty on first use (its scores are local)."""
        path = Path(path) if path is not None else self.sidecar_path()
        if self.location.remote and not path.exists() and mode != "r":
            path.parent.mkdir(parents=True, exist_ok=True)
            ScoreStore.create(path, self.num_examples, fingerprint=self.fingerprint).close()
        return ScoreStore.open(
            path, mode, num_examples=self.num_examples, fingerprint=self.fingerprint, flush_interval=flush_interval
        )

    @classmethod
    def load(
        cls,
        root: str | Path,
        verify: bool = True,
        storage_options: dict[str, Any] | None = None,
        *,
        trusted_roots: Sequence[str | os.PathLike[str]] = (),
        shard_storage_options: dict[str, Any] | None = None,
        policy: RequestPolicy | None = None,
    ) -> ShardIndex:
        """Read the index (local folder or URL); with ``verify``, check every shard exists with the indexed
        size (and, for remote shards whose entry records one, the indexed ETag: a changed object is refused).

        ``storage_options`` are for the index's origin. A ``shard_root`` outside the index's folder or origin
        is refused (``ForeignShardRootError``) unless it lies in one of ``trusted_roots`` (folders or URL
        prefixes); such shards are read with ``shard_storage_options`` (default none), never the others.
        Remote requests run under ``policy`` (``remote.fetch_requests``: timeout, retries; default 60 s, 3)."""
        if isinstance(trusted_roots, (str, os.PathLike)):
            trusted_roots = [trusted_roots]
        trusted = tuple(os.fspath(path) for path in trusted_roots)
        location = Location(root, storage_options, policy)
        root = location.url if location.remote else Path(root)
        index_path = location.join(INDEX)
        try:
            raw = location.read_bytes(INDEX)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{root}: no {INDEX}; convert data with `sadp-data convert SRC {root}`") from error
        except IsADirectoryError as error:
            raise ShardError(f"{index_path}: is a folder, not an index") from error
        try:
            meta = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ShardError(f"{index_path}: not valid JSON ({error}); convert again") from error
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ShardError(f"{index_path}: not a scored-shards index (format {found!r})")
        _check_index(index_path, meta)
        offsets_path = location.join(OFFSETS)
        try:
            offsets = np.load(io.BytesIO(location.read_bytes(OFFSETS)), allow_pickle=False)
        except ShardError:  # a request that failed for good (FetchError) names itself
            raise
        except Exception as error:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
            raise ShardError(f"{offsets_path}: unreadable ({error!r}); convert again") from error
        columns = 4 if meta["version"] >= 2 else 3
        if offsets.shape != (meta["num_examples"], columns) or offsets.dtype.kind not in "iu":
            raise ShardError(
                f"{offsets_path}: shape {offsets.shape} {offsets.dtype}, "
                f"expected ({meta['num_examples']}, {columns}) integers"
            )
        if offsets.size:
            shard, start, length = offsets[:, 0], offsets[:, 1], offsets[:, 2]
            bad = np.flatnonzero((shard < 0) | (shard >= len(meta["shards"])) | (start < 0) | (length <= 0))
            if bad.size:
                raise ShardError(
                    f"{offsets_path}: row {int(bad[0])} {offsets[bad[0]].tolist()} points outside the "
                    f"{len(meta['shards'])} shards ({bad.size} bad rows); convert again"
                )
        index = cls(root, meta, offsets, location, trusted, shard_storage_options)
        index.shard_location  # noqa: B018  (refuses an untrusted shard_root before any shard is touched)
        if verify:
            index.check_shards()
        return index

    def check_shards(self) -> None:
        """Every shard exists with the indexed size and (where recorded) ETag; ``ShardError`` names the first that
        does not. One listing (or one request per shard) for remote shards."""
        names = [entry["url"] for entry in self.shards]
        folder = self.shard_location
        if folder.remote:
            try:
                infos = folder.infos(names)
            except FileNotFoundError as error:
                raise ShardError(f"{error}: a shard is missing") from error
        else:
            infos = []
            for shard, name in enumerate(names):
                if not Path(folder.join(name)).is_file():
                    raise ShardError(f"shard {self.shard_url(shard)} is missing")
                infos.append(folder.info(name))
        for shard, (entry, info) in enumerate(zip(self.shards, infos, strict=True)):
            if info.size != entry["bytes"]:
                raise ShardError(
                    f"shard {self.shard_url(shard)} has {info.size} bytes but the index says {entry['bytes']}: "
                    "it was truncated or rewritten; convert again"
                )
            if entry.get("etag") and info.etag and info.etag != entry["etag"]:
                raise ShardError(
                    f"shard {self.shard_url(shard)} has ETag {info.etag} but the index says {entry['etag']}: the "
                    "object was replaced after the index was written; refusing to read it (index or convert again)"
                )


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
    for key in ("name", "fingerprint"):  # they name local files (wids list, a remote index's sidecar folder)
        if not meta[key] or meta[key] == ".." or any(char in meta[key] for char in "/\\\0"):
            raise ShardError(f"{path}: {key} {meta[key]!r} is not a plain file name; convert again")
    if not isinstance(meta.get("shard_root", "."), str):  # a folder relative to the index, or a URL
        raise ShardError(f"{path}: shard_root is {meta['shard_root']!r}, expected a folder relative to the index")
    for number, shard in enumerate(meta["shards"]):
        check(shard, _SHARD_KEYS, f"shard entry {number}")
        if "/" in shard["url"] or shard["url"].startswith(".."):
            raise ShardError(f"{path}: shard entry {number} url {shard['url']!r} is not a file name in the folder")
    if meta["num_examples"] <= 0 or sum(s["nsamples"] for s in meta["shards"]) != meta["num_examples"]:
        raise ShardError(f"{path}: the shards' nsamples do not add up to num_examples={meta['num_examples']}")


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
        url = index.shard_url(shard)
        digest = hashlib.sha256()
        with index.shard_location.fs.open(url, "rb") if index.remote else open(url, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != entry.get("sha256"):
            bad.append(url)
    return bad
