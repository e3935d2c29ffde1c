"""One writer per output folder: ``convert`` and ``index`` hold an exclusive lock on OUT while they run.

Two conversions into the same OUT would each build a whole folder and swap it in; both would
succeed, and OUT would silently hold whichever swapped last. ``folder_lock(out)`` makes the second
fail at once instead, naming OUT and the holder. ``sidecar_released(path)`` does the same for a score
sidecar about to be replaced (``--overwrite``): it takes the sidecar's own writer lock
(``store._writer.acquire_writer_lock``), so a trainer that holds the sidecar open for writing keeps it.

The mechanism is the sidecar's: ``flock``, which the OS releases when the holder closes the file or
dies (SIGKILL included), so a crashed run never blocks the next. The lock file ``.OUT.lock`` lies
beside OUT (OUT itself is swapped by renames, ``sadp_data._staging``) and holds ``pid N on host H`` of
its holder; it is removed on release. Trade-off: ``flock`` is advisory and local to a host: writers
on other machines of a network filesystem that does not support it are not kept out.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class FolderInUseError(RuntimeError):
    """Another process (or another run in this one) is writing the folder or holds its sidecar open for
    writing; the message names the folder and the holder."""


def lock_holder(path: str | Path) -> str:
    """Who holds a ``flock`` on ``path``: ``pid N on host H`` (from ``/proc/locks`` where the OS has one),
    else ``another process``."""
    try:
        stat = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process"
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    pids = [line.split()[4] for line in lines if len(line.split()) > 5 and line.split()[5] == device]
    return f"pid {pids[0]} on host {socket.gethostname()}" if pids else "another process"


@contextmanager
def folder_lock(out: str | Path, command: str) -> Iterator[None]:
    """Hold OUT's exclusive lock for the block, or raise ``FolderInUseError`` at once naming OUT and the
    holder (``command`` names what runs: ``convert``, ``index``). OUT's parent is created if missing."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or lock_holder(path)
            os.close(fd)
            raise FolderInUseError(
                f"{out} is being written by {holder} (lock {path}); two runs into one folder would silently "
                f"keep only one of them: wait for it to finish, or {command} into another folder"
            ) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:  # else the holder removed this file as we opened it: take the new one
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: a waiting opener sees the inode change and retries
        os.close(fd)


@contextmanager
def sidecar_released(path: str | Path) -> Iterator[None]:
    """Hold the writer lock of sidecar ``path`` (if it exists) for the block, so no trainer opens it for
    writing while it is replaced; ``FolderInUseError`` naming the holder when one already has it open."""
    from .store import ScoreStoreError, acquire_writer_lock

    path = Path(path)
    if not path.is_dir():
        yield
        return
    try:
        fd = acquire_writer_lock(path, owner=-1)
    except ScoreStoreError as error:
        raise FolderInUseError(
            f"{path} is open for writing by {lock_holder(path)} (a training run's ScoreStore); replacing the "
            "folder would move its scores into the new sidecar and break the dataset: close that run first, "
            "or convert into another folder"
        ) from error
    try:
        yield
    finally:
        os.close(fd)
