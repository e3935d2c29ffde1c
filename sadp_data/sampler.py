"""``SADPSampler``: a torch ``Sampler`` that draws each epoch's examples by importance.

Each epoch gets an ``EpochPlan``: the exact list of example indices to visit, in order, and their
importance weights. The plan is a pure function of (score snapshot, seed, epoch, settings): the
snapshot is taken from the ``ScoreStore`` once, the first time the epoch's plan is needed, and its
version is recorded, so every process that plans the same epoch from the same snapshot visits the
same examples in the same order.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, Sampler

from ._arguments import require_integer, require_numbers
from .diagnostics import plan_statistics
from .distributed import per_rank, rank_and_world, remaining_positions
from .distributed.partitioned_plan import plan_rank_slice
from .kernels import Backend, localize, sample_size
from .methods import METHODS, PlanRequest, get_method
from .methods.base import to_host
from .plan import EpochPlan, PlanSettings, PlanSlice, RankPlan, batch_count
from .resume import STATE_FORMAT, check_state, find_snapshot, resumed_from, sampler_fingerprint
from .schedule import KeepRatioSchedule, Shape
from .store import ScoreSnapshot
from .store.table import ScoreTable


class SADPSampler(Sampler[int]):
    """Yields the example indices of the current epoch's plan; exact ``len`` per epoch.

    Args:
        store: the ``ScoreStore`` whose scores drive sampling (required for ``method="sadp"``).
        keep_ratio: fraction of examples per pruned epoch, in (0, 1].
        epochs: total epochs of the run; enables the anneal tail and ``theoretical_speedup``.
        batch_size: needed only for ``num_batches``/``total_steps``/``batch_sampler``.
        num_examples: dataset size when no store is given (``method="random"``).
        seed: base seed; epoch ``e`` uses the stream ``(seed, e)``.
        warmup_epochs, anneal_fraction, schedule: see ``KeepRatioSchedule``. ``schedule=None`` takes
            the method's ``default_schedule``: ``"decreasing"`` for ``sadp`` (and
            ``loss_proportional``, which shares its draw), ``"constant"`` for the baselines; the
            decreasing schedule spends the same total budget as the constant one.
        smoothing: uniform mixing λ of ``sadp``'s draw (docs/method.md §2): every weight is at most
            ``(1/λ)^weight_power``, so 1 by default (unweighted) and 1/λ with Horvitz–Thompson weights.
        method: ``"sadp"`` (spike-aware importance sampling) or a baseline from
            ``sadp_data.methods`` (``full``, ``random`` — a fresh uniform sample every epoch —,
            ``random_static``, ``infobatch``, ``ucb``, ``epsilon_greedy``, ``loss_proportional``; see
            ``docs/baselines.md``). Methods that read scores need a store, filled by a
            ``SpikeAwareScorer(score=sampler.score_kind)``. ``full`` always keeps every example.
        method_options: options of the method (e.g. ``{"c": 0.5}`` for ``ucb``).
        backend: kernel backend for ``plan_epoch`` (``auto`` = fastest available).
        shard_size, window: for sharded stores, visit shards of ``shard_size`` consecutive examples
            in random order, shuffled within windows of ``window`` shards (see
            ``kernels.reference.locality_order``), instead of a full shuffle.
        groups: instead of ``shard_size``, the storage group (shard, page) of every example, for
            stores whose groups are not equal runs of consecutive examples (e.g. FFCV pages).
        num_replicas, rank: data-parallel world size and this process's rank (default: from
            ``torch.distributed`` when initialised, else 1 and 0). Every rank plans the same epoch
            and iterates its own equal slice of it (``sadp_data.distributed``).

    Like ``DistributedSampler``, call ``set_epoch(e)`` before each epoch.
    """

    def __init__(
        self,
        store: ScoreTable | None = None,
        keep_ratio: float = 0.7,
        epochs: int | None = None,
        *,
        batch_size: int | None = None,
        num_examples: int | None = None,
        seed: int = 0,
        warmup_epochs: int = 1,
        anneal_fraction: float = 0.125,
        schedule: Shape | None = None,
        smoothing: float = 0.1,
        method: str = "sadp",
        method_options: dict[str, Any] | None = None,
        backend: Backend = "auto",
        shard_size: int | None = None,
        window: int = 4,
        groups: np.ndarray | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        require_integer("seed", seed, minimum=0)
        require_integer("epochs", epochs, minimum=1, optional=True)
        require_integer("batch_size", batch_size, minimum=1, optional=True)
        require_integer("num_examples", num_examples, minimum=1, optional=True)
        require_integer("warmup_epochs", warmup_epochs, minimum=0)
        require_numbers(keep_ratio=keep_ratio, smoothing=smoothing, anneal_fraction=anneal_fraction)
        if method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
        self._method = get_method(method, **(method_options or {}))
        if store is None and self._method.score is not None:
            raise ValueError(f"method={method!r} needs a ScoreStore (store=...) holding {self._method.score!r} scores")
        if store is not None and num_examples is not None and num_examples != store.num_examples:
            raise ValueError(f"num_examples={num_examples} but the store holds {store.num_examples} examples")
        if store is None and (num_examples is None or num_examples <= 0):
            raise ValueError("without a store, pass num_examples > 0")
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
        if shard_size is not None and groups is not None:
            raise ValueError("pass shard_size or groups, not both")
        default_rank, default_world = rank_and_world()
        num_replicas = default_world if num_replicas is None else int(num_replicas)
        rank = default_rank if rank is None else int(rank)
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        localized = shard_size is not None or groups is not None
        if store is not None:
            store.check_sampler(self._method, rank, num_replicas, localized)
        self.store = store
        self.num_examples = store.num_examples if store is not None else int(num_examples)
        if method == "full":
            keep_ratio = 1.0
        shape = self._method.default_schedule if schedule is None else schedule
        self.schedule = KeepRatioSchedule(keep_ratio, epochs, warmup_epochs, anneal_fraction, shape)
        self.schedule.warn_if_never_pruned(stacklevel=2)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.smoothing = float(smoothing)
        self.method = method
        self.backend = backend
        self.shard_size = shard_size
        self.window = window
        self.groups = None if groups is None else np.asarray(groups)
        if self.groups is not None and self.groups.shape != (self.num_examples,):
            raise ValueError(f"groups must hold one group per example ({self.num_examples}), got {self.groups.shape}")
        self.num_replicas = num_replicas
        self.rank = rank
        options, where = dataclasses.asdict(self._method), (shard_size, window if localized else None)
        #: Every setting the run's plans follow besides the scores: what ``state_dict`` records and resume compares.
        self.plan_settings = PlanSettings.of(
            self.num_examples, self.seed, method, self.schedule, self.smoothing, options, *where
        )
        self.epoch = 0
        self._plan: EpochPlan | None = None
        self._stats: dict[int, dict[str, Any]] = {}
        self._resume_snapshot: ScoreSnapshot | None = None
        self._start = 0
        self._position = 0
        self._iteration: tuple[int, int, Iterator[int]] | None = None
        self._elastic: tuple[int, int] | None = None  # (saved world size, delivered per rank): elastic resume
        self._passes = 0  # iterations started at this epoch since the last set_epoch (a second one warns)

    @property
    def epochs(self) -> int | None:
        return self.schedule.epochs

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate next; its plan is made on first use from a fresh snapshot."""
        require_integer("epoch", epoch, minimum=0)
        if self.epochs is not None and epoch >= self.epochs:
            warnings.warn(
                f"set_epoch({epoch}) is past the run's {self.epochs} epochs (0 to {self.epochs - 1}): "
                "it trains on all data, like the anneal tail",
                RuntimeWarning,
                stacklevel=2,
            )
        if epoch != self.epoch:
            self._plan = None
            self._start = 0
            self._position = 0
            self._iteration = None
            self._elastic = None
            self._resume_snapshot = None  # a resumed epoch's snapshot is for that epoch only
        self._passes = 0
        self.epoch = int(epoch)
        if self.store is not None:  # scores recorded from now on carry this epoch, even before the plan is made
            self.store.set_epoch(self.epoch)

    @property
    def resume_position(self) -> int:
        """Position in the current epoch where the next ``__iter__`` starts (0 unless resuming)."""
        return self._start

    def keep_ratio(self, epoch: int | None = None) -> float:
        """Keep ratio of ``epoch`` (default: the current one)."""
        return self.schedule(self.epoch if epoch is None else epoch)

    @property
    def plan(self) -> EpochPlan:
        """The current epoch's plan (made once per epoch)."""
        if self._plan is None:
            self._plan = self._make_plan(self.epoch)
        return self._plan

    @property
    def score_kind(self) -> str | None:
        """The score the method reads (``"spike_aware"``, ``"loss"``) or ``None``: what the scorer must record."""
        return self._method.score

    def _make_plan(self, epoch: int) -> EpochPlan:
        """Plan ``epoch`` after crossing the store's epoch boundary (``ScoreStore.begin_epoch``), once.

        The boundary synchronises the ranks, stamps the epoch, takes (or, when resuming, reuses) the
        snapshot, persists it for pruned epochs of methods that read scores, and records the keep ratio.
        """
        keep = self.schedule(epoch)
        scores = seen = last_epoch = None
        version = 0
        if self.store is not None:
            reads_scores = self._method.score is not None
            snapshot = self.store.begin_epoch(
                epoch,
                keep,
                resume_from=self._resume_snapshot,
                persist_snapshot=reads_scores,
                num_replicas=self.num_replicas,
            )
            version = snapshot.version
            if reads_scores:
                scores, seen, last_epoch = snapshot.scores, snapshot.seen, snapshot.last_epoch
        self._resume_snapshot = None
        if self.store is not None and self.store.rank_region is not None:  # this rank's slice only: no array of N
            settings = {"keep_ratio": keep, "seed": self.seed, "epoch": epoch, "smoothing": self.smoothing}
            order, weights = plan_rank_slice(self._method, snapshot, settings, self.store)
            request = PlanRequest(None, None, self.num_examples, keep, self.seed, epoch, self.epochs, 0.0, "numpy")
            self._stats[epoch] = plan_statistics(request, order, weights, {"rank_slice": True})
            where = {"rank": self.rank, "world": self.num_replicas}
            return RankPlan(epoch, keep, order, weights, self.num_examples, version, **where)
        settings = (self.num_examples, keep, self.seed, epoch, self.epochs, self.smoothing, self.backend)
        request = PlanRequest(scores, seen, *settings, last_epoch)
        order, weights, info = self._method.plan_with_info(request)
        order, weights = to_host(order), to_host(weights)
        self._stats[epoch] = plan_statistics(request, order, weights, info)
        if self.shard_size is not None or self.groups is not None:
            where = {"shard_size": self.shard_size, "window": self.window, "groups": self.groups}
            order, weights = localize(order, weights, seed=self.seed, epoch=epoch, **where)
        return EpochPlan(epoch, keep, to_host(order), to_host(weights), self.num_examples, version)

    def stats(self) -> list[dict[str, Any]]:
        """Diagnostics of every epoch this sampler planned, oldest first (see ``plan_statistics``).

        One JSON-able dict per epoch: its keep ratio, sample size, the effective sample size of the
        weights, the fraction of inclusion probabilities capped at 1, how stale the drawn examples'
        scores were, the scores' second-moment ratio, and what the method decided (e.g. SADP's
        smoothing). Computed when the plan is made, from the plan and its snapshot alone (O(N)).
        """
        return [self._stats[epoch] for epoch in sorted(self._stats)]

    def rank_slice(self) -> PlanSlice:
        """This rank's part of the current epoch's plan: its examples in visiting order, with their weights."""
        return self.plan.rank_slice(self.rank, self.num_replicas, self._elastic)

    def rank_order(self) -> np.ndarray:
        """This rank's examples of the current epoch in visiting order (its slice of the plan)."""
        return self.rank_slice().order

    def remaining(self) -> np.ndarray:
        """This rank's examples still to visit this epoch (all of them unless resuming).

        Like starting ``iter(sampler)``, this consumes the resume position: call it once per epoch.
        A second pass at one epoch without ``set_epoch`` warns: a loop that forgets it would replay
        epoch 0 (the full-data warm-up) all run long. A warning, not an error: ``set_epoch(e)`` again
        replays an epoch on purpose, silently.
        """
        if self._passes:
            warnings.warn(
                f"the sampler is iterated again at epoch {self.epoch} without set_epoch(), replaying its plan; "
                "call sampler.set_epoch(epoch) before each epoch (or set_epoch again to replay on purpose)",
                RuntimeWarning,
                stacklevel=2,
            )
        self._passes += 1
        start, self._start = self._start, 0
        self._position = start
        self._iteration = None
        return self.rank_order()[start:]

    def __iter__(self) -> Iterator[int]:
        """This rank's remaining examples, planned (and the resume position consumed) at the first ``next``.

        The examples come from a list iterator (``yield from``: no bookkeeping per example); the
        position for ``state_dict`` is read from that iterator's remaining length when asked.
        """
        order = self.remaining().tolist()
        iterator = iter(order)
        self._iteration = (self._position, len(order), iterator)
        yield from iterator

    def _current_position(self) -> int:
        """Examples of this epoch yielded so far (``_position`` plus what the live iterator has given)."""
        if self._iteration is None:
            return self._position
        start, total, iterator = self._iteration
        return start + total - operator.length_hint(iterator)

    def epoch_length(self, epoch: int | None = None) -> int:
        """Examples this rank visits in ``epoch`` (default: the current one), known before any plan."""
        count = sample_size(self.num_examples, self.keep_ratio(epoch))
        if self._elastic is not None and epoch in (None, self.epoch):
            count = remaining_positions(count, *self._elastic).shape[0]
        return per_rank(count, self.num_replicas)

    def __len__(self) -> int:
        """Examples this epoch still yields on this rank: ``ceil(round(keep_ratio·N) / num_replicas)``."""
        return self.epoch_length() - self._start

    def weights(self, indices: Any) -> np.ndarray:
        """Importance weights of ``indices`` in the current epoch (float32)."""
        return self.plan.weights_of(indices)

    def num_batches(self, epoch: int | None = None, drop_last: bool = False) -> int:
        """Batches in ``epoch`` for ``batch_size`` (known in advance for every epoch)."""
        if self.batch_size is None:
            raise ValueError("num_batches needs batch_size set on the sampler")
        count = self.epoch_length(epoch)
        return batch_count(count, self.batch_size, drop_last)

    def total_steps(self, drop_last: bool = False) -> int:
        """Optimizer steps over the whole run: pass to step-based LR schedulers (e.g. OneCycleLR).

        Every epoch's length is fixed by the schedule before training starts, so this is exact.
        """
        if self.epochs is None:
            raise ValueError("total_steps needs epochs set on the sampler")
        return sum(self.num_batches(e, drop_last) for e in range(self.epochs))

    def theoretical_speedup(self) -> float:
        """Run length in epochs divided by the data-epochs actually visited: ``E / Σ_e k_e``."""
        return self.schedule.theoretical_speedup()

    def plan_summary(self) -> str:
        """A table of the run, to print before training: each epoch's phase, keep ratio and examples
        drawn (all ranks), the total cost and the theoretical speedup; it notes a run that cannot end
        on full data. Known from the settings alone, so nothing is planned or read.
        ``sampler.schedule.budget(sampler.num_examples)`` gives the same as data."""
        if self.epochs is None:
            raise ValueError("plan_summary needs epochs set on the sampler")
        return str(self.schedule.budget(self.num_examples))

    def batch_sampler(self, drop_last: bool = False) -> BatchSampler:
        """A ``BatchSampler`` over this sampler (for ``DataLoader(batch_sampler=...)``)."""
        if self.batch_size is None:
            raise ValueError("batch_sampler needs batch_size set on the sampler")
        return BatchSampler(self, self.batch_size, drop_last)

    def state_dict(self) -> dict[str, Any]:
        """Small, JSON-able state: where in which epoch, with which seed and score snapshot, over which
        data (``fingerprint``: the store's), in format ``format_version`` (``resume.STATE_FORMAT``).

        Flushes the store first (a no-op on mirrors), so a checkpoint never refers to scores or a
        snapshot that are not on disk yet.
        """
        if self.store is not None:
            self.store.flush()
        return {
            "format_version": STATE_FORMAT,
            "fingerprint": sampler_fingerprint(self),
            "epoch": self.epoch,
            "position": self._current_position(),
            "seed": self.seed,
            "num_examples": self.num_examples,
            "method": self.method,
            "num_replicas": self.num_replicas,
            "snapshot_version": self._plan.snapshot_version if self._plan is not None else None,
            "resumed_from": None if self._elastic is None else list(self._elastic),
            "plan_settings": self.plan_settings.to_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``: the next ``__iter__`` resumes the saved epoch at the saved position.

        Nothing changes until the state is validated (``resume.check_state``: a ``ResumeStateError``
        names the key, the value and what was expected, or the other data's fingerprint).

        The remaining order is identical to the interrupted run's: the plan is rebuilt from the score
        snapshot it was made from — the store's current scores if they are still at the saved
        version, else the snapshot the sampler persisted when it planned the epoch
        (``ScoreStore.save_snapshot``; warm-up/anneal epochs and ``method="random"`` do not depend on
        scores). Only if that snapshot is missing (a crash before its first flush) is the plan rebuilt
        from the current scores, with a ``RuntimeWarning``. A state saved mid-epoch at another world
        size resumes elastically: the examples the saved ranks had not delivered yet are split over
        this world's ranks in plan order (``distributed.elastic_positions``), each delivered once
        (plus padding); the resumed epoch then finishes at this world size.
        """
        fields = check_state(self, state)
        self.set_epoch(fields["epoch"])
        self._plan = None
        self._elastic = resumed_from(fields, self.num_replicas)
        elastic_now = self._elastic is not None and fields["num_replicas"] != self.num_replicas
        self._start = self._position = 0 if elastic_now else fields["position"]
        self._iteration = None
        saved = fields["snapshot_version"]
        if saved is None or self._method.score is None or self.keep_ratio() >= 1.0 or self.store is None:
            return
        self._resume_snapshot = find_snapshot(self.store, saved, self.epoch)
