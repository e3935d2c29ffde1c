"""Hugging Face Accelerate integration: an importance-sampled train loader that ``Accelerator.prepare`` keeps.

``prepare_loader(accelerator, dataset, sampler, **loader_kwargs)`` returns an ``AcceleratedLoader``:
the ``sadp_data.wrap`` loader (batches end in ``(index, weight)``) with every batch moved to
``accelerator.device``, taking part in Accelerate's gradient state so ``accelerator.accumulate``
steps the optimizer at the end of every epoch as it does with prepared loaders.

Why not ``accelerator.prepare(DataLoader(dataset, sampler=sampler))``: with more than one process,
``prepare`` rebuilds every map-style ``DataLoader`` around a ``BatchSamplerShard``, which hands each
process every ``num_processes``-th batch of what the loader yields. No ``DataLoaderConfiguration``
avoids that for map-style data: ``split_batches`` splits each batch instead, ``even_batches`` only
pads, ``dispatch_batches=True`` iterates on process 0 alone and slices, ``use_seedable_sampler``
replaces ``RandomSampler`` only. The ``SADPSampler`` already gives every process its own equal slice
of the plan, so any of these would train each process on a fraction of its slice (or on process 0's).
The supported way is to keep the loader out of ``DataLoader`` preparation: ``AcceleratedLoader`` is
not a ``DataLoader``, so ``prepare(model, optimizer, loader)`` returns it unchanged (prepare the model
and optimizer as usual). ``check_not_resharded`` refuses a loader ``prepare`` did re-shard.

Guarantees: one plan per epoch, an equal, disjoint slice per process (``sadp_data.distributed``);
``len(loader)`` is exact for the epoch; ``loader.set_epoch(e)`` reaches the sampler (call it every
epoch, as with ``DistributedSampler``); ``state_dict``/``load_state_dict`` (also through
``accelerator.register_for_checkpointing(loader)`` and ``save_state``/``load_state``) resume mid-epoch
in the identical order. Build the store, sampler and scorer after ``Accelerator()``, which initialises
``torch.distributed``. Trade-offs: Accelerate's own ``skip_first_batches`` and dataloader state
saving do not apply (the loader's state replaces them), and a prepared LR scheduler steps
``num_processes`` times per optimizer step unless ``split_batches=True``: size it with
``loader.total_steps() * accelerator.num_processes``, or do not prepare it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from accelerate import Accelerator
from accelerate.data_loader import BatchSamplerShard, DataLoaderStateMixin
from accelerate.state import GradientState
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sadp_data.adapters._wrapped import WrappedLoader
from sadp_data.distributed import rank_and_world
from sadp_data.loader import SADPLoader, wrap
from sadp_data.plan import batch_count
from sadp_data.sampler import SADPSampler

__all__ = ["AcceleratedLoader", "check_not_resharded", "prepare_loader"]


class AcceleratedLoader(WrappedLoader, DataLoaderStateMixin):
    """``sadp_data.wrap``'s batches on ``accelerator.device``, seen by Accelerate's gradient state.

    Iterating yields the batches of the sampler's current epoch from its resume position, each moved
    with ``accelerate.utils.send_to_device`` (non-blocking when the accelerator's dataloader config
    says so). While iterating it is Accelerate's active dataloader, and ``end_of_dataloader`` is set
    on the epoch's last batch (known from the exact length, no read-ahead), so gradient accumulation
    syncs there. ``remainder`` stays ``-1``: a training loader has no padding for
    ``gather_for_metrics`` to remove.
    """

    def __init__(self, loader: SADPLoader, accelerator: Accelerator) -> None:
        WrappedLoader.__init__(self, loader)
        self.accelerator = accelerator
        self.device = accelerator.device
        self.gradient_state = GradientState()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate next (``SADPSampler.set_epoch``): call it before every epoch."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches the next iteration yields on this process (the rest of the epoch when resuming)."""
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        remaining = len(self.loader)
        self.begin()
        self.remainder = -1
        try:
            for number, batch in enumerate(self.loader, 1):
                self.end_of_dataloader = number == remaining
                yield send_to_device(batch, self.device, non_blocking=self.accelerator.non_blocking)
        finally:
            self.end()

    def total_steps(self, gradient_accumulation_steps: int | None = None) -> int:
        """Optimizer steps of the whole run on this process: ``Σ_e ceil(batches_e / accumulation)``.

        ``accelerator.accumulate`` steps after every ``gradient_accumulation_steps`` batches and at
        the end of every epoch; the default is the accelerator's setting. Exact before training.
        """
        sampler = self.sampler
        if sampler.epochs is None:
            raise ValueError("total_steps needs epochs set on the SADPSampler")
        if gradient_accumulation_steps is None:
            gradient_accumulation_steps = self.accelerator.gradient_accumulation_steps
        steps = int(gradient_accumulation_steps)
        if steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be at least 1, got {steps}")
        drop_last = bool(self.loader.loader.drop_last)
        return sum(
            math.ceil(batch_count(sampler.epoch_length(e), self.batch_size, drop_last) / steps)
            for e in range(sampler.epochs)
        )

    def state_dict(self) -> dict[str, Any]:
        """``SADPLoader.state_dict()``: the sampler's state at the examples delivered so far (flushes the store)."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration continues the saved epoch after the delivered examples."""
        self.loader.load_state_dict(state)


