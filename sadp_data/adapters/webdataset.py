"""WebDataset integration: stream importance-sampled epochs from scored shards.

``ScoredShards(root, sampler)`` is a torch ``IterableDataset``. Each epoch it takes the sampler's plan
(which examples, in which order, with which weights), splits it across DDP ranks and DataLoader
workers, and reads *only the planned samples*, each with one seek and one read at the byte offset
recorded by ``sadp-data convert``: pruned samples are neither read nor decoded. Build the sampler
with ``shard_size=index.shard_size`` (``ScoredShards.sampler_for`` does) so the plan visits shards
in random order, shuffled within windows of a few shards: each worker keeps at most ``window``
shards open and reads them nearly sequentially.

Remote shards (``s3://…``, ``gs://…``, ``http(s)://…``, with ``storage_options`` for fsspec) are read
the same way but planned per worker part: ``sadp_data.remote.fetch`` cuts the part into blocks of about one
shard window, merges each shard's planned byte ranges into few requests (or fetches a shard whole
when most of it is planned), and fetches ``readahead`` blocks ahead in threads (``FetchOptions``).
Pruned samples' bytes are not fetched beyond the ``gap_bytes`` merged into a request.

Decoding and transforms plug in as in webdataset: ``.decode(*handlers)`` (webdataset's own
``autodecode.Decoder``; default handlers decode ``.npy`` and ``.cls``), ``.map(fn)``, and
``.to_tuple("x.npy", "y.cls")``, which yields ``(x, y, index, weight)``. Without ``to_tuple``,
samples are dicts with ``"__key__"``, ``"__index__"`` and ``"__weight__"`` added.

Splitting: ranks take equal contiguous slices of the plan (``sadp_data.distributed``: the last ones
padded by repeating the first planned examples, so every rank runs the same number of steps and
nothing is dropped; rank and world size are the sampler's); each rank's slice is split into
contiguous parts per worker. ``len`` is this rank's exact count.

Resuming mid-epoch: ``ShardLoader.state_dict()`` records every worker's position in its part. The
DataLoader takes batches from the workers in turn (skipping finished ones), so the batches
delivered so far fix those positions; on ``load_state_dict`` each worker starts where it stopped,
and the parts are rotated over the workers so the remaining batches come in the identical order.
Needs the same ``num_workers``, batch size and world size, and ``on_error="raise"``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import IterableDataset, get_worker_info

from sadp_data.adapters._shard_loader import ShardLoader
from sadp_data.plan import PlanSlice
from sadp_data.remote.fetch import BlockPlanner, FetchOptions, FetchStats, RequestCosts, read_blocks
from sadp_data.sampler import SADPSampler
from sadp_data.shards import ShardError, ShardIndex, parse_sample, sample_checksum
from sadp_data.store import check_store_belongs


def _loaded(
    root: str | Path | ShardIndex, storage_options: dict | None, trusted_roots, shard_options, fetch: FetchOptions
) -> ShardIndex:
    """``root`` itself when it is a loaded index, else the index it names (loaded, checked under ``fetch.policy``)."""
    if isinstance(root, ShardIndex):
        return root
    return ShardIndex.load(root, storage_options=storage_options, trusted_roots=trusted_roots,
                           shard_storage_options=shard_options, policy=fetch.policy)  # fmt: skip


class ScoredShards(IterableDataset):
    """The planned samples of the current epoch, read by byte offset (see the module docstring).

    ``verify`` (default on) checks each sample's bytes against the crc32c in ``offsets.npy`` (indexes
    of version 2 and later) and raises ``ShardError`` naming the shard and sample on a mismatch, or
    skips it with ``on_error="skip"``. Cost: one crc32c per sample read (about 1 µs for a
    Fashion-MNIST sample; see the loader bench).

    ``root`` may be a URL (``storage_options`` go to fsspec; ``trusted_roots`` and ``shard_storage_options``
    let its ``shard_root`` lead elsewhere: ``ShardIndex.load``); ``fetch`` says how remote shards are read
    (``FetchOptions``: range merging, whole-shard fallback, read-ahead, retries, local cache). A
    remote request (the index's too) that stalls past ``fetch.timeout_s`` or fails transiently (5xx, a
    lost connection, a cut body) is retried up to ``fetch.retries`` attempts, then raises ``ShardError``
    naming the shard (or skips its block's samples with ``on_error="skip"``).
    ``fetch_stats`` counts this process's requests and bytes (per DataLoader worker in workers);
    ``request_costs`` is what ``FetchOptions(adaptive=True)`` has measured of them, kept across epochs
    in the process that reads (with ``num_workers=0`` or persistent workers; DataLoader workers forked
    each epoch start again from the main process's copy, which they do not update).
    """

    def __init__(
        self,
        root: str | Path | ShardIndex,
        sampler: SADPSampler,
        *,
        window: int | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        verify: bool = True,
        storage_options: dict[str, Any] | None = None,
        fetch: FetchOptions | None = None,
        trusted_roots: Sequence[str | Path] = (),
        shard_storage_options: dict[str, Any] | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.fetch = fetch if fetch is not None else FetchOptions()
        self.index = _loaded(root, storage_options, trusted_roots, shard_storage_options, self.fetch)
        if self.fetch.client == "obstore" and self.index.remote:  # bad settings fail here, not per block
            from sadp_data.remote.obstore_reads import check_settings

            location = self.index.shard_location
            check_settings(location.url, location.storage_options, self.fetch.client_options)
        self.fetch_stats = FetchStats()
        self.request_costs = RequestCosts()
        if sampler.num_examples != self.index.num_examples:
            raise ValueError(
                f"the sampler covers {sampler.num_examples} examples but {self.index.root} holds "
                f"{self.index.num_examples}"
            )
        check_store_belongs(sampler.store, self.index.fingerprint, str(self.index.root))
        self.sampler = sampler
        self.window = window or sampler.window
        self.on_error = on_error
        self.verify = bool(verify)
        self.skipped: list[str] = []
        self._stages: list[Callable[[Any], Any]] = []
        self._decoder: Callable[[dict], dict] | None = None
        self._tuple: tuple[str, ...] | None = None
        self._resume: tuple[int, list[int], int] | None = None

    @staticmethod
    def sampler_for(
        root: str | Path | ShardIndex,
        store=None,
        storage_options: dict[str, Any] | None = None,
        trusted_roots: Sequence[str | Path] = (),
        shard_storage_options: dict[str, Any] | None = None,
        **sampler_kwargs: Any,
    ) -> SADPSampler:
        """An ``SADPSampler`` over the shards' sidecar (``ShardIndex.sidecar_path``: local even for remote
        shards) with shard-local ordering set up. ``root`` may be a loaded ``ShardIndex``: pass the same
        one to ``ScoredShards`` to read and check a remote index once instead of twice."""
        index = _loaded(root, storage_options, trusted_roots, shard_storage_options, FetchOptions())
        store = store if store is not None else index.open_store()
        if index.consecutive_shards:
            return SADPSampler(store, shard_size=index.shard_size, **sampler_kwargs)
        return SADPSampler(store, groups=index.offsets[:, 0], **sampler_kwargs)

    def decode(self, *handlers: Any) -> ScoredShards:
        """Decode fields with webdataset's ``autodecode.Decoder`` (default: ``.npy`` and ``.cls``)."""
        from webdataset import autodecode

        self._decoder = autodecode.Decoder(list(handlers) or [autodecode.basichandlers])
        return self

    def map(self, function: Callable[[Any], Any]) -> ScoredShards:
        """Apply ``function`` to each (decoded) sample."""
        self._stages.append(function)
        return self

    def to_tuple(self, *fields: str) -> ScoredShards:
        """Yield ``(*fields, index, weight)`` tuples instead of dicts."""
        self._tuple = fields
        return self

    def resume_at(self, resume: tuple[int, list[int], int] | None) -> None:
        """Continue epoch ``e`` of ``(e, starts, first)`` (``resume.check_worker_state``'s answer) with worker
        part ``w`` from position ``starts[w]`` and worker 0 serving part ``first``; ``None``: epochs start whole."""
        self._resume = resume

    def worker_starts(self) -> list[int] | None:
        """Per worker, where a resumed epoch starts in its part (``None``: not resuming this epoch)."""
        return None if self._resume is None or self._resume[0] != self.sampler.epoch else self._resume[1]

    def first_worker(self) -> int:
        """The part DataLoader worker 0 serves: parts rotate on resume so batches keep their turn order."""
        return 0 if self._resume is None or self.worker_starts() is None else self._resume[2]

    def _part(self) -> PlanSlice:
        """This rank's slice of the epoch's plan, and within a DataLoader worker, that worker's part
        (from where it stopped, when resuming)."""
        part = self.sampler.rank_slice()
        info = get_worker_info()
        worker = 0 if info is None else (info.id + self.first_worker()) % info.num_workers
        if info is not None:
            part = part.worker_slice(worker, info.num_workers)
        starts = self.worker_starts()
        if starts is None:
            return part
        return PlanSlice(part.order[starts[worker] :], part.weights[starts[worker] :])

    def __len__(self) -> int:
        return self.sampler.epoch_length()

    def loader(self, batch_size: int, **loader_kwargs: Any) -> ShardLoader:
        """A DataLoader over this dataset that makes each epoch's plan in the main process.

        DataLoader workers are started per epoch as copies of the main process; making the plan
        first means they inherit it instead of each recomputing it.
        """
        from torch.utils.data import DataLoader

        return ShardLoader(self, DataLoader(self, batch_size=batch_size, **loader_kwargs))

    def __iter__(self) -> Iterator[Any]:
        plan = self.sampler.plan
        handles: OrderedDict[int, Any] = OrderedDict()
        self.skipped = []
        try:
            part = self._part()
            buffers = self._remote_buffers(part) if self.index.remote else None
            for example, weight in zip(part.order.tolist(), part.weights.tolist(), strict=True):
                sample = self._read(example, handles) if buffers is None else self._checked(example, next(buffers))
                if sample is None:
                    continue
                sample["__index__"] = example
                sample["__weight__"] = weight
                try:
                    finished = self._decoder(sample) if self._decoder is not None else sample
                except Exception as error:  # a decoder's own error on bytes that passed the checks
                    where = f"shard {self.index.shard_url(int(self.index.offsets[example, 0]))}, sample {example:09d}"
                    if self.on_error == "raise":
                        raise ShardError(f"{where}: cannot be decoded: {error!r}") from error
                    self.skipped.append(where)
                    continue
                yield self._finish(finished)
        finally:
            for handle in handles.values():
                handle.close()
        if self.skipped:
            import warnings

            warnings.warn(
                f"epoch {plan.epoch}: skipped {len(self.skipped)} unreadable samples: {self.skipped[:5]}",
                RuntimeWarning,
                stacklevel=2,
            )

    def _remote_buffers(self, part: PlanSlice) -> Iterator[bytes | OSError]:
        """The bytes of the part's samples in plan order, fetched by ``sadp_data.remote.fetch``."""
        index = self.index
        names = [entry["url"] for entry in index.shards]
        sizes = [entry["bytes"] for entry in index.shards]
        blocks = BlockPlanner(index.offsets[part.order, :3], sizes, self.window, self.fetch)
        location = index.shard_location
        return read_blocks(
            location, names, sizes, blocks, self.fetch, self.fetch_stats, index.fingerprint, self.request_costs
        )

    def _checked(self, example: int, buffer: bytes | OSError) -> dict[str, Any] | None:
        """A fetched sample's checks and parse (``_read`` without the local read)."""
        where = self._where(example)
        try:
            if isinstance(buffer, OSError):
                raise ShardError(f"{where}: {buffer}") from buffer
            return self._parse(example, buffer, where)
        except ShardError as error:
            if self.on_error == "raise":
                raise
            self.skipped.append(f"{where} ({error})")
            return None

    def _where(self, example: int) -> str:
        row = self.index.offsets[example]
        return f"shard {self.index.shard_url(int(row[0]))}, sample {example:09d} at byte {int(row[1])}"

    def _read(self, example: int, handles: OrderedDict[int, Any]) -> dict[str, Any] | None:
        row = self.index.offsets[example]
        shard, start, length = int(row[0]), int(row[1]), int(row[2])
        path = self.index.shard_url(shard)
        where = self._where(example)
        try:
            handle = handles.get(shard)
            if handle is None:
                handle = handles[shard] = open(path, "rb")
                if len(handles) > self.window:
                    handles.popitem(last=False)[1].close()
            else:
                handles.move_to_end(shard)
            handle.seek(start)
            buffer = handle.read(length)
            return self._parse(example, buffer, where)
        except (OSError, ShardError) as error:
            if self.on_error == "raise":
                raise ShardError(str(error)) from error
            self.skipped.append(where)
            return None

    def _parse(self, example: int, buffer: bytes, where: str) -> dict[str, Any]:
        """Sample ``example``'s fields from its bytes, after the length, crc32c and key checks (``ShardError``)."""
        row = self.index.offsets[example]
        length = int(row[2])
        if len(buffer) != length:
            raise ShardError(f"{where}: truncated ({len(buffer)} of {length} bytes)")
        if self.verify and row.shape[0] > 3 and sample_checksum(buffer) != int(row[3]):
            raise ShardError(
                f"{where}: checksum mismatch (crc32c {sample_checksum(buffer)} != {int(row[3])} in the index): "
                "the sample's bytes changed in the shard; restore the shard or convert again"
            )
        sample = parse_sample(buffer, where)
        if self.index.keys_are_indices and sample.get("__key__") != f"{example:09d}":
            raise ShardError(f"{where}: found key {sample.get('__key__')!r}: the index does not match the shard")
        return sample

    def _finish(self, sample: dict[str, Any]) -> Any:
        """The decoded ``sample`` through the ``map`` stages and ``to_tuple``."""
        for stage in self._stages:
            sample = stage(sample)
        if self._tuple is None:
            return sample
        missing = [field for field in self._tuple if field not in sample]
        if missing:
            raise KeyError(f"sample {sample.get('__key__')} has no fields {missing}; it has {sorted(sample)}")
        return (*(sample[field] for field in self._tuple), sample["__index__"], sample["__weight__"])
