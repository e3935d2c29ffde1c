"""Where a scored-shards dataset lives: a local folder, or a prefix in object storage or over HTTP.

``Location(url, storage_options)`` names a folder of objects. A plain path (or ``file://``) is a
local folder read with ordinary files; any other URL (``s3://bucket/prefix``, ``gs://…``,
``http(s)://host/path``) goes through fsspec (s3fs, gcsfs, its HTTP filesystem), with
``storage_options`` passed to the filesystem (credentials, ``client_kwargs={"endpoint_url": …}``).
``storage_options`` (credentials) stay with their origin: a sub-folder keeps them only on the same
scheme and host (or bucket), never on another host, and a local ``Location`` passes none to the
remote folders it names.

The filesystem is created lazily in each process (never pickled, and re-created after a fork), so a
``Location`` can be sent to DataLoader workers (forked or spawned) and each opens its own connections.

Trade-off: a remote ``Location`` offers only what reading and publishing a dataset needs (whole
objects, byte ranges, sizes and ETags, uploads); listing is used where the store supports it and
replaced by per-object requests where it does not (plain HTTP servers).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Errors a remote read retries before giving up (the connection's, not "no such object").
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def is_remote(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` names object storage or HTTP (a scheme other than ``file``), not a local path."""
    text = os.fspath(url)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme.lower() not in ("file", "local")


@dataclass(frozen=True)
class ObjectInfo:
    """What the store says about one object: its size and, where the store gives one, its ETag."""

    size: int
    etag: str | None


