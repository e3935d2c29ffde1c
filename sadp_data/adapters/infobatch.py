"""``InfoBatch``: a drop-in for InfoBatch's released API (Qin et al., ICLR 2024), without monkey-patching.

A user's InfoBatch script keeps its three lines and changes only the import::

    from sadp_data.adapters.infobatch import InfoBatch          # was: from infobatch import InfoBatch
    trainset = InfoBatch(trainset, num_epochs, prune_ratio=0.5, delta=0.875)
    loader = DataLoader(trainset, batch_size=128, sampler=trainset.sampler)
    ...
    loss = trainset.update(criterion(outputs, targets))   # criterion with reduction="none"

``method="infobatch"`` (the default) is InfoBatch's algorithm exactly: scores start at 3; each epoch
``e ≤ delta·num_epochs`` keeps every example whose last loss is at least the mean, and a random
``int(keep·|W|)`` of the well-learned set W (loss below the mean), ``keep = 1 − prune_ratio``
(clipped to [0.1, 1]), which are weighted ``1/keep``; later epochs visit all data with weight 1.
Its epoch length is data-dependent. Any other ``method`` (``"sadp"``, ``"random"``, …) plans
through ``SADPSampler`` at keep ratio ``1 − prune_ratio`` with an anneal tail of ``1 − delta``, scored
by the per-example loss that ``update`` receives (this API never sees the model; the spike-aware
score needs ``SpikeAwareScorer``).

How batches find their indices without InfoBatch's patch of ``DataLoader.__next__``: the sampler's
order is known, and batches arrive in order, so ``update`` takes the next ``len(values)`` positions
of the epoch's plan. The loader must therefore use ``trainset.sampler`` with ``in_order=True`` (the
default) and every batch's losses must reach ``update`` once, in order.

Data-parallel (``torch.distributed`` initialised when the ``InfoBatch`` is built): every rank plans
the same epoch from the same scores and iterates its contiguous, equal slice of it
(``sadp_data.distributed.rank_positions``: padded by repetition, never dropped), so ranks take equal
step counts; ``update`` all-gathers each batch's ``(index, loss)`` pairs and applies them in rank
order, so every rank's scores stay identical. Costs one small all-gather per batch.

Scores live in memory, or with ``store=`` (a ``ScoreStore`` for ``len(dataset)`` examples; under DDP
``sadp_data.distributed.open_store`` on every rank) also in the crash-safe sidecar: a new
``InfoBatch`` over the same store starts from the scores recorded so far (never-scored examples at
``INITIAL_SCORE``). The store needs finite, non-negative losses.

Resume: ``state_dict()`` holds the scores, the epoch's plan and this rank's position in it, with
``format_version`` and the data's ``fingerprint`` (the store's, or ``fingerprint=``);
``load_state_dict`` validates every field (``resume.ResumeStateError`` naming the key), then makes
the next ``iter(sampler)`` continue that epoch where it stopped (same world size mid-epoch), then
later epochs plan as usual.

Untrusted input is refused, never guessed: ``update`` with a count of losses other than the batch's
(``batch_size=``, else learned from the run's first batch), or with a NaN or infinite loss (one
would turn InfoBatch's mean-based pruning off); an empty dataset; a fractional ``num_epochs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .._arguments import require_integer, require_numbers
from ..distributed import per_rank, rank_and_world, rank_positions
from ..resume import MAX_EPOCH, MAX_WORLD, STATE_FORMAT, ResumeStateError, check_format, integer_field, require_state
from ..store import ScoreStore

#: InfoBatch's initial score of every example (larger than any early loss, so epoch 0 prunes nothing).
INITIAL_SCORE = 3.0


def infobatch_plan(
    scores: np.ndarray, keep_ratio: float, prune: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of InfoBatch's algorithm: ``(order, weights)`` (weights of the examples in ``order``).

    ``prune=False`` (after ``delta·num_epochs``): every example, shuffled, weight 1. Otherwise the
    examples with ``score >= mean`` are kept; of the rest, ``int(keep_ratio·|W|)`` drawn without
    replacement are kept with weight ``1/keep_ratio``; the kept ones are shuffled.
    """
    count = scores.shape[0]
    if not prune:
        return rng.permutation(count), np.ones(count, dtype=np.float32)
    well_learned = scores < scores.mean()
    candidates = np.flatnonzero(well_learned)
    chosen = rng.choice(candidates, int(keep_ratio * candidates.shape[0]), replace=False)
    weights = np.ones(count, dtype=np.float32)
    weights[chosen] = 1.0 / keep_ratio
    order = rng.permutation(np.concatenate([np.flatnonzero(~well_learned), chosen]))
    return order, weights[order]


