"""FFCV integration: ``.beton`` conversion and an importance-sampled ``TraversalOrder``.

``importance_loader(path, sampler, **loader_kwargs)`` returns an ``ffcv.loader.Loader`` whose order
each epoch is the ``SADPSampler``'s plan for that epoch (keep ratio, schedule and all). ffcv 1.0.2
rejects ``TraversalOrder`` subclasses passed as ``order=`` (a bug in its type check), so the helper
registers a small subclass bound to the sampler in ``ffcv.loader.loader.ORDER_MAP`` and passes that
key — users never see this.

Epoch length: ffcv computes ``len(loader)`` once, from the first epoch's order; later epochs yield
exactly their planned examples (``sampler.num_batches(epoch)`` batches), so use
``sampler.num_batches(epoch)`` or ``sampler.total_steps()`` rather than ``len(loader)`` for
schedules. With ``distributed=True`` every rank takes an equal contiguous slice of the same plan
(padded by repetition, as in the WebDataset adapter).

Batches carry the example index as an ``index`` field; ``weights_for(sampler, index_batch)`` looks
up the importance weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sadp_data.sampler import SADPSampler
from sadp_data.store import ScoreStore


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


def write_beton(source, out: str | Path, overwrite: bool = False, num_workers: int = 1) -> Path:
    """Write ``source`` (a ``sources.Source``) to a ``.beton`` with an ``index`` field, plus its sidecar."""
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

    out.parent.mkdir(parents=True, exist_ok=True)
    DatasetWriter(str(out), fields, num_workers=num_workers).from_indexed_dataset(_Rows())
    store = ScoreStore.create(sidecar_path(out), len(source), fingerprint=beton_fingerprint(out), overwrite=overwrite)
    store.close()
    return out


def open_sidecar(beton: str | Path, mode: str = "r+") -> ScoreStore:
    """The sidecar of ``beton``, refused if it was written for another file."""
    beton = Path(beton)
    if not beton.is_file():
        raise FileNotFoundError(f"{beton}: no such .beton file")
    from ffcv.reader import Reader

    try:
        count = Reader(str(beton)).num_samples
    except Exception as error:  # ffcv raises assorted errors on damaged files
        raise ValueError(f"{beton}: not a readable .beton file (truncated or corrupt?): {error!r}") from error
    return ScoreStore.open(sidecar_path(beton), mode, num_examples=count, fingerprint=beton_fingerprint(beton))


def _split(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    per_rank = -(-len(order) // world)
    return order[np.arange(rank * per_rank, (rank + 1) * per_rank) % len(order)]


def importance_loader(path: str | Path, sampler: SADPSampler, **loader_kwargs: Any):
    """An ``ffcv.loader.Loader`` over ``path`` whose every epoch follows ``sampler``'s plan."""
    from ffcv.loader import Loader
    from ffcv.loader.loader import ORDER_MAP
    from ffcv.traversal_order.base import TraversalOrder

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .beton file")

    class ImportanceOrder(TraversalOrder):
        def sample_order(self, epoch: int):
            sampler.set_epoch(epoch)
            order = sampler.plan.order
            if self.distributed:
                order = _split(order, torch.distributed.get_rank(), torch.distributed.get_world_size())
            return np.asarray(self.indices)[order]

    ORDER_MAP[ImportanceOrder] = ImportanceOrder
    loader_kwargs.setdefault("drop_last", False)  # deliver every planned example (ffcv's default drops)
    try:
        loader = Loader(str(path), order=ImportanceOrder, **loader_kwargs)
    except Exception as error:
        raise ValueError(f"{path}: ffcv could not open it (truncated or corrupt?): {error!r}") from error
    if loader.reader.num_samples != sampler.num_examples:
        raise ValueError(
            f"{path} holds {loader.reader.num_samples} examples but the sampler covers {sampler.num_examples}"
        )
    return loader


def weights_for(sampler: SADPSampler, index_batch: torch.Tensor) -> torch.Tensor:
    """Importance weights (float32 tensor) of a batch's ``index`` field (shape ``[B]`` or ``[B, 1]``)."""
    indices = index_batch.reshape(-1).cpu().numpy()
    return torch.from_numpy(sampler.weights(indices)).to(index_batch.device)
