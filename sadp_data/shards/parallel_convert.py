"""Shard-parallel conversion: ``P`` processes on one machine, each writing whole shards.

``sadp-data convert SRC OUT --workers P`` (``shard_writer.write_shards(..., workers=P)``) gives shard
``k`` the examples ``[k·S, (k+1)·S)`` (``S`` = ``--shard-size``), exactly what the serial
``ShardWriter`` loop gives it, and writes it with webdataset's ``TarWriter`` and the options that
``ShardWriter`` passes (``mtime=0``, default owner and mode). The output (shards, ``offsets.npy``,
``index.json``, the ``wids`` list, hence the fingerprint) is therefore byte-identical to
``--workers 1``. Each worker returns a ``ShardRecord`` (spans and crc32c of its samples, the shard's
size and SHA-256, the fields it saw); the parent merges them in shard order (``shard_writer``).

This module also holds the per-shard pieces the serial path shares: ``encode_fields`` (an example as
a webdataset sample) and ``shard_record`` (reading a written shard back into its record).

Start method: ``fork`` where the platform has a safe one (Linux; the same default as PyTorch's
``DataLoader`` workers), ``spawn`` elsewhere (macOS, Windows), or ``start_method=`` to choose. With
``fork`` workers inherit the source and every imported module: no pickling (a ``module:callable``
dataset that holds open files or lambdas works) and no re-import (``import sadp_data`` pulls in torch,
3–4 s per process on a loaded 2-core machine), and arrays are shared copy-on-write. The trade-off:
forking a process that runs other threads (a training loop calling ``write_shards``) can deadlock a
child on a lock one of them held, which is why Python 3.14 defaults to ``forkserver``; pass
``start_method="spawn"`` there. With ``spawn`` the ``Source`` must pickle (an error says so), once per
worker, not per shard.

Limits: the progress bar advances a shard at a time. A shard whose payload reaches webdataset's
``maxsize`` (3 GB) before ``S`` examples is refused with a hint to lower ``--shard-size``: the serial
``ShardWriter`` would cut it early and shift every later shard, which no shard-parallel writer can
reproduce.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sys
import tarfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import sample_checksum

#: webdataset ``ShardWriter``'s default ``maxsize``: the serial path starts a new shard past it.
MAX_SHARD_BYTES = 3e9


class ConversionError(RuntimeError):
    """A worker could not convert an example (the message names the source, the example and its shard),
    a worker process died, or the ``Source`` cannot be sent to ``spawn`` workers."""


@dataclass
class ShardRecord:
    """What the index needs from one written shard: ``indices[j]`` is the global index of its ``j``-th
    sample and ``rows[j]`` its (shard, byte offset, byte length, crc32c) row of ``offsets.npy``."""

    shard: int
    url: str
    indices: np.ndarray
    rows: np.ndarray
    size: int
    sha256: str
    fields: frozenset[str]


def check_workers(workers: Any) -> int:
    """``workers`` as a positive int; ``ValueError`` naming ``--workers`` otherwise (0, negative, not an int)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a positive integer (1 = serial), got {workers!r}")
    return workers


def default_start_method() -> str:
    """``fork`` on Linux (and other non-macOS platforms that have it), else ``spawn``; see the module docstring."""
    return "fork" if sys.platform != "darwin" and "fork" in multiprocessing.get_all_start_methods() else "spawn"


