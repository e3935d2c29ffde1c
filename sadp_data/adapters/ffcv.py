"""FFCV integration: ``.beton`` conversion and an importance-sampled traversal order.

``importance_loader(path, sampler, **loader_kwargs)`` returns an ``ImportanceLoader``, a subclass
of ``ffcv.loader.Loader`` whose order each epoch is the ``SADPSampler``'s plan for that epoch (keep
ratio, schedule and all). ffcv 1.0.2 rejects ``TraversalOrder`` subclasses passed as ``order=`` (a
bug in its type check), so this module registers its order class in ``ffcv.loader.loader.ORDER_MAP``
and passes that key — users never see this.

Epoch length: ffcv's own ``Loader`` fixes ``len`` from the order it computes at construction and
cuts every later epoch to that length, which would silently drop examples when an epoch is longer
than the first (an anneal epoch after pruned ones). ``ImportanceLoader`` computes ``len`` per epoch
instead: ``len(loader)`` is the number of batches of the epoch the next ``iter(loader)`` runs,
``ceil(round(k_e·N) / world / batch_size)`` — equal to ``sampler.num_batches(epoch)`` on one rank —
and nothing planned is dropped (``drop_last`` defaults to ``False`` here; ffcv's default drops).
For step-based LR schedules use ``sampler.total_steps()``.

Data-parallel runs: pass ``distributed=True`` as with any ffcv loader; every rank visits its equal
slice of the same plan (``sadp_data.distributed``). Resuming: a sampler restored with
``load_state_dict`` makes the loader continue at the saved epoch and position.

Page locality: ``sampler_for(path, page_window=W)`` builds a sampler whose plan visits the file's
pages in random order, shuffled within windows of ``W`` pages (like ffcv's ``QUASI_RANDOM``), so an
epoch reads each page once — for datasets larger than memory (``os_cache=False``).

Weights: with ``with_weights=True`` every batch is ``(*fields, index, weight)``, like ``wrap`` and
``ScoredShards.to_tuple``: the example indices and importance weights of the batch's positions in the
plan (ffcv delivers batches in order), as CPU tensors. Without it, batches are ffcv's own tuples and
the deprecated ``weights_for(sampler, index_batch)`` looks the weights up from an ``index`` field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sadp_data._staging import staged
from sadp_data.plan import batch_count
from sadp_data.sampler import SADPSampler
from sadp_data.store import ScoreStore, check_store_belongs


def sidecar_path(beton: str | Path) -> Path:
    """Where the score sidecar of a ``.beton`` lives: ``name.beton`` → ``name.scores.zarr``."""
    beton = Path(beton)
    return beton.with_name(beton.stem + ".scores.zarr")


def beton_fingerprint(beton: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of the ``.beton`` file: pins the sidecar to this exact file."""
    digest = hashlib.sha256()
    with open(beton, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def write_beton(
    source, out: str | Path, overwrite: bool = False, num_workers: int = 1, page_size: int = 1 << 23
) -> Path:
    """Write ``source`` (a ``sources.Source``) to a ``.beton`` with an ``index`` field, plus its sidecar.

    ``page_size`` is ffcv's allocation unit (default 8 MiB, ffcv's own): the granularity of reads
    and of page-local ordering (``sampler_for(..., page_window=)``). Atomic: both are built beside
    ``out`` and renamed into place at the end (``sadp_data._staging``), so a failure or kill leaves
    an existing pair whole.
    """
    from ffcv.fields import FloatField, IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    out = Path(out)
    if out.suffix != ".beton":
        raise ValueError(f"{out}: an FFCV output path must end in .beton")
    if (out.exists() or sidecar_path(out).exists()) and not overwrite:
        raise FileExistsError(f"{out} or its sidecar exists; pass --overwrite to replace them")
    first = source[0]
    names, fields = [], {}
    for key, value in first.items():
        name = key.split(".")[0]
        if isinstance(value, (int, np.integer)):
            fields[name] = IntField()
        elif isinstance(value, (float, np.floating)):
            fields[name] = FloatField()
        else:
            array = np.asarray(value)
            fields[name] = NDArrayField(shape=array.shape, dtype=array.dtype)
        names.append(key)
    fields["index"] = IntField()

    class _Rows:
        def __len__(self) -> int:
            return len(source)

        def __getitem__(self, index: int):
            sample = source[index]
            return (*(sample[key] for key in names), index)

    with staged([out, sidecar_path(out)]) as stage:
        built = stage / out.name
        DatasetWriter(str(built), fields, num_workers=num_workers, page_size=page_size).from_indexed_dataset(_Rows())
        ScoreStore.create(sidecar_path(built), len(source), fingerprint=beton_fingerprint(built)).close()
    return out


def _reader(beton: str | Path):
    """ffcv's ``Reader`` of ``beton``, with a clear error for a missing, truncated or corrupt file."""
    from ffcv.reader import Reader

    if not Path(beton).is_file():
        raise FileNotFoundError(f"{beton}: no such .beton file")
    try:
        return Reader(str(beton))
    except Exception as error:  # ffcv raises assorted errors on damaged files
        raise ValueError(f"{beton}: not a readable .beton file (truncated or corrupt?): {error!r}") from error


def open_sidecar(beton: str | Path, mode: str = "r+") -> ScoreStore:
    """The sidecar of ``beton``, refused if it was written for another file."""
    count = _reader(beton).num_samples
    return ScoreStore.open(sidecar_path(beton), mode, num_examples=count, fingerprint=beton_fingerprint(beton))


def page_groups(path: str | Path) -> np.ndarray:
    """The page of every sample of a ``.beton`` (int64[N]): where its first allocation starts.

    Samples whose fields all live in the metadata table (only ints and floats) have no page and
    are put in page ``-1``, one group.
    """
    reader = _reader(path)
    pages = np.full(reader.num_samples, -1, dtype=np.int64)
    table = reader.alloc_table
    order = np.argsort(table["ptr"], kind="stable")[::-1]  # the first allocation of a sample wins
    pages[table["sample_id"][order].astype(np.int64)] = (table["ptr"][order] // reader.page_size).astype(np.int64)
    return pages


def sampler_for(
    path: str | Path, store: ScoreStore | None = None, page_window: int | None = None, **sampler_kwargs: Any
) -> SADPSampler:
    """An ``SADPSampler`` over a ``.beton``'s sidecar; ``page_window`` turns on page-local ordering."""
    store = store if store is not None else open_sidecar(path)
    if page_window is not None:
        sampler_kwargs.update(groups=page_groups(path), window=page_window)
    return SADPSampler(store, **sampler_kwargs)


try:
    from ffcv.loader import Loader as _Loader
    from ffcv.loader.loader import ORDER_MAP
    from ffcv.traversal_order.base import TraversalOrder as _TraversalOrder
except ImportError as _error:  # the rest of sadp_data works without ffcv
    _Loader = _TraversalOrder = object
    ORDER_MAP: dict = {}
    _FFCV_MISSING: ImportError | None = _error
else:
    _FFCV_MISSING = None


class ImportanceOrder(_TraversalOrder):
    """ffcv traversal order that follows the ``SADPSampler`` of its ``ImportanceLoader``.

    Each epoch's order is a zero-copy ``uint64`` view of this rank's part of the plan (ffcv only
    reads it), so the per-epoch cost is the plan itself — about what ffcv's ``RANDOM`` order pays
    for its permutation at keep 1.0.
    """

    def sample_order(self, epoch: int) -> np.ndarray:
        loader = self.loader
        if not loader.sampling:  # ffcv's construction-time call, only for the len this class replaces
            return np.zeros(0, dtype=np.uint64)
        sampler = loader.sampler
        if (
            self.distributed
            and sampler.num_replicas == 1
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        ):
            raise ValueError(
                "distributed=True but the sampler has num_replicas=1: build the SADPSampler after "
                "torch.distributed.init_process_group (or pass num_replicas= and rank=)"
            )
        sampler.set_epoch(epoch)
        order = sampler.remaining()
        return order.view(np.uint64) if order.dtype == np.int64 else order.astype(np.uint64)


ORDER_MAP[ImportanceOrder] = ImportanceOrder


class ImportanceLoader(_Loader):
    """An ``ffcv.loader.Loader`` whose every epoch follows ``sampler``'s plan (see the module docstring)."""

    def __init__(
        self, path: str | Path, sampler: SADPSampler, *, with_weights: bool = False, **loader_kwargs: Any
    ) -> None:
        if _FFCV_MISSING is not None:
            raise ImportError("the FFCV adapter needs ffcv: pip install 'sadp-data[ffcv]' (see the README)")
        if "order" in loader_kwargs:
            raise TypeError("importance_loader sets order= itself; do not pass it")
        if loader_kwargs.get("indices") is not None:
            raise TypeError(
                "importance_loader visits the examples its sampler plans, over the whole file: indices= is not "
                "supported (write the subset to its own .beton to train on it)"
            )
        _reader(path)
        self.sampler = sampler
        self.with_weights = with_weights
        self.sampling = False
        loader_kwargs.setdefault("drop_last", False)
        super().__init__(str(path), order=ImportanceOrder, **loader_kwargs)
        if self.reader.num_samples != sampler.num_examples:
            raise ValueError(
                f"{path} holds {self.reader.num_samples} examples but the sampler covers {sampler.num_examples}"
            )
        check_store_belongs(sampler.store, beton_fingerprint(path), str(path))
        self.next_epoch = sampler.epoch
        self.sampling = True
        self._delivered = 0

    def __iter__(self) -> Iterator[Any]:
        """One epoch of batches (with ``(index, weight)`` appended when ``with_weights``); counts what is delivered."""
        same_epoch = self.next_epoch == self.sampler.epoch
        start = self.sampler.resume_position if same_epoch else 0  # read before the order consumes it
        batches = super().__iter__()
        planned = self.sampler.rank_slice().batches(start, self.batch_size, self.drop_last)
        self._delivered = start
        for batch in batches:
            count = len(batch[0])
            if self.with_weights:
                indices, weights = next(planned)
                if indices.shape[0] != count:
                    raise RuntimeError(
                        f"epoch {self.sampler.epoch}: ffcv delivered a batch of {count} examples where the plan "
                        f"has {indices.shape[0]} at position {self._delivered}; weights would be misaligned"
                    )
                batch = (*batch, indices, weights)
            self._delivered += count
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state with ``position`` = examples delivered to the training loop this epoch."""
        return {**self.sampler.state_dict(), "position": self._delivered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next ``iter(loader)`` continues the saved epoch after the delivered examples."""
        self.sampler.load_state_dict(state)
        self.next_epoch = self.sampler.epoch

    def __len__(self) -> int:
        """Batches of the epoch the next ``iter(loader)`` runs (see the module docstring)."""
        count = self.sampler.epoch_length(self.next_epoch)
        if self.next_epoch == self.sampler.epoch:
            count -= self.sampler.resume_position
        return batch_count(count, self.batch_size, self.drop_last)


def importance_loader(
    path: str | Path, sampler: SADPSampler, *, with_weights: bool = False, **loader_kwargs: Any
) -> ImportanceLoader:
    """An ``ImportanceLoader`` over ``path``: ``ffcv.loader.Loader`` settings go in ``loader_kwargs``.

    ``with_weights=True`` appends ``(index, weight)`` to every batch (see the module docstring).
    """
    return ImportanceLoader(Path(path), sampler, with_weights=with_weights, **loader_kwargs)


def weights_for(sampler: SADPSampler, index_batch: torch.Tensor) -> torch.Tensor:
    """Deprecated: importance weights (float32) of a batch's ``index`` field (shape ``[B]`` or ``[B, 1]``).

    Pass ``with_weights=True`` to ``importance_loader`` instead: batches then end in ``(index, weight)``.
    """
    import warnings

    warnings.warn(
        "weights_for is deprecated: pass with_weights=True to importance_loader and read (..., index, weight) "
        "from each batch",
        DeprecationWarning,
        stacklevel=2,
    )
    indices = index_batch.reshape(-1).cpu().numpy()
    return torch.from_numpy(sampler.weights(indices)).to(index_batch.device)