def check_not_resharded(loader: Any, sampler: SADPSampler) -> None:
    """Raise ``ValueError`` if ``loader`` draws from ``sampler`` through a sampler that splits it again.

    That is what ``accelerator.prepare`` makes of a ``DataLoader`` built on the ``SADPSampler`` when
    there is more than one process (a ``BatchSamplerShard``), and any ``DistributedSampler`` around it.
    """
    seen: set[int] = set()
    stack = [(loader, False)]
    while stack:
        current, resharded = stack.pop()
        if current is None or id(current) in seen or isinstance(current, (int, float, str, bool)):
            continue
        seen.add(id(current))
        if current is sampler:
            if resharded:
                raise ValueError(
                    "this loader re-shards the SADPSampler's per-process slice (accelerator.prepare wraps a "
                    "DataLoader's batches in BatchSamplerShard), so each process would train on 1/num_processes "
                    "of its slice. Build it with sadp_data.adapters.accelerate.prepare_loader(accelerator, "
                    "dataset, sampler) and do not pass the DataLoader to accelerator.prepare"
                )
            continue
        splits = isinstance(current, (BatchSamplerShard, DistributedSampler))
        for name in ("base_dataloader", "batch_sampler", "sampler", "loader", "dataset", "_sampler"):
            stack.append((getattr(current, name, None), resharded or splits))


def prepare_loader(
    accelerator: Accelerator, dataset: Dataset | DataLoader, sampler: SADPSampler, **loader_kwargs: Any
) -> AcceleratedLoader:
    """The train loader for an ``Accelerator`` run: ``wrap(dataset, sampler, **loader_kwargs)`` on its device.

    ``dataset`` is a map-style dataset or a ``DataLoader`` not passed through ``accelerator.prepare``
    (its settings are kept). Raises ``ValueError`` when the sampler was built for another process
    layout than the accelerator's (e.g. before ``Accelerator()`` initialised ``torch.distributed``) or
    the accelerator's layout is not ``torch.distributed``'s (``Accelerator()`` without ``cpu=True`` under
    ``torchrun`` on a machine without GPUs), ``TypeError`` for a loader ``accelerator.prepare`` returned.
    """
    if not isinstance(sampler, SADPSampler):
        raise TypeError(f"sampler must be an SADPSampler, got {type(sampler).__name__}")
    layout = (accelerator.num_processes, accelerator.process_index)
    world, rank = rank_and_world()[::-1]
    if (world, rank) != layout:
        raise ValueError(
            f"torch.distributed runs process {rank} of {world} but the Accelerator sees process "
            f"{accelerator.process_index} of {accelerator.num_processes}: it would train every process on the same "
            "data. On a machine without GPUs pass Accelerator(cpu=True) when launching several processes"
        )
    if (sampler.num_replicas, sampler.rank) != layout:
        raise ValueError(
            f"the SADPSampler has num_replicas={sampler.num_replicas}, rank={sampler.rank} but this is process "
            f"{accelerator.process_index} of {accelerator.num_processes}: build the sampler after Accelerator() "
            "(which initialises torch.distributed), or pass num_replicas=accelerator.num_processes, "
            "rank=accelerator.process_index"
        )
    if isinstance(dataset, DataLoader) and type(dataset).__module__.startswith("accelerate"):
        raise TypeError(
            f"dataset is a {type(dataset).__name__} that accelerator.prepare returned; pass the original DataLoader "
            "(or the dataset): prepare re-shards its batches across processes"
        )
    return AcceleratedLoader(wrap(dataset, sampler, **loader_kwargs), accelerator)
