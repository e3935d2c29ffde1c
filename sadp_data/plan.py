"""``EpochPlan``: one epoch's examples in visiting order with their weights, and the slices consumers read.

A plan is made once per epoch by ``SADPSampler`` (a pure function of the score snapshot, seed,
epoch and settings). Every data path delivers ``(index, weight)`` from it the same way, by
*position*: a data-parallel rank reads ``plan.rank_slice(rank, world)`` (equal contiguous slices,
the last padded, see ``sadp_data.distributed``), a loader worker the ``worker_slice`` of that, and
batch ``b`` of a slice read from position ``start`` holds positions
``[start + b·B, start + (b+1)·B)`` — so ``wrap``, ``ScoredShards`` and the FFCV loader slice indices
and weights from two arrays instead of looking each example up. ``weights_of`` is the lookup for
callers that only have indices. ``PlanSettings`` is the value every plan of a run follows: what a
saved state records and a resumed sampler must match.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .distributed import elastic_positions, rank_positions
from .schedule import KeepRatioSchedule

#: The schedule's fields a state's ``plan_settings`` records, under the names it records them by.
_SCHEDULE_KEYS = {"keep_ratio": "keep_ratio", "epochs": "epochs", "warmup_epochs": "warmup_epochs"}
_SCHEDULE_KEYS |= {"anneal_fraction": "anneal_fraction", "schedule": "shape"}


@dataclass(frozen=True)
class PlanSettings:
    """Everything that decides a sampler's plans besides the scores: one immutable value per sampler.

    Two samplers with equal settings plan every epoch identically from the same scores, so a saved
    state is resumable exactly when its settings equal the resuming sampler's. ``to_state`` writes the
    state's shape of every sadp-data since plan settings were recorded (``seed``, ``method`` and
    ``num_examples`` beside a ``plan_settings`` dict); ``from_state`` reads it back, so states saved
    before this class existed load unchanged.

    ``window`` is ``None`` unless the plan is localized (``shard_size`` or groups): it changes nothing
    otherwise. ``method_options`` are the method's fields as sorted ``(name, value)`` pairs.
    """

    num_examples: int
    seed: int
    method: str
    schedule: KeepRatioSchedule
    smoothing: float
    method_options: tuple[tuple[str, Any], ...] = ()
    shard_size: int | None = None
    window: int | None = None

    @classmethod
    def of(
        cls,
        num_examples: int,
        seed: int,
        method: str,
        schedule: KeepRatioSchedule,
        smoothing: float,
        options: Mapping[str, Any],
        shard_size: int | None,
        window: int | None,
    ) -> PlanSettings:
        """The settings of a sampler built from these arguments (``options``: the method's fields)."""
        options = tuple(sorted(options.items()))
        return cls(num_examples, seed, method, schedule, smoothing, options, shard_size, window)

    def keep_ratio(self, epoch: int) -> float:
        """The keep ratio these settings plan ``epoch`` with."""
        return self.schedule(epoch)

    def to_state(self) -> dict[str, Any]:
        """The ``plan_settings`` dict of a saved state (JSON-able): every setting but seed, method and size."""
        saved = {key: getattr(self.schedule, name) for key, name in _SCHEDULE_KEYS.items()}
        saved |= {"smoothing": self.smoothing, "method_options": dict(self.method_options)}
        return saved | {"shard_size": self.shard_size, "window": self.window}

    @classmethod
    def state_keys(cls) -> list[str]:
        """The keys of ``to_state``'s dict, sorted."""
        return sorted([*_SCHEDULE_KEYS, "smoothing", "method_options", "shard_size", "window"])

    @classmethod
    def from_state(cls, num_examples: int, seed: int, method: str, saved: Mapping[str, Any]) -> PlanSettings:
        """The settings a state recorded (``saved``: its ``plan_settings``, with exactly ``state_keys()``).

        Raises ``ValueError`` naming the setting when a value cannot be a setting (a keep ratio outside
        (0, 1], say): such a state was not saved by a sampler.
        """
        try:
            schedule = KeepRatioSchedule(**{name: saved[key] for key, name in _SCHEDULE_KEYS.items()})
        except TypeError as error:
            raise ValueError(f"a schedule setting is not a number: {error}") from error
        options = saved["method_options"]
        if not isinstance(options, Mapping):
            raise ValueError(f"method_options must be a dict, got {options!r}")
        smoothing, shard_size, window = saved["smoothing"], saved["shard_size"], saved["window"]
        return cls.of(num_examples, seed, method, schedule, smoothing, options, shard_size, window)

    def differences(self, other: PlanSettings) -> list[tuple[str, Any, Any]]:
        """``(state key, this value, other's value)`` of every setting in which ``other`` differs, in
        ``to_state`` order after ``num_examples``, ``seed`` and ``method``."""
        mine = {"num_examples": self.num_examples, "seed": self.seed, "method": self.method, **self.to_state()}
        theirs = {"num_examples": other.num_examples, "seed": other.seed, "method": other.method, **other.to_state()}
        return [(key, value, theirs[key]) for key, value in mine.items() if theirs[key] != value]


def batch_count(count: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches of ``batch_size`` in ``count`` positions (the last, partial one counts unless ``drop_last``)."""
    return count // batch_size if drop_last else -(-count // batch_size)


@dataclass(frozen=True)
class PlanSlice:
    """Consecutive positions of a plan that one consumer visits: example indices and weights, aligned."""

    order: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return int(self.order.shape[0])

    def worker_slice(self, worker: int, workers: int) -> PlanSlice:
        """Part ``worker`` of ``workers`` near-equal contiguous parts (``np.array_split``: the first are longer)."""
        if workers <= 0 or not 0 <= worker < workers:
            raise ValueError(f"worker must be in [0, workers) with workers > 0, got worker={worker}, workers={workers}")
        base, extra = divmod(len(self), workers)
        start = worker * base + min(worker, extra)
        stop = start + base + (worker < extra)
        return PlanSlice(self.order[start:stop], self.weights[start:stop])

    def batches(
        self, start: int, batch_size: int, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(indices int64, weights float32)`` tensors of consecutive batches from position ``start``.

        Fresh tensors (copies): a training loop that edits them in place cannot change the plan.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for position in range(start, len(self), batch_size):
            end = min(position + batch_size, len(self))
            if drop_last and end - position < batch_size:
                return
            yield (
                torch.from_numpy(self.order[position:end].astype(np.int64)),
                torch.from_numpy(self.weights[position:end].astype(np.float32)),
            )


@dataclass
class EpochPlan:
    """The examples of one epoch in visiting order, with their importance weights."""

    epoch: int
    keep_ratio: float
    order: np.ndarray
    weights: np.ndarray
    num_examples: int
    snapshot_version: int
    _lookup: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.order.shape[0])

    def rank_slice(self, rank: int = 0, world: int = 1, resumed_from: tuple[int, int] | None = None) -> PlanSlice:
        """The positions data-parallel ``rank`` of ``world`` visits (the whole plan for one rank).

        ``resumed_from=(saved_world, delivered)``: what is left of the epoch after a checkpoint taken
        at another world size (``distributed.elastic_positions``).
        """
        if resumed_from is not None:
            positions = elastic_positions(len(self), *resumed_from, rank, world)
            return PlanSlice(self.order[positions], self.weights[positions])
        if world == 1 and rank == 0:
            return PlanSlice(self.order, self.weights)
        positions = rank_positions(len(self), rank, world)
        return PlanSlice(self.order[positions], self.weights[positions])

    def weights_of(self, indices: Any) -> np.ndarray:
        """Weights of ``indices`` (float32); raises if an index is not part of this epoch's plan."""
        index = np.asarray(indices.detach().cpu().numpy() if hasattr(indices, "detach") else indices)
        index = index.astype(np.int64, copy=False).reshape(-1)
        if self._lookup is None:
            lookup = np.full(self.num_examples, np.nan, dtype=np.float32)
            lookup[self.order] = self.weights
            self._lookup = lookup
        if index.size and (index.min() < 0 or index.max() >= self.num_examples):
            raise IndexError(f"indices out of range [0, {self.num_examples}) for epoch {self.epoch}")
        found = self._lookup[index]
        missing = np.flatnonzero(np.isnan(found))
        if missing.size:
            raise KeyError(
                f"examples {index[missing[:5]].tolist()} are not in the plan of epoch {self.epoch}; "
                "was set_epoch called on the sampler that feeds this loader?"
            )
        return found


@dataclass
class RankPlan(EpochPlan):
    """One rank's slice of an epoch plan that no rank holds whole (a ``PartitionedScoreStore``).

    ``order`` and ``weights`` are positions ``rank_positions(K, rank, world)`` of the global plan, so
    ``rank_slice`` returns them for this rank alone and ``weights_of`` finds indices of this slice
    (by binary search: no array of size ``N``). Elastic resume needs the whole plan and is refused.
    """

    rank: int = 0
    world: int = 1

    def rank_slice(self, rank: int = 0, world: int = 1, resumed_from: tuple[int, int] | None = None) -> PlanSlice:
        if (rank, world) != (self.rank, self.world) or resumed_from is not None:
            raise ValueError(
                f"this plan is rank {self.rank}'s slice of {self.world} (a partitioned score table): it cannot give "
                f"rank {rank} of {world}{' after an elastic resume' if resumed_from is not None else ''}"
            )
        return PlanSlice(self.order, self.weights)

    def weights_of(self, indices: Any) -> np.ndarray:
        index = np.asarray(indices.detach().cpu().numpy() if hasattr(indices, "detach") else indices)
        index = index.astype(np.int64, copy=False).reshape(-1)
        if self._lookup is None:  # here: the slice's positions in index order, sorted once
            self._lookup = np.argsort(self.order, kind="stable")
        ranked = self._lookup
        where = np.minimum(np.searchsorted(self.order[ranked], index), max(0, len(self) - 1))
        missing = np.flatnonzero(self.order[ranked][where] != index) if len(self) else np.arange(index.size)
        if missing.size:
            raise KeyError(
                f"examples {index[missing[:5]].tolist()} are not in rank {self.rank}'s slice of epoch {self.epoch}"
            )
        return self.weights[ranked[where]].astype(np.float32)