class Location:
    """A folder of objects (see the module docstring); names are relative to ``url``."""

    def __init__(self, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> None:
        text = os.fspath(url)
        self.remote = is_remote(text)
        if not self.remote and text.startswith("file://"):
            text = text[len("file://") :]
        self.url = text.rstrip("/") if self.remote else text
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self._fs_pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of a remote location (created on first use in this process)."""
        if not self.remote:
            raise TypeError(f"{self.url} is a local folder; it has no fsspec filesystem")
        if self._fs is None or self._fs_pid != os.getpid():  # fsspec's async filesystems are not fork-safe
            import fsspec

            protocol = self.url.split("://", 1)[0]
            try:
                self._fs = fsspec.filesystem(protocol, **self.storage_options)
                self._fs_pid = os.getpid()
            except ImportError as error:
                raise ImportError(
                    f"reading {self.url} needs fsspec's {protocol} filesystem: "
                    f"pip install 'sadp-data[remote]' ({error})"
                ) from error
        return self._fs

    def join(self, name: str) -> str:
        """The full path or URL of object ``name`` (a relative name, or already a full URL)."""
        if is_remote(name):
            return name
        if self.remote:
            return f"{self.url}/{name.lstrip('/')}" if name not in ("", ".") else self.url
        return str(Path(self.url) / name)

    def child(self, name: str) -> Location:
        """The location of folder ``name`` (relative, ``file://…`` or a full URL); it keeps this location's
        storage options only when it is on the same origin (``origin``): credentials never go to another host."""
        if not is_remote(name) and name.startswith("file://"):
            name = name[len("file://") :]
        target = self.join(name)
        if not is_remote(target):
            return Location(os.path.normpath(target))
        url = _normalise_url(target)
        return Location(url, self.storage_options if self.remote and origin(url) == origin(self.url) else None)

    def exists(self, name: str) -> bool:
        if not self.remote:
            return Path(self.join(name)).exists()
        return bool(self.fs.exists(self.join(name)))

    def read_bytes(self, name: str) -> bytes:
        """All of object ``name`` (``FileNotFoundError`` naming it when there is none)."""
        path = self.join(name)
        if not self.remote:
            return Path(path).read_bytes()
        try:
            return retrying(lambda: self.fs.cat_file(path), path)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{path} does not exist") from error

    def info(self, name: str) -> ObjectInfo:
        """Size and ETag of object ``name`` (``FileNotFoundError`` naming it when there is none)."""
        path = self.join(name)
        if not self.remote:
            return ObjectInfo(Path(path).stat().st_size, None)
        try:
            entry = retrying(lambda: self.fs.info(path), path)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{path} does not exist") from error
        return _object_info(path, entry)

    def infos(self, names: Sequence[str]) -> list[ObjectInfo]:
        """``info`` of many objects: one listing where the store lists, else concurrent requests."""
        if not self.remote:
            return [self.info(name) for name in names]
        paths = [self.join(name) for name in names]
        folders = {path.rsplit("/", 1)[0] for path in paths}
        listed: dict[str, ObjectInfo] = {}
        try:
            for folder in folders:
                for entry in self.fs.ls(folder, detail=True):
                    listed[_strip(entry["name"])] = _object_info(entry["name"], entry)
        except Exception:  # a store that cannot list (HTTP 403/404, no listing API): ask per object
            listed = {}
        if all(_strip(path) in listed for path in paths):
            return [listed[_strip(path)] for path in paths]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(16, len(names) or 1)) as pool:
            return list(pool.map(self.info, names))

    def read_ranges(
        self,
        names: Sequence[str],
        starts: Sequence[int],
        stops: Sequence[int],
        *,
        attempts: int = 3,
        client: str = "fsspec",
        client_options: dict[str, Any] | None = None,
    ) -> list[bytes | memoryview]:
        """Bytes ``[starts[j], stops[j])`` of object ``names[j]`` for every j, all fetched concurrently (one
        fsspec ``cat_ranges`` call, or with ``client="obstore"`` one obstore request per range:
        ``sadp_data.remote_obstore``), each connection error retried up to ``attempts`` attempts in all;
        each result is checked to have the requested length."""
        paths = [self.join(name) for name in names]
        if not self.remote:
            parts: list[bytes | memoryview] = []
            for path, start, stop in zip(paths, starts, stops, strict=True):
                with open(path, "rb") as handle:
                    handle.seek(start)
                    parts.append(handle.read(stop - start))
        elif client == "obstore":
            from .remote_obstore import read_ranges

            parts = list(read_ranges(paths, starts, stops, self.storage_options, client_options, attempts))
        else:
            where = paths[0] if len(set(paths)) == 1 else f"{paths[0]} and {len(set(paths)) - 1} more"
            fetch = lambda: self.fs.cat_ranges(paths, list(starts), list(stops), on_error="raise")  # noqa: E731
            parts = retrying(fetch, where, attempts=attempts)
        for part, path, start, stop in zip(parts, paths, starts, stops, strict=True):
            if isinstance(part, BaseException):
                raise part
            if len(part) != stop - start:
                raise OSError(f"{path}: bytes {start}–{stop} came back as {len(part)} bytes (object truncated?)")
        return parts

    def upload(self, local: Path, name: str) -> None:
        """Copy local file ``local`` to object ``name`` (replacing it)."""
        path = self.join(name)
        if not self.remote:
            raise TypeError(f"upload needs a remote location; {self.url} is local")
        retrying(lambda: self.fs.put_file(str(local), path), path)

    def remove(self, name: str) -> None:
        """Delete object ``name`` if it exists."""
        path = self.join(name)
        if self.remote:
            if self.fs.exists(path):
                self.fs.rm_file(path)
        else:
            Path(path).unlink(missing_ok=True)


def origin(url: str | os.PathLike[str]) -> str | None:
    """``scheme://host[:port]`` of a URL (for object storage, ``scheme://bucket``), lower-cased: what one set
    of credentials is for; ``None`` for a local path."""
    text = os.fspath(url)
    if not is_remote(text):
        return None
    scheme, _, rest = text.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0].lower()}"


def covers(root: str | os.PathLike[str], location: Location) -> bool:
    """Whether ``location`` is folder ``root`` or lies below it: local paths compared after resolving
    symbolic links and ``..``, URLs after normalising them (a path is never below a URL, nor the reverse)."""
    text = os.fspath(root)
    if is_remote(text) != location.remote:
        return False
    if location.remote:
        base = _normalise_url(text.rstrip("/"))
        return origin(base) == origin(location.url) and (location.url + "/").startswith(base + "/")
    return Path(location.url).resolve().is_relative_to(Path(Location(text).url).resolve())


def _normalise_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    parts: list[str] = []
    for part in rest.split("/"):
        if part == "..":
            if len(parts) <= 1:
                raise ValueError(f"{url} climbs above its bucket or host")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return f"{scheme}://{'/'.join(parts)}"


def _strip(name: str) -> str:
    """An fsspec path without its protocol, for comparing listed names with requested ones."""
    return name.split("://", 1)[-1].rstrip("/")


def _object_info(path: str, entry: dict[str, Any]) -> ObjectInfo:
    size = entry.get("size")
    if size is None:
        raise OSError(f"{path}: the server does not say the object's size")
    etag = entry.get("ETag") or entry.get("etag")
    return ObjectInfo(int(size), None if etag is None else str(etag).strip('"'))


def retrying(action: Callable[[], T], where: str, attempts: int = 3, delay_s: float = 0.2) -> T:
    """``action()``, retried ``attempts − 1`` times after connection errors (backoff ``delay_s``·2^k).

    Only ``TRANSIENT_ERRORS`` and fsspec/aiohttp connection errors are retried; a missing object or
    a refused request raises at once. The last error is raised with ``where`` (the object) named.
    """
    transient = TRANSIENT_ERRORS + _client_errors()
    for attempt in range(attempts):
        try:
            return action()
        except transient as error:
            if attempt + 1 == attempts:
                raise OSError(f"{where}: {type(error).__name__} after {attempts} attempts: {error}") from error
            time.sleep(delay_s * 2**attempt)
    raise AssertionError("unreachable")


def _client_errors() -> tuple[type[BaseException], ...]:
    """aiohttp's connection errors, when aiohttp is installed (fsspec's HTTP and s3fs use it)."""
    try:
        from aiohttp import ClientConnectionError, ServerTimeoutError
    except ImportError:
        return ()
    return (ClientConnectionError, ServerTimeoutError)
