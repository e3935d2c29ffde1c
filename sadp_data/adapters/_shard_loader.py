"""``ShardLoader``: the DataLoader over ``ScoredShards`` that plans each epoch in this process and resumes mid-epoch.

Its state (every worker's position in its part) and the resume rules are described in
``sadp_data.adapters.webdataset``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sadp_data.plan import batch_count
from sadp_data.resume import check_worker_state


def _batch_size(batch: Any) -> int:
    """Examples in a collated batch (tuple, list or dict of tensors or arrays)."""
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return len(batch[0] if isinstance(batch, list | tuple) else batch)


class ShardLoader:
    """Iterates a DataLoader over ``dataset`` (a ``ScoredShards``) after making the epoch's plan in this process."""

    def __init__(self, dataset: Any, loader: Any) -> None:
        self.dataset = dataset
        self.loader = loader
        self.skipped_count = 0
        self._delivered_batches = 0
        self._delivered = 0

    @property
    def _workers(self) -> int:
        return max(1, self.loader.num_workers)

    def _remaining_parts(self) -> tuple[list[int], list[int]]:
        """Per worker: where in its part this epoch starts (resume) and how many of its positions remain."""
        count = self.dataset.sampler.epoch_length(self.dataset.sampler.epoch)
        base, extra = divmod(count, self._workers)  # the sizes of PlanSlice.worker_slice's parts
        starts = self.dataset.worker_starts() or [0] * self._workers
        return starts, [base + (worker < extra) - start for worker, start in enumerate(starts)]

    def _batches(self, remaining: int) -> int:
        return batch_count(remaining, self.loader.batch_size or 1, self.loader.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Shortcut for ``sampler.set_epoch``."""
        self.dataset.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches of the current epoch still to come (all of them unless resuming mid-epoch)."""
        return sum(self._batches(remaining) for remaining in self._remaining_parts()[1])

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state plus where each DataLoader worker is in its part of the epoch.

        Batches come from the workers in turn (``in_order``), skipping finished workers, so the
        batches delivered so far fix every worker's position. ``position`` is the examples delivered
        this epoch. Mid-epoch states need ``on_error="raise"`` (a skipped sample would shift a
        worker's position unseen by this process).
        """
        starts, remaining = self._remaining_parts()
        batch = self.loader.batch_size or 1
        if self.dataset.on_error == "skip" and self._delivered_batches and self._delivered_batches < len(self):
            raise ValueError("a mid-epoch state of ScoredShards needs on_error='raise' (skipped samples shift workers)")
        taken = [0] * self._workers
        worker = self.dataset.first_worker()
        limits = [self._batches(left) for left in remaining]
        for _ in range(min(self._delivered_batches, sum(limits))):
            while taken[worker] >= limits[worker]:
                worker = (worker + 1) % self._workers
            taken[worker] += 1
            worker = (worker + 1) % self._workers
        positions = [start + min(n * batch, left) for start, n, left in zip(starts, taken, remaining, strict=True)]
        return {
            **self.dataset.sampler.state_dict(),
            "position": self._delivered,
            "worker_positions": positions,
            "num_workers": self._workers,
            "batch_size": batch,
            "next_worker": worker,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next ``iter(loader)`` continues the saved epoch in every worker where it stopped.

        Validated first (``resume.check_worker_state``, then the sampler's checks): ``ResumeStateError``.
        """
        resume = check_worker_state(state, self._workers, self.loader.batch_size or 1, self.dataset.sampler)
        self.dataset.sampler.load_state_dict({**state, "position": 0})  # positions are per worker, not the sampler's
        self.dataset.resume_at(resume)

    def __iter__(self) -> Iterator[Any]:
        """The epoch's batches; with workers, samples they skipped (``on_error="skip"``) are counted here.

        Workers skip in their own copies of the dataset, so after the epoch the examples delivered
        are compared with the plan, and a shortfall is reported in this process (``skipped_count``,
        and a ``RuntimeWarning``): ``len(loader)`` counts planned batches, so it can only be known
        afterwards how many samples were missing.
        """
        _ = self.dataset.sampler.plan
        starts, remaining = self._remaining_parts()
        self._delivered_batches = 0
        self._delivered = delivered = resumed = sum(starts)
        for batch in self.loader:
            delivered += _batch_size(batch)
            self._delivered, self._delivered_batches = delivered, self._delivered_batches + 1
            yield batch
        self.dataset.resume_at(None)
        self.skipped_count = max(0, sum(remaining) - (delivered - resumed))
        if self.loader.num_workers > 0 and self.skipped_count and not self.loader.drop_last:
            import warnings

            warnings.warn(
                f"epoch {self.dataset.sampler.epoch}: the workers skipped {self.skipped_count} unreadable samples "
                f"of {len(self.dataset)} (on_error='skip'); their names are in the workers' warnings",
                RuntimeWarning,
                stacklevel=2,
            )