def encode_fields(index: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Example ``index`` as a webdataset sample: key ``%09d``, its global index as ``index.cls``, its fields."""
    sample = {"__key__": f"{index:09d}", "index.cls": index}
    for name, value in fields.items():
        if "." not in name:
            raise ValueError(f"field {name!r} of example {index} needs an extension (e.g. {name}.npy) to be encoded")
        sample[name] = value
    return sample


@contextmanager
def naming_example(source, index: int, shard: int) -> Iterator[None]:
    """Run the block that reads, encodes and writes example ``index``; any error becomes a ``ConversionError``
    naming the source, the example and its shard (the original chained), in serial and parallel conversion."""
    try:
        yield
    except Exception as error:
        raise ConversionError(
            f"{source.name}: example {index} (shard {shard}) failed: {type(error).__name__}: {error}"
        ) from error


def sample_spans(path: Path) -> dict[str, tuple[int, int]]:
    """Byte range ``[first header, end of last member's data blocks)`` of every sample in a shard."""
    spans: dict[str, tuple[int, int]] = {}
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            key = member.name.split(".", 1)[0]
            end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            start = spans[key][0] if key in spans else member.offset
            spans[key] = (start, end)
    return spans


def shard_record(path: Path, shard: int, fields: frozenset[str] = frozenset()) -> ShardRecord:
    """Read the written shard ``path`` (number ``shard``) back into its ``ShardRecord`` (spans parsed by tarfile)."""
    spans = [(int(key), start, stop) for key, (start, stop) in sample_spans(path).items()]
    return _record(path, shard, spans, fields)


def _record(path: Path, shard: int, spans: list[tuple[int, int, int]], fields: frozenset[str]) -> ShardRecord:
    """The ``ShardRecord`` of shard ``path`` whose samples are ``(global index, start, stop)`` byte spans."""
    data = path.read_bytes()
    indices = np.array([index for index, _, _ in spans], dtype=np.int64)
    rows = np.array(
        [(shard, start, stop - start, sample_checksum(data[start:stop])) for _, start, stop in spans],
        dtype=np.int64,
    ).reshape(len(spans), 4)
    return ShardRecord(shard, path.name, indices, rows, len(data), hashlib.sha256(data).hexdigest(), fields)


def write_shard(source, path: Path, shard: int, start: int, stop: int) -> ShardRecord:
    """Write examples ``[start, stop)`` of ``source`` as shard ``shard`` at ``path``; its record.

    Sample spans are taken from the tar writer's offset as each sample is written (the serial path parses
    them back with ``tarfile``, which costs about a third of the conversion); the crc32c and SHA-256 are
    computed from the bytes read back from disk, so they check what was written.

    Errors from the source or the encoder become a ``ConversionError`` naming the source, the example and
    the shard (``naming_example``: the original exception and its traceback are chained to it).
    """
    import webdataset as wds

    fields: set[str] = set()
    spans: list[tuple[int, int, int]] = []
    payload = 0
    with wds.TarWriter(str(path), mtime=0) as writer:  # what ShardWriter(..., mtime=0) opens for each shard
        archive = writer.tarstream  # its tarfile.TarFile: ``offset`` is where the next member's header goes
        for index in range(start, stop):
            with naming_example(source, index, shard):
                sample = encode_fields(index, source[index])
                begin = archive.offset
                payload += writer.write(sample)
                spans.append((index, begin, archive.offset))
            fields.update(key for key in sample if not key.startswith("__"))
            if payload >= MAX_SHARD_BYTES and index + 1 < stop:
                raise ConversionError(
                    f"{source.name}: shard {shard} reaches {payload / 1e9:.1f} GB at example {index}, before its "
                    f"{stop - start} examples; lower --shard-size (the serial writer would cut the shard there)"
                )
    return _record(path, shard, spans, frozenset(fields))


_SOURCE: Any = None  # the source of this worker process, set by _start_worker


def _start_worker(source) -> None:
    global _SOURCE
    _SOURCE = source


def _convert_shard(folder: str, name: str, shard: int, start: int, stop: int) -> ShardRecord:
    return write_shard(_SOURCE, Path(folder) / f"{name}-{shard:06d}.tar", shard, start, stop)


def shard_ranges(count: int, shard_size: int) -> Iterator[tuple[int, int, int]]:
    """``(shard, start, stop)`` of every shard of ``count`` examples, ``shard_size`` per shard (the last partial)."""
    for shard, start in enumerate(range(0, count, shard_size)):
        yield shard, start, min(start + shard_size, count)


def write_shards_parallel(
    source,
    out: Path,
    shard_size: int,
    name: str,
    progress: bool,
    workers: int,
    start_method: str | None = None,
) -> list[ShardRecord]:
    """Write every shard of ``source`` into the existing folder ``out`` with ``workers`` processes.

    Returns the records in shard order. At most one process per shard is started. The first failure
    stops the conversion: shards not yet started are cancelled, running workers are terminated, and a
    ``ConversionError`` (a worker's, naming the example, or one saying a worker process died) is raised;
    ``write_shards`` then discards the staging folder, so an existing ``OUT`` stays whole.
    """
    from tqdm.auto import tqdm

    check_workers(workers)
    ranges = list(shard_ranges(len(source), shard_size))
    method = start_method or default_start_method()
    processes = min(workers, len(ranges))
    records: dict[int, ShardRecord] = {}
    executor = ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context(method),
        initializer=_start_worker,
        initargs=(source,),
    )
    try:
        try:  # processes start (and, without fork, the source is pickled to them) on submit
            pending = {executor.submit(_convert_shard, str(out), name, *task): task for task in ranges}
        except Exception as error:
            raise ConversionError(
                f"{source.name}: could not start {method!r} worker processes ({type(error).__name__}: {error}); "
                "without fork the source must pickle: use start_method='fork' (Linux), a picklable source, "
                "or --workers 1"
            ) from error
        bar = tqdm(total=len(source), desc=f"convert {name} ({processes} workers)", unit="ex", disable=not progress)
        with bar:
            for future in as_completed(pending):
                shard, start, stop = pending[future]
                try:
                    records[shard] = future.result()
                except BrokenProcessPool as error:
                    raise ConversionError(
                        f"{source.name}: a worker process died (killed, out of memory or crashed) while "
                        f"converting shard {shard} (examples {start}..{stop - 1}) or another running shard"
                    ) from error
                bar.update(stop - start)
    except BaseException:
        _stop(executor)
        raise
    executor.shutdown(wait=True)
    return [records[shard] for shard in sorted(records)]


def _stop(executor: ProcessPoolExecutor) -> None:
    """Cancel the shards not started and end the running workers now (not after their current shard)."""
    if hasattr(executor, "terminate_workers"):  # Python 3.14+
        executor.terminate_workers()
        executor.shutdown(wait=False, cancel_futures=True)
        return
    processes = list((getattr(executor, "_processes", None) or {}).values())  # no public way before 3.14
    executor.shutdown(wait=False, cancel_futures=True)  # (forgets the process table, hence the copy above)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
