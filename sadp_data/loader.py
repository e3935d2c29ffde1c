"""``wrap``: put an ``SADPSampler`` under an existing DataLoader, indices and weights riding along.

The wrapped loader is a plain ``torch.utils.data.DataLoader`` built from the user's settings
(``batch_size``, ``collate_fn``, ``num_workers``, ``pin_memory``, ``drop_last``, worker options) with
one change: the sampler is the ``SADPSampler``. Nothing extra travels through the workers. The
DataLoader delivers batches in sampler order, so batch ``b`` of an epoch holds plan positions
``[start + b·B, start + (b+1)·B)``; the main process slices the example indices and importance
weights of those positions from the epoch's plan (two array slices per batch). That is why
``in_order=False`` is refused: out-of-order batches would get the wrong weights.
"""

from __future__ import annotations

import dis
import sys
import warnings
from collections.abc import Iterator, Mapping
from functools import lru_cache
from types import CodeType
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler

from .sampler import SADPSampler

#: DataLoader settings carried over from the user's loader (sampling settings are replaced).
_CARRIED = (
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


class ScoredBatch(tuple):
    """A batch of a wrapped loader: the user's elements, then the example indices and their weights.

    A plain tuple in every other respect. Unpacking it into the wrong number of names
    (``for x, y in loader``) raises a ``ValueError`` that says what the batch holds, instead of
    Python's bare "too many values to unpack"; the check reads the unpacking instruction of the
    caller's frame, so it costs one cached lookup per unpacking and nothing elsewhere.
    """

    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        frame = sys._getframe(1)
        wanted = _unpack_count(frame.f_code, frame.f_lasti)
        if wanted is not None and wanted != len(self):
            own = len(self) - 2
            raise ValueError(
                f"a wrapped loader's batch holds {len(self)} values, not {wanted}: the DataLoader's {own} "
                "element(s), then the example indices and their importance weights. Unpack it as "
                f"`for {', '.join(['x', 'y', 'z'][:own] if own <= 3 else ['*batch'])}, idx, w in loader` and pass "
                "idx and w to scorer.step"
            )
        return super().__iter__()


@lru_cache(maxsize=1024)
def _unpack_count(code: CodeType, offset: int) -> int | None:
    """How many names the instruction at ``offset`` of ``code`` unpacks into (``None``: not an unpacking)."""
    for instruction in dis.get_instructions(code):
        if instruction.offset == offset:
            return instruction.arg if instruction.opname == "UNPACK_SEQUENCE" else None
    return None


def _attach(batch: Any, indices: torch.Tensor, weights: torch.Tensor) -> Any:
    if isinstance(batch, Mapping):
        clash = {"index", "weight"} & set(batch)
        if clash:
            raise KeyError(f"batch already has keys {sorted(clash)}; rename them to use sadp_data.wrap")
        return {**batch, "index": indices, "weight": weights}
    if isinstance(batch, (tuple, list)):
        return ScoredBatch((*batch, indices, weights))
    return ScoredBatch((batch, indices, weights))


class SADPLoader:
    """Iterates the user's batches with ``indices`` (int64) and ``weights`` (float32) appended.

    Tuples/lists gain two trailing elements (``x, y, idx, w``); dicts gain keys ``"index"`` and
    ``"weight"``; anything else becomes ``(batch, idx, w)``. ``len`` is exact for the epoch. Both are
    CPU tensors, pinned where the DataLoader pins its batches; ``SpikeAwareScorer.step`` moves the
    weights to the loss's device with ``non_blocking=True`` and reads the indices on the host.
    """

    def __init__(self, loader: DataLoader, sampler: SADPSampler) -> None:
        self.loader = loader
        self.sampler = sampler
        self._consumed = 0

    def set_epoch(self, epoch: int) -> None:
        """Shortcut for ``sampler.set_epoch``."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        start = self.sampler.resume_position
        part = self.sampler.rank_slice()
        batches = iter(self.loader)  # the sampler consumes its resume position at the first batch
        self._consumed = start
        planned = part.batches(start, self.loader.batch_size, self.loader.drop_last)
        pin = _pins_memory(self.loader)
        for batch, (indices, weights) in zip(batches, planned, strict=True):
            if pin:  # like the DataLoader's own tensors: `.to(device, non_blocking=True)` then waits for nothing
                indices, weights = indices.pin_memory(), weights.pin_memory()
            self._consumed += int(indices.shape[0])
            yield _attach(batch, indices, weights)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state with ``position`` = examples delivered to the training loop so far."""
        return {**self.sampler.state_dict(), "position": self._consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration continues the saved epoch after the delivered examples."""
        self.sampler.load_state_dict(state)


def _pins_memory(loader: DataLoader) -> bool:
    """Whether ``loader`` pins its batches: ``pin_memory=True`` and an accelerator that pins (not MPS).

    The DataLoader's own rule: without an accelerator it only warns and does not pin, and neither
    may the weights (``Tensor.pin_memory()`` raises there).
    """
    if not loader.pin_memory:
        return False
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None:  # torch < 2.6
        return torch.cuda.is_available()
    device = accelerator.current_accelerator() if accelerator.is_available() else None
    return device is not None and device.type != "mps"


def wrap(loader_or_dataset: DataLoader | Dataset, sampler: SADPSampler, **loader_kwargs: Any) -> SADPLoader:
    """Wrap a ``DataLoader`` (or a map-style dataset plus DataLoader kwargs) to sample with ``sampler``.

    The user's loader settings are kept; its ``sampler``/``shuffle`` are replaced by ``sampler``.
    ``loader_kwargs`` override carried settings. Raises ``TypeError`` for iterable-style datasets
    (use an adapter such as ``sadp_data.adapters.webdataset``) and for loaders built with a custom
    ``batch_sampler`` or a sampler of their own (it would be dropped silently), and ``ValueError``
    when the dataset size differs from the sampler's.
    """
    if isinstance(loader_or_dataset, DataLoader):
        loader = loader_or_dataset
        if loader.batch_size is None:
            raise TypeError(
                "the DataLoader uses a custom batch_sampler (batch_size=None); wrap a loader built "
                "with batch_size=..., or pass the dataset and batch_size to wrap()"
            )
        if not isinstance(loader.dataset, IterableDataset) and not isinstance(
            loader.sampler, (SequentialSampler, RandomSampler)
        ):
            raise TypeError(
                f"the DataLoader has its own sampler ({type(loader.sampler).__name__}); wrap() would replace it "
                "with the SADPSampler. Build the DataLoader without sampler=, or fold its selection into the data"
            )
        if isinstance(loader.sampler, RandomSampler):
            warnings.warn(
                "the DataLoader was built with shuffle=True; wrap() replaces its shuffling with the SADPSampler's "
                "plan, which is already shuffled each epoch (a function of seed and epoch). Build the DataLoader "
                "without shuffle=True to silence this",
                UserWarning,
                stacklevel=2,
            )
        settings = {name: getattr(loader, name) for name in _CARRIED if hasattr(loader, name)}
        if loader.num_workers == 0:
            settings.pop("prefetch_factor", None)
        dataset = loader.dataset
    else:
        dataset = loader_or_dataset
        settings = {"batch_size": sampler.batch_size or 1}
    settings.update(loader_kwargs)
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            "wrap() needs a map-style dataset (with __getitem__ and __len__); for streaming data use "
            "an adapter such as sadp_data.adapters.webdataset"
        )
    if len(dataset) != sampler.num_examples:  # type: ignore[arg-type]
        raise ValueError(
            f"the dataset has {len(dataset)} examples but the sampler/score store has "  # type: ignore[arg-type]
            f"{sampler.num_examples}: they must describe the same data"
        )
    for name in ("sampler", "shuffle", "batch_sampler"):
        if name in settings:
            raise TypeError(f"wrap() sets {name!r} itself; do not pass it")
    if settings.get("in_order") is False:
        raise ValueError(
            "wrap() needs in_order=True: weights are matched to batches by their position in the epoch, "
            "and in_order=False lets workers return batches out of order"
        )
    return SADPLoader(DataLoader(dataset, sampler=sampler, **settings), sampler)
