"""A worker's local cache of whole shards fetched from remote storage (``ShardCache``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class ShardCache:
    """Whole shards on local disk, least recently used evicted past ``limit`` bytes; files appear atomically."""

    def __init__(self, folder: str | os.PathLike[str], limit: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.lock = threading.Lock()

    def path(self, name: str) -> Path:
        return self.folder / name

    def get(self, name: str, size: int) -> Path | None:
        """The cached copy of shard ``name`` if it is there with ``size`` bytes (its access time refreshed)."""
        path = self.path(name)
        try:
            if path.stat().st_size != size:
                return None
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def put(self, name: str, data: bytes | memoryview) -> None:
        temporary = self.folder / f".{name}.{os.getpid()}.{threading.get_ident()}.part"
        temporary.write_bytes(data)
        os.replace(temporary, self.path(name))
        with self.lock:
            files = sorted(
                (p for p in self.folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime
            )
            total = sum(p.stat().st_size for p in files)
            for old in files:
                if total <= self.limit or old.name == name:
                    break
                total -= old.stat().st_size
                old.unlink(missing_ok=True)
