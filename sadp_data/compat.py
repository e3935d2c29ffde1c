"""``InfoBatch``: a drop-in for InfoBatch's released API (Qin et al., ICLR 2024), without monkey-patching.

A user's InfoBatch script keeps its three lines and changes only the import::

    from sadp_data.compat import InfoBatch          # was: from infobatch import InfoBatch
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

Resume: ``state_dict()`` holds the scores, the epoch's plan and this rank's position in it;
``load_state_dict`` makes the next ``iter(sampler)`` continue that epoch where it stopped (same
world size mid-epoch), then later epochs plan as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .distributed import per_rank, rank_and_world, rank_positions
from .store import ScoreStore

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
        return iter(self.owner._start_epoch().tolist())

    def __len__(self) -> int:
        owner = self.owner
        if owner._resuming:
            return owner._rank_order().shape[0] - owner._position
        return per_rank(len(owner._upcoming()), owner.world)


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
    ) -> None:
        if num_epochs <= 0:
            raise ValueError(f"num_epochs must be positive, got {num_epochs}")
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
        self.rank, self.world = rank_and_world()
        if method != "infobatch":
            from .methods import METHODS, get_method
            from .schedule import KeepRatioSchedule

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
        from .kernels.arrays import to_host
        from .methods import PlanRequest

        request = PlanRequest(
            self.scores.copy(),
            self._seen.copy(),
            len(self),
            self._schedule(min(epoch, self.num_epochs - 1)),
            self.seed,
            epoch,
            self.num_epochs,
            0.1,
            "auto",
        )
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

    def _start_epoch(self) -> np.ndarray:
        if self._resuming:  # continue the restored epoch where it stopped
            self._resuming = False
            return self._plan[0][self._rank_order()[self._position :]]
        self._upcoming()
        self._plan, self._next = self._next, None
        self.epoch += 1
        self._position = 0
        return self._plan[0][self._rank_order()]

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: scores, seen counts, the epoch, its plan and this rank's position."""
        plan = self._plan if self._plan is not None else (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if self.store is not None:
            self.store.flush()
        return {
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
        """Restore ``state_dict()``; the next ``iter(sampler)`` continues its epoch (``ValueError`` naming the
        setting when the method, seed, size or — mid-epoch — world size differ)."""
        for name, value in (("method", self.method), ("seed", self.seed)):
            if state[name] != value:
                raise ValueError(f"the state was saved with {name}={state[name]!r}; this InfoBatch has {value!r}")
        if np.asarray(state["scores"]).shape != self.scores.shape:
            raise ValueError(f"the state holds {len(state['scores'])} scores; this dataset has {len(self)} examples")
        order = np.asarray(state["plan_order"], dtype=np.int64)
        mid_epoch = order.size and 0 < state["position"] < per_rank(order.size, int(state["world_size"]))
        if mid_epoch and int(state["world_size"]) != self.world:
            raise ValueError(
                f"the state was saved mid-epoch with world_size={state['world_size']}; resume with that many ranks"
            )
        self.scores = np.asarray(state["scores"], dtype=np.float32).copy()
        self._seen = np.asarray(state["seen"], dtype=np.uint32).copy()
        self.epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._plan = (order, np.asarray(state["plan_weights"], dtype=np.float32)) if order.size else None
        self._next = None
        self._resuming = bool(mid_epoch)

    def update(self, values: torch.Tensor) -> torch.Tensor:
        """Record the batch's per-example losses as its scores and return ``mean(weights · values)``.

        ``values`` must be unreduced (one loss per example of the batch, in batch order). Raises when
        more losses arrive than the epoch planned (a batch fed twice, or a loader not built with
        ``sampler=trainset.sampler``).
        """
        if not isinstance(values, torch.Tensor) or values.dim() != 1:
            raise ValueError("update() needs the unreduced per-example losses, a 1-D tensor (reduction='none')")
        if self._plan is None:
            raise RuntimeError("update() before any epoch started: build the DataLoader with sampler=trainset.sampler")
        order, weights = self._plan
        positions = self._rank_order()
        start = self._position
        stop = start + values.shape[0]
        if stop > positions.shape[0]:
            raise RuntimeError(
                f"epoch {self.epoch} planned {positions.shape[0]} examples for this rank but update() received "
                f"{stop}: is the DataLoader built with sampler=trainset.sampler, and each batch's loss passed to "
                "update() once?"
            )
        index = order[positions[start:stop]]
        self._position = stop
        self._record(index, values.detach().float().cpu().numpy())
        batch_weights = torch.from_numpy(weights[positions[start:stop]]).to(values.device, values.dtype)
        return (values * batch_weights).mean()

    def _record(self, index: np.ndarray, losses: np.ndarray) -> None:
        """Scores of one batch, from every rank in rank order when data-parallel (identical on all ranks)."""
        pairs = [(index, losses)]
        if self.world > 1:
            import torch.distributed as dist

            pairs = [None] * self.world
            dist.all_gather_object(pairs, (index, losses))
        for ranks_index, ranks_losses in pairs:
            self.scores[ranks_index] = ranks_losses
            self._seen[ranks_index] += 1
            if self.store is not None:
                self.store.update(ranks_index, ranks_losses, epoch=self.epoch)
