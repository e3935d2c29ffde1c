"""Where a scored-shards dataset lives: a local folder, or a prefix in object storage or over HTTP.

``Location(url, storage_options)`` names a folder of objects. A plain path (or ``file://``) is a
local folder read with ordinary files; any other URL (``s3://bucket/prefix``, ``gs://…``,
``http(s)://host/path``) goes through fsspec (s3fs, gcsfs, its HTTP filesystem), with
``storage_options`` passed to the filesystem (credentials, ``client_kwargs={"endpoint_url": …}``).
``storage_options`` (credentials) stay with their origin: a sub-folder keeps them only on the same
scheme and host (or bucket), never on another host, and a local ``Location`` passes none to the
remote folders it names.

Every remote request is bounded in time and retried when its failure is transient, under the
location's ``RequestPolicy`` (``sadp_data.remote.fetch_requests``: 60 s a request, 3 attempts by default);
one that fails for good raises ``FetchError`` naming the URL (a missing object: ``FileNotFoundError``).

The filesystem is created lazily in each process (never pickled, and re-created after a fork), so a
``Location`` can be sent to DataLoader workers (forked or spawned) and each opens its own connections.

Trade-off: a remote ``Location`` offers only what reading and publishing a dataset needs (whole
objects, byte ranges, sizes and ETags, uploads); listing is used where the store supports it and
replaced by per-object requests where it does not (plain HTTP servers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fetch_requests import FetchStats, RequestPolicy


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

    def __init__(
        self,
        url: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        policy: RequestPolicy | None = None,
    ) -> None:
        from .fetch_requests import RequestPolicy

        self.policy = policy if policy is not None else RequestPolicy()
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
        same_origin = self.remote and origin(url) == origin(self.url)
        return Location(url, self.storage_options if same_origin else None, self.policy)

    def exists(self, name: str) -> bool:
        if not self.remote:
            return Path(self.join(name)).exists()
        return bool(self._call("exists", self.join(name)))

    def read_bytes(self, name: str) -> bytes:
        """All of object ``name`` (``FileNotFoundError`` naming it when there is none)."""
        path = self.join(name)
        if not self.remote:
            return Path(path).read_bytes()
        try:
            return self._call("cat_file", path)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{path} does not exist") from error

    def info(self, name: str) -> ObjectInfo:
        """Size and ETag of object ``name`` (``FileNotFoundError`` naming it when there is none)."""
        path = self.join(name)
        if not self.remote:
            return ObjectInfo(Path(path).stat().st_size, None)
        try:
            entry = self._call("info", path)
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
                for entry in self._call("ls", folder, detail=True):
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
        sizes: Sequence[int] | None = None,
        policy: RequestPolicy | None = None,
        stats: FetchStats | None = None,
        client: str = "fsspec",
        client_options: dict[str, Any] | None = None,
    ) -> list[bytes | memoryview]:
        """Bytes ``[starts[j], stops[j])`` of object ``names[j]`` for every j, each result of the requested length.

        Remote ranges are fetched concurrently, one request each (fsspec's ``cat_file``, or with
        ``client="obstore"`` obstore's: ``sadp_data.remote.obstore_reads``), each under ``policy`` (default:
        the location's) as ``fetch_requests.read_all`` says: timed out, retried when transient,
        counted in ``stats``; ``sizes[j]`` (object ``names[j]``'s size) lets a server's whole-object
        answer to a range stand for it. ``FetchError`` names the first range that fails for good."""
        paths = [self.join(name) for name in names]
        if not self.remote:
            parts: list[bytes | memoryview] = []
            for path, start, stop in zip(paths, starts, stops, strict=True):
                with open(path, "rb") as handle:
                    handle.seek(start)
                    parts.append(handle.read(stop - start))
                if len(parts[-1]) != stop - start:
                    raise OSError(f"{path}: bytes {start}–{stop} came back as {len(parts[-1])} bytes (truncated?)")
            return parts
        policy = policy if policy is not None else self.policy
        if client == "obstore":
            from .obstore_reads import read_ranges

            return read_ranges(paths, starts, stops, self.storage_options, client_options, policy, sizes, stats)
        from .fetch_requests import fs_call, read_all, run

        fs = self.fs
        get = lambda url, start, stop: fs_call(fs, "cat_file", url, start=start, end=stop)()  # noqa: E731
        return run(fs, lambda: read_all(get, paths, starts, stops, sizes, policy, stats))

    def upload(self, local: Path, name: str) -> None:
        """Copy local file ``local`` to object ``name`` (replacing it)."""
        path = self.join(name)
        if not self.remote:
            raise TypeError(f"upload needs a remote location; {self.url} is local")
        self._call("put_file", str(local), path)

    def _call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        """``fs.<method>(path, …)``: one request under the location's policy (``FetchError`` names ``path``)."""
        from .fetch_requests import call

        return call(self.fs, method, f"{method} {path}", self.policy, path, *args, **kwargs)

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
