"""Ray: scored shards written by Ray tasks, and the warm-up scoring pass on Ray Data actors.

For clusters, where one machine's processes (``convert --workers P``) are not enough:

* ``write_shards_ray(data, out, shard_size=S)`` converts a Ray ``Dataset`` (rows: dicts of field →
  value, the fields named with their extensions as in ``sources``, e.g. ``{"x.npy": array, "y.cls":
  3}``) or a ``sources.Source`` into scored shards. Shard ``k`` holds rows ``[k·S, (k+1)·S)`` and is
  written by one Ray task with the same per-shard writer as ``--workers P``
  (``parallel_convert.write_shard``), then the driver merges the shards' records into one
  ``index.json``: the output is byte-identical to ``sadp-data convert`` of the same rows. A Dataset is
  cut with ``split_at_indices`` (its row order is kept: Ray's ``preserve_order`` is switched on for the
  conversion); a Source is sent to every task, so it must pickle. ``out`` is a local path, shared by
  the cluster's nodes (NFS, Lustre); publish to object storage with ``sadp-data convert``.
* ``score_with_ray(data, store, make_model, inputs=..., targets=...)`` runs a scoring pass (the
  warm-up epoch's scores, or a re-scoring of stale ones) on ``actors`` Ray Data actors: each builds the
  model once with ``make_model()`` and scores batches with ``SpikeAwareScorer.rescore`` (no store),
  and the driver writes every (index, score) into ``store``. The scores equal an in-process
  ``rescore`` of the same batches.

Trade-off: each task or actor imports torch and sadp-data once (seconds), so Ray pays off for
datasets whose conversion or scoring takes minutes on one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sadp_data.shards import ShardIndex
from sadp_data.shards.parallel_convert import ShardRecord, shard_ranges, write_shard
from sadp_data.shards.writer import write_shards
from sadp_data.sources import Source


class _Rows:
    """Rows ``[start, start + len(rows))`` of a dataset, indexed by their global row number."""

    def __init__(self, rows: list[dict[str, Any]], start: int) -> None:
        self.rows, self.start = rows, start

    def __len__(self) -> int:
        return self.start + len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index - self.start]


def _ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError("sadp_data.adapters.ray needs Ray Data: pip install 'sadp-data[ray]'") from error
    return ray


def _shard_task(data: Any, name: str, folder: str, file_name: str, shard: int, start: int, stop: int) -> ShardRecord:
    """In a Ray task: write shard ``shard`` (rows ``[start, stop)``) of ``data`` (a Source, or this shard's rows)."""
    source = data if isinstance(data, Source) else Source(name, _Rows([dict(row) for row in data.iter_rows()], start))
    return write_shard(source, Path(folder) / file_name, shard, start, stop)


def _ray_writer(data: Any, name: str) -> Callable[..., list[ShardRecord]]:
    """A ``shard_writer.ShardsWriter`` that writes each shard of ``data`` in its own Ray task."""
    ray = _ray()

    def write(source: Any, folder: Path, shard_size: int, shards_name: str, progress: bool) -> list[ShardRecord]:
        from tqdm.auto import tqdm

        ranges = list(shard_ranges(len(source), shard_size))
        cuts = [start for _, start, _ in ranges[1:]]
        if isinstance(data, Source):
            pieces = [ray.put(data)] * len(ranges)  # one copy in the object store, not one per task
        else:
            pieces = data.split_at_indices(cuts) if cuts else [data]
        task, destination = ray.remote(_shard_task), str(folder.resolve())  # the tasks' cwd is not ours
        futures = [
            task.remote(pieces[shard], name, destination, f"{shards_name}-{shard:06d}.tar", shard, start, stop)
            for shard, start, stop in ranges
        ]
        records = []
        try:
            with tqdm(total=len(source), desc=f"convert {shards_name} (Ray)", unit="ex", disable=not progress) as bar:
                for future, (_, start, stop) in zip(futures, ranges, strict=True):
                    records.append(ray.get(future))
                    bar.update(stop - start)
        except BaseException:  # no task may go on writing into the staging folder that is about to be removed
            for future in futures:
                ray.cancel(future, force=True)
            ray.wait(futures, num_returns=len(futures), timeout=30)
            raise
        return records

    return write


def write_shards_ray(
    data: Any,
    out: str | Path,
    shard_size: int = 10_000,
    *,
    name: str = "train",
    source_name: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ShardIndex:
    """Convert a Ray ``Dataset`` or a ``Source`` into scored shards in ``out`` with one Ray task per shard.

    The same checks, staging (a failure leaves an existing ``out`` whole) and index as
    ``shard_writer.write_shards``; ``source_name`` names a Dataset in the index and in errors
    (default ``"ray dataset"``). Ray must be initialised (``ray.init``) or it starts a local instance.
    """
    _ray()
    if isinstance(data, Source):
        return write_shards(data, out, shard_size, name, progress, overwrite, writer=_ray_writer(data, data.name))
    context = data.context  # a Dataset executes with the context it was created with, not the current one
    ordered, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    try:
        label = source_name or "ray dataset"
        sized = Source(label, range(data.count()))  # what write_shards checks and counts; rows come from data
        return write_shards(sized, out, shard_size, name, progress, overwrite, writer=_ray_writer(data, label))
    finally:
        context.execution_options.preserve_order = ordered


class _ScoringActor:
    """A Ray Data actor: one model, built once; scores each batch of rows (``SpikeAwareScorer.rescore``)."""

    def __init__(self, make_model: Callable[[], Any], columns: tuple[str, str, str], options: dict[str, Any]) -> None:
        import torch

        from sadp_data.scoring.scorer import SpikeAwareScorer

        torch.set_num_threads(1)
        self.columns = columns
        self.reset = options.pop("reset", None)
        self.loss_fn = options.pop("loss_fn", None)
        self.scorer = SpikeAwareScorer(make_model(), None, **options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        inputs, targets, index = self.columns
        x = torch.as_tensor(np.asarray(batch[inputs]))
        y = torch.as_tensor(np.asarray(batch[targets])).long()
        indices = np.asarray(batch[index], dtype=np.int64)
        self.scorer.rescore([(x, y, torch.from_numpy(indices))], self.loss_fn, self.reset)
        return {"index": indices, "score": self.scorer.last_scores.numpy().astype(np.float32)}


def score_with_ray(
    data: Any,
    store: Any,
    make_model: Callable[[], Any],
    *,
    inputs: str,
    targets: str,
    index: str = "index",
    batch_size: int = 256,
    actors: int = 2,
    epoch: int | None = None,
    progress: bool = True,
    **scorer_options: Any,
) -> int:
    """Score every row of the Ray ``Dataset`` ``data`` on ``actors`` actors and write the scores to ``store``.

    Rows hold the model input (column ``inputs``), the class target (``targets``) and the example's
    index in the store (``index``). ``make_model()`` (pickled to every actor) returns the model with
    the weights to score with, e.g. a ``functools.partial`` that loads a checkpoint; it is run in its
    current mode (call ``.eval()`` inside to freeze batch-norm statistics). ``scorer_options`` go to
    ``SpikeAwareScorer`` (``layer``, ``score``, ``loss``) and to ``rescore`` (``loss_fn``, ``reset``).
    Scores are stamped ``epoch`` (default: the store's current epoch). Returns the rows scored.
    """
    from tqdm.auto import tqdm

    _ray()
    if actors < 1 or batch_size < 1:
        raise ValueError(f"actors and batch_size must be positive, got actors={actors}, batch_size={batch_size}")
    settings = {"make_model": make_model, "columns": (inputs, targets, index), "options": scorer_options}
    scored = data.map_batches(
        _ScoringActor,
        fn_constructor_kwargs=settings,
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
    )
    count = 0
    with tqdm(desc="score (Ray actors)", unit="ex", disable=not progress) as bar:
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            store.update(batch["index"], batch["score"], epoch=epoch)
            count += int(batch["index"].shape[0])
            bar.update(int(batch["index"].shape[0]))
    return count
