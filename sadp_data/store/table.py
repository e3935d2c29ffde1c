"""``ScoreTable``: what samplers, scorers and resume read of a score store, whichever kind it is.

Two stores meet it: ``ScoreStore`` (every rank holds the whole table: one writer, mirrors on the
other ranks) and ``ShardedScoreStore`` (each rank holds its region; scores are routed to their
owners). Code that takes a store types it as a ``ScoreTable`` and asks its capabilities instead
of its class: ``rank_region`` says whether the table is split across ranks (and which examples
this rank owns), ``check_sampler`` whether a sampler with given settings can plan from it, and
``saved_snapshot(resuming=...)`` lets a split table check that every rank's region is as new as
the checkpoint being resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._snapshot import ScoreSnapshot


@dataclass(frozen=True)
class RankRegion:
    """The examples ``[lo, hi)`` that rank ``rank`` of ``world`` holds of a table split across ranks."""

    rank: int
    world: int
    lo: int
    hi: int


@runtime_checkable
class ScoreTable(Protocol):
    """Per-example scores, seen counts and last-scored epochs of ``num_examples`` examples.

    ``scores()``, ``seen()`` and ``last_epoch()`` are read-only views of what this process holds: all
    ``num_examples`` examples, or this rank's ``rank_region`` of a split table (example ``lo + i``
    at ``i``). ``begin_epoch`` is the one call between two epochs (a collective in data-parallel
    runs); ``version`` is the number of update batches applied, or ``None`` where there is no single
    version between epoch boundaries (a split table: its snapshots carry the global one).
    """

    path: Path
    num_examples: int
    fingerprint: str | None

    @property
    def version(self) -> int | None: ...

    @property
    def current_epoch(self) -> int: ...

    @property
    def read_only(self) -> bool: ...

    @property
    def keep_ratio_history(self) -> list[tuple[int, float]]: ...

    @property
    def rank_region(self) -> RankRegion | None:
        """The examples this rank holds when the table is split across ranks (it then routes every
        score to the rank owning its example itself); ``None`` when every rank holds the whole table."""
        ...

    def scores(self) -> np.ndarray: ...

    def seen(self) -> np.ndarray: ...

    def last_epoch(self) -> np.ndarray: ...

    def update(self, indices: Any, scores: Any, epoch: int | None = None) -> None: ...

    def set_epoch(self, epoch: int) -> None: ...

    def begin_epoch(
        self,
        epoch: int,
        keep_ratio: float,
        *,
        resume_from: ScoreSnapshot | None = None,
        persist_snapshot: bool = True,
        num_replicas: int = 1,
    ) -> ScoreSnapshot: ...

    def record_keep_ratio(self, epoch: int, keep_ratio: float) -> None: ...

    def add_sync_hook(self, hook: Callable[[], None]) -> None: ...

    def synchronize(self) -> None: ...

    def saved_snapshot(self, resuming: int | None = None) -> ScoreSnapshot | None: ...

    def check_sampler(self, method: Any, rank: int, world: int, localized: bool) -> None:
        """Raise ``ValueError`` naming the setting unless a sampler with these settings can plan from it."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
