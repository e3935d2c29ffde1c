"""Atomic publication of converted datasets: build beside the destination, swap in at the end.

``convert`` writes shards, indexes, ``.beton`` files and score sidecars. Written in place, a failure
or kill half-way (or a re-conversion with other settings) would leave a mix of old and new files.
``staged(targets)`` instead yields a hidden folder beside the targets; the caller builds each target
there under its own name; only when the block succeeds is each target swapped in by renames on the
same filesystem (the old one moved aside, the new one renamed in, the old one deleted). A failure or
kill before the swap leaves the old targets untouched and the hidden folder behind, which the next
run removes when the process that made it is gone.

Trade-off: the swap is two renames per target, not one; a kill between them leaves the old target
under ``.NAME.old-PID`` beside the destination (whole, and named in the error of the next run),
never a half-written one in its place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _clear_leftovers(folder: Path, stem: str) -> None:
    """Remove the staging folders of runs of ``stem`` whose process is gone."""
    for leftover in folder.glob(f".{stem}.partial-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def staged(targets: Sequence[str | Path]) -> Iterator[Path]:
    """Yield a fresh folder; build every target in it as ``folder / target.name``; swap them in on success.

    All targets must share one parent folder (created if missing). On an exception nothing is swapped
    and the staging folder is removed. A target the block did not build is left as it was.
    """
    paths = [Path(target) for target in targets]
    parent = paths[0].parent
    if any(path.parent != parent for path in paths):
        raise ValueError(f"staged targets must share one folder, got {[str(p) for p in paths]}")
    parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(parent, paths[0].name)
    stage = parent / f".{paths[0].name}.partial-{os.getpid()}"
    _remove(stage)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for path in paths:
        built = stage / path.name
        if not (built.exists() or built.is_symlink()):
            continue
        aside = parent / f".{path.name}.old-{os.getpid()}"
        if path.exists() or path.is_symlink():
            _remove(aside)
            os.rename(path, aside)
        os.rename(built, path)
        _remove(aside)
    shutil.rmtree(stage, ignore_errors=True)