class _Sampler(Sampler[int]):
    """``trainset.sampler``: each ``iter()`` starts the next epoch of its ``InfoBatch``."""

    def __init__(self, owner: InfoBatch) -> None:
        self.owner = owner

    def __iter__(self) -> Iterator[int]:
        return iter(self.owner.start_epoch().tolist())

    def __len__(self) -> int:
        return self.owner.next_length()


class InfoBatch(Dataset):
    """InfoBatch's ``InfoBatch(dataset, num_epochs, prune_ratio, delta)`` (see the module docstring).

    Items are the wrapped dataset's items, unchanged; other attributes are delegated to it. ``seed``
    fixes the draws: every epoch's plan is a pure function of (scores, seed, epoch).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_epochs: int,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        *,
        method: str = "infobatch",
        seed: int = 0,
        store: ScoreStore | None = None,
        batch_size: int | None = None,
        fingerprint: str | None = None,
    ) -> None:
        require_integer("num_epochs", num_epochs, minimum=1)
        require_integer("seed", seed, minimum=0)
        require_integer("batch_size", batch_size, minimum=1, optional=True)
        require_numbers(prune_ratio=prune_ratio, delta=delta)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("InfoBatch needs a non-empty dataset: len(dataset) is 0, so there is nothing to prune")
        if store is not None and fingerprint is not None and store.fingerprint not in (None, fingerprint):
            raise ValueError(f"fingerprint={fingerprint!r} but the store {store.path} is for {store.fingerprint!r}")
        if not 0.0 <= prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
        if not 0.0 < delta <= 1.0:
            raise ValueError(f"delta must be in (0, 1], got {delta}")
        self.dataset = dataset
        self.num_epochs = int(num_epochs)
        self.prune_ratio = float(prune_ratio)
        self.keep_ratio = min(1.0, max(0.1, 1.0 - prune_ratio))
        self.delta = float(delta)
        self.method = method
        self.seed = int(seed)
        self.batch_size = batch_size  #: checked against every update (else learned from the first one)
        #: the data's fingerprint, recorded in states and checked when one is loaded (default: the store's)
        self.fingerprint = fingerprint if fingerprint is not None else getattr(store, "fingerprint", None)
        self.scores = np.full(len(dataset), INITIAL_SCORE, dtype=np.float32)  # type: ignore[arg-type]
        self.store = store
        self.epoch = -1
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self._next: tuple[np.ndarray, np.ndarray] | None = None
        self._position = 0
        self._sampler = _Sampler(self)
        self._seen = np.zeros(len(dataset), dtype=np.uint32)  # type: ignore[arg-type]
        if store is not None:
            if store.num_examples != len(dataset):  # type: ignore[arg-type]
                raise ValueError(f"store holds {store.num_examples} examples; the dataset has {len(dataset)}")
            self._seen = store.seen().astype(np.uint32)
            self.scores = np.where(self._seen > 0, store.scores(), INITIAL_SCORE).astype(np.float32)
        self._resuming = False
        self._batch: int | None = None  # learned from the first update without batch_size
        self.rank, self.world = rank_and_world()
        if method != "infobatch":
            from ..methods import METHODS, get_method
            from ..schedule import KeepRatioSchedule

            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose infobatch or one of {sorted(METHODS)}")
            self._method = get_method(method)
            self._schedule = KeepRatioSchedule(
                1.0 - self.prune_ratio,
                self.num_epochs,
                warmup_epochs=1,
                anneal_fraction=1.0 - self.delta,
                shape=self._method.default_schedule,
            )

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    @property
    def sampler(self) -> Sampler[int]:
        """The sampler to give the DataLoader (the same object on every access)."""
        return self._sampler

    @property
    def stop_prune(self) -> float:
        """Epochs after ``delta·num_epochs`` train on all data (InfoBatch's ``stop_prune``)."""
        return self.num_epochs * self.delta

    def _make_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.method == "infobatch":
            rng = np.random.default_rng([self.seed, epoch])
            return infobatch_plan(self.scores, self.keep_ratio, epoch <= self.stop_prune, rng)
        from ..kernels.arrays import to_host
        from ..methods import PlanRequest

        settings = (len(self), self._schedule(min(epoch, self.num_epochs - 1)), self.seed, epoch, self.num_epochs)
        request = PlanRequest(self.scores.copy(), self._seen.copy(), *settings, 0.1, "auto")
        order, weights = self._method.plan(request)
        return to_host(order), to_host(weights).astype(np.float32)

    def _upcoming(self) -> np.ndarray:
        """The next epoch's order, planned once from the scores as they are now."""
        if self._next is None:
            self._next = self._make_plan(self.epoch + 1)
        return self._next[0]

    def _rank_order(self) -> np.ndarray:
        """Plan positions this rank visits in the current epoch (its slice, padded by repetition)."""
        assert self._plan is not None
        return rank_positions(self._plan[0].shape[0], self.rank, self.world)

    def next_length(self) -> int:
        """Examples the next ``start_epoch`` gives this rank (``len(sampler)``); plans the next epoch if due."""
        if self._resuming:
            return self._rank_order().shape[0] - self._position
        return per_rank(len(self._upcoming()), self.world)

    def start_epoch(self) -> np.ndarray:
        """This rank's examples of the epoch that starts now, in order (``iter(sampler)`` calls it): the rest
        of an epoch restored mid-way by ``load_state_dict``, else the next epoch, planned from the scores now."""
        if self._resuming:  # continue the restored epoch where it stopped
            self._resuming = False
            return self._plan[0][self._rank_order()[self._position :]]
        self._upcoming()
        self._plan, self._next = self._next, None
        self.epoch += 1
        self._position = 0
        return self._plan[0][self._rank_order()]

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: scores, seen counts, the epoch, its plan and this rank's position,
        with ``format_version`` (``resume.STATE_FORMAT``) and the data's ``fingerprint``."""
        plan = self._plan if self._plan is not None else (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if self.store is not None:
            self.store.flush()
        return {
            "format_version": STATE_FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "position": self._position,
            "scores": self.scores.copy(),
            "seen": self._seen.copy(),
            "plan_order": plan[0].copy(),
            "plan_weights": plan[1].copy(),
            "world_size": self.world,
            "method": self.method,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; the next ``iter(sampler)`` continues its epoch.

        Nothing changes until every field is validated (``resume.ResumeStateError`` naming the key, the
        value and what was expected): the format version, the data's fingerprint, the method and seed,
        scores and seen counts (one finite value per example), the plan (distinct examples in
        ``[0, len(dataset))`` with finite positive weights) and the position within this rank's part
        of it; mid-epoch, the world size too. A state without ``format_version`` (older) is read as
        version 1 when it validates and this InfoBatch has no fingerprint to compare.
        """
        state = require_state(state, "InfoBatch")
        check_format(state, self.fingerprint, f"set state['fingerprint'] = {self.fingerprint!r} and load it again")
        for name, value in (("method", self.method), ("seed", self.seed)):
            if name not in state or state[name] != value:
                raise ResumeStateError(
                    f"the state was saved with {name}={state.get(name)!r}; this InfoBatch has {value!r}"
                )
        epoch = integer_field(state, "epoch", -1, MAX_EPOCH)
        world = integer_field(state, "world_size", 1, MAX_WORLD)
        count = len(self)
        expected_of = {
            "scores": "one finite score per example",
            "seen": "one seen count >= 0 per example",
            "plan_order": f"distinct examples in [0, {count})",
            "plan_weights": "one finite weight > 0 per planned example",
        }
        scores = _state_array(state, "scores", np.float32, count, expected_of["scores"])
        seen = _state_array(state, "seen", np.int64, count, expected_of["seen"])
        order = _state_array(state, "plan_order", np.int64, None, expected_of["plan_order"])
        weights = _state_array(state, "plan_weights", np.float32, order.shape[0], expected_of["plan_weights"])
        for key, bad in (
            ("seen", seen < 0),
            ("plan_order", (order < 0) | (order >= count)),
            ("plan_weights", weights <= 0),
        ):
            if bad.any():
                value = state[key][int(np.flatnonzero(bad)[0])]
                raise ResumeStateError(f"state {key!r} holds {value!r}, outside its range: expected {expected_of[key]}")
        if np.unique(order).size != order.size:
            raise ResumeStateError("state 'plan_order' repeats an example: expected each planned example once")
        position = integer_field(state, "position", 0, per_rank(order.size, world) if order.size else 0)
        mid_epoch = order.size and 0 < position < per_rank(order.size, world)
        if mid_epoch and world != self.world:
            raise ResumeStateError(
                f"the state was saved mid-epoch with world_size={world}; resume with that many ranks "
                f"(this run has {self.world})"
            )
        self.scores, self._seen = scores, seen.astype(np.uint32)
        self.epoch, self._position = epoch, position
        self._plan = (order, weights) if order.size else None
        self._next = None
        self._resuming = bool(mid_epoch)

    def update(self, values: torch.Tensor) -> torch.Tensor:
        """Record the batch's per-example losses as its scores and return ``mean(weights · values)``.

        ``values`` must be unreduced: one loss per example of the batch, in batch order. Like InfoBatch's
        released code (which asserts it), the count must be the batch's: ``batch_size`` when given, else
        the size of the run's first batch (a batch that does not end the epoch is a full one), and at
        the epoch's end exactly the examples left; more losses than the epoch planned are refused too.
        A NaN or infinite loss (or, with a store, a negative one) is refused, nothing of the batch
        recorded: InfoBatch prunes below the mean of all scores, and one NaN would turn pruning off.
        """
        if not isinstance(values, torch.Tensor) or values.dim() != 1:
            raise ValueError("update() needs the unreduced per-example losses, a 1-D tensor (reduction='none')")
        if self._plan is None:
            raise RuntimeError("update() before any epoch started: build the DataLoader with sampler=trainset.sampler")
        order, weights = self._plan
        positions = self._rank_order()
        start = self._position
        stop = start + self._check_count(int(values.shape[0]), start, positions.shape[0])
        index = order[positions[start:stop]]
        self._record(index, values.detach().float().cpu().numpy())
        self._position = stop
        batch_weights = torch.from_numpy(weights[positions[start:stop]]).to(values.device, values.dtype)
        return (values * batch_weights).mean()

    def _check_count(self, count: int, start: int, planned: int) -> int:
        """``count`` if it is the number of losses the batch at ``start`` of this rank's ``planned`` must have."""
        left = planned - start
        if count > left:
            raise RuntimeError(
                f"epoch {self.epoch} planned {planned} examples for this rank but update() received {start + count}: "
                "is the DataLoader built with sampler=trainset.sampler, and each batch's loss passed to update() once?"
            )
        expected = self.batch_size or self._batch
        if expected is None:
            self._batch = count if count < left else None  # a batch that ends the epoch may be short
        elif count != min(expected, left):
            raise ValueError(
                f"update() received {count} losses but the batch holds {min(expected, left)} examples (batches of "
                f"{expected}, {left} left in epoch {self.epoch}): pass one unreduced loss per example of every batch, "
                "so that each score lands on its own example"
            )
        return count

    def _valid(self, losses: np.ndarray) -> np.ndarray:
        """Which ``losses`` can be scores: finite, and non-negative when a store keeps them."""
        return np.isfinite(losses) & ((losses >= 0) if self.store is not None else True)

    def _record(self, index: np.ndarray, losses: np.ndarray) -> None:
        """Scores of one batch, from every rank in rank order when data-parallel (identical on all ranks);
        every rank refuses the batch alike when any rank's losses are not valid scores."""
        pairs = [(index, losses)]
        if self.world > 1:
            import torch.distributed as dist

            pairs = [None] * self.world
            dist.all_gather_object(pairs, (index, losses))
        bad = [(rank, i) for rank, (_, losses) in enumerate(pairs) for i in np.flatnonzero(~self._valid(losses))]
        if bad:
            rank, position = bad[0]
            raise ValueError(
                f"update() got {len(bad)} NaN, infinite{' or negative' if self.store is not None else ''} losses in "
                f"epoch {self.epoch} (the first: rank {rank}'s batch position {position}, example "
                f"{int(pairs[rank][0][position])}, loss {pairs[rank][1][position]}): nothing of this batch was "
                "recorded. InfoBatch keeps the examples whose loss is at least the mean, so one NaN would turn "
                "pruning off; find the cause (a diverged model, log(0)) or clamp the losses before update()"
            )
        for ranks_index, ranks_losses in pairs:
            self.scores[ranks_index] = ranks_losses
            self._seen[ranks_index] += 1
            if self.store is not None:
                self.store.update(ranks_index, ranks_losses, epoch=self.epoch)


def _state_array(state: Any, key: str, dtype: type, length: int | None, expected: str) -> np.ndarray:
    """``state[key]`` as a 1-D array of ``dtype`` (``length`` values unless ``None``), finite, or refuse."""
    if key not in state:
        raise ResumeStateError(f"state {key!r} is missing: the state is incomplete (not from state_dict())")
    try:
        array = np.array(state[key], copy=True)
    except (TypeError, ValueError) as error:
        raise ResumeStateError(f"state {key!r} is not an array ({error}): expected {expected}") from error
    integral = np.issubdtype(dtype, np.integer)
    kind_ok = array.dtype.kind in ("iu" if integral else "iuf") or (array.size == 0 and array.dtype.kind == "f")
    shape_ok = array.ndim == 1 and (length is None or array.shape[0] == length)
    if not kind_ok or not shape_ok or (array.dtype.kind == "f" and not np.isfinite(array).all()):
        shown = f"{array.dtype} array of shape {array.shape}" if array.ndim else repr(state[key])
        raise ResumeStateError(
            f"state {key!r} is a {shown}: expected {expected} ({'any number of' if length is None else length} values)"
        )
    return array.astype(dtype)
