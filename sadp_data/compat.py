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
default) and every batch's losses must reach ``update`` once, in order. One process (no DDP yet).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

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
        return len(self.owner._upcoming())


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
        self.epoch = -1
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self._next: tuple[np.ndarray, np.ndarray] | None = None
        self._position = 0
        self._sampler = _Sampler(self)
        self._seen = np.zeros(len(dataset), dtype=np.uint32)  # type: ignore[arg-type]
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

    def _start_epoch(self) -> np.ndarray:
        self._upcoming()
        self._plan, self._next = self._next, None
        self.epoch += 1
        self._position = 0
        return self._plan[0]

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
        start = self._position
        stop = start + values.shape[0]
        if stop > order.shape[0]:
            raise RuntimeError(
                f"epoch {self.epoch} planned {order.shape[0]} examples but update() received {stop}: is the "
                "DataLoader built with sampler=trainset.sampler, and each batch's loss passed to update() once?"
            )
        index = order[start:stop]
        self._position = stop
        self.scores[index] = values.detach().float().cpu().numpy()
        self._seen[index] += 1
        batch_weights = torch.from_numpy(weights[start:stop]).to(values.device, values.dtype)
        return (values * batch_weights).mean()
