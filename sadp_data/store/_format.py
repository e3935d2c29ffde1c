"""The score sidecar's on-disk format: a Zarr v3 group, its creation, validation and checked reads.

Layout of the sidecar (one directory):

* ``score``  float32[N]: the latest importance score of each example (0 until scored);
* ``seen``   uint32[N]: how many times each example has been scored;
* ``epoch``  int32[N]: the epoch of the latest score (-1: never scored);
* attributes: ``num_examples``, ``fingerprint``, ``format_version``, ``version`` (number of
  update batches applied when the arrays were last persisted) and ``keep_ratio_history``;
* optionally the resume snapshot (``sadp_data.store._snapshot``).

Format 2 checksums every chunk (crc32c) and writes every chunk at creation, so a missing or corrupt
chunk file is detected and named instead of being read silently as the fill value. Format 1 sidecars
(unchecked) are still read.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr

#: 2: every array is checksummed (crc32c per chunk) and every chunk is written at creation.
FORMAT_VERSION = 2
DEFAULT_CHUNK_SIZE = 1 << 18
#: The per-example arrays of every sidecar: name, dtype, fill value.
ARRAYS: tuple[tuple[str, str, float], ...] = (("score", "float32", 0.0), ("seen", "uint32", 0), ("epoch", "int32", -1))


class ScoreStoreError(RuntimeError):
    """The sidecar is missing, malformed, or does not belong to this dataset."""


class Fingerprinted(Protocol):
    """What ``check_store_belongs`` reads of a store."""

    path: Path
    fingerprint: str | None


def write_empty(path: Path, num_examples: int, fingerprint: str | None, chunk_size: int, owner_rank: int = 0) -> None:
    """Write a new, empty format-2 sidecar at ``path`` (every chunk on disk, checksummed), written in a
    process group by rank ``owner_rank`` only (recorded when it is not 0; ``-1``: by any rank)."""
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="w")
    chunks = (min(chunk_size, num_examples),)
    for name, dtype, fill in ARRAYS:
        array = keep_every_chunk(
            group.create_array(
                name, shape=(num_examples,), chunks=chunks, dtype=dtype, fill_value=fill, compressors=checksum()
            )
        )
        array[:] = np.full(num_examples, fill, dtype=dtype)  # every chunk on disk: a missing one is damage
    group.attrs.update(
        {
            "num_examples": num_examples,
            "fingerprint": fingerprint,
            "format_version": FORMAT_VERSION,
            "version": 0,
            "keep_ratio_history": [],
            **({"owner_rank": owner_rank} if owner_rank else {}),
        }
    )


def open_sidecar(
    path: Path, *, writable: bool, num_examples: int | None = None, fingerprint: str | None = None
) -> zarr.Group:
    """The sidecar's Zarr group, after checking it is a sidecar this version reads, of the expected dataset.

    Raises ``ScoreStoreError`` naming ``path`` and what is wrong (no ``zarr.json``, unreadable
    metadata, a missing array or attribute, a newer format, another example count or fingerprint).
    Reads metadata only; the arrays are read (and checked) by ``read_checked``.
    """
    if not (path / "zarr.json").is_file():
        raise ScoreStoreError(f"{path} is not a score sidecar (no zarr.json); create one with ScoreStore.create")
    try:
        group = zarr.open_group(zarr.storage.LocalStore(path, read_only=not writable), mode="r+" if writable else "r")
        attrs = dict(group.attrs)
        names = set(group.array_keys())
    except Exception as error:  # zarr raises JSONDecodeError, ValueError, KeyError, TypeError, ... on bad metadata
        raise ScoreStoreError(f"{path} is not a readable score sidecar: {error}") from error
    missing = {name for name, _, _ in ARRAYS} - names
    if missing or "num_examples" not in attrs:
        raise ScoreStoreError(f"{path} is not a score sidecar: missing {sorted(missing) or ['num_examples']}")
    if attrs.get("format_version", 0) > FORMAT_VERSION:
        raise ScoreStoreError(
            f"{path} has format version {attrs['format_version']}; this sadp-data reads up to {FORMAT_VERSION}"
        )
    if num_examples is not None and int(attrs["num_examples"]) != num_examples:
        raise ScoreStoreError(
            f"{path} holds scores for {attrs['num_examples']} examples, but the dataset has {num_examples}"
        )
    if fingerprint is not None and attrs.get("fingerprint") != fingerprint:
        raise ScoreStoreError(
            f"{path} was created for dataset fingerprint {attrs.get('fingerprint')!r}, "
            f"not {fingerprint!r}: these scores belong to another dataset"
        )
    return group


def is_checked(group: zarr.Group) -> bool:
    """Whether the sidecar's arrays carry checksums and every chunk (format 2 and later)."""
    return int(dict(group.attrs).get("format_version", 0)) >= 2


def read_mirror(path: Path, group: zarr.Group, arrays: dict[str, zarr.Array]) -> dict[str, np.ndarray]:
    """The per-example arrays (``score``, ``seen``, ``epoch``), read in full and checked.

    Refuses, by name, a missing or corrupt chunk (format 2) and a score that is not a finite,
    non-negative number (a damaged sidecar), so bad scores never reach a sampler.
    """
    checked = is_checked(group)
    values = {name: read_checked(path, arrays[name], dtype, checked) for name, dtype, _ in ARRAYS}
    scores = values["score"]
    bad = np.flatnonzero(~(np.isfinite(scores) & (scores >= 0)))
    if bad.size:
        raise ScoreStoreError(
            f"{path}: score of example {int(bad[0])} is {scores[bad[0]]} ({bad.size} bad in all): the "
            "sidecar is damaged; recreate it (ScoreStore.create(..., overwrite=True)) or restore it from a copy"
        )
    return values


def checksum() -> list[Any]:
    """The bytes-to-bytes codecs of every sidecar array: a crc32c checksum per chunk."""
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]


def keep_every_chunk(array: zarr.Array) -> zarr.Array:
    """The same array, writing chunks equal to the fill value too (zarr skips, even deletes, them by
    default): with every chunk on disk, a missing chunk file is detectable damage."""
    return array.with_config({"write_empty_chunks": True})


def read_checked(path: Path, array: zarr.Array, dtype: Any, checked: bool) -> np.ndarray:
    """All of ``array`` as ``dtype``; for checksummed sidecars, refuse a missing or corrupt chunk by name.

    Every chunk of a format-2 sidecar is written at creation, so a missing chunk file is damage (zarr
    would silently read its fill value); a chunk whose crc32c does not match is damage too.
    """
    if not checked:
        return np.asarray(array[:], dtype=dtype)
    chunk = int(array.chunks[0])
    count = -(-int(array.shape[0]) // chunk)
    folder = path / array.path / "c"
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    missing = [i for i in range(count) if str(i) not in present]
    if missing:
        raise ScoreStoreError(
            f"{folder / str(missing[0])}: chunk file missing ({len(missing)} of {count} chunks of {array.path!r} "
            "missing): the sidecar is damaged; recreate it or restore it from a copy"
        )
    try:
        return np.asarray(array[:], dtype=dtype)
    except ValueError as error:
        if "checksum" not in str(error):
            raise
    for i in range(count):
        try:
            array[i * chunk : (i + 1) * chunk]
        except ValueError as error:
            raise ScoreStoreError(
                f"{folder / str(i)}: {error} (chunk {i} of {array.path!r} is corrupt): the sidecar is damaged; "
                "recreate it or restore it from a copy"
            ) from error
    raise ScoreStoreError(f"{path}: a checksum of {array.path!r} did not match")


def check_store_belongs(store: Fingerprinted | None, fingerprint: str | None, data: str) -> None:
    """Raise ``ScoreStoreError`` when ``store`` was created for another dataset than ``data``.

    Compares the store's fingerprint with the data's; a store or data without a fingerprint cannot be
    checked and passes (the example count is compared separately by every caller).
    """
    if store is None or store.fingerprint is None or fingerprint is None or store.fingerprint == fingerprint:
        return
    raise ScoreStoreError(
        f"the sampler's score store {store.path} was created for dataset fingerprint {store.fingerprint!r}, "
        f"but {data} has fingerprint {fingerprint!r}: these scores belong to another dataset"
    )


def dataset_fingerprint(dataset: Any, probes: int = 8) -> str:
    """A short hash identifying a map-style dataset: its length and a few evenly spaced samples.

    Cheap (reads ``probes`` samples), deterministic, and sensitive to reordering or replacing the
    data; it does not prove two datasets equal. Pass it to ``ScoreStore.create``/``open``.
    """
    length = len(dataset)
    digest = hashlib.sha256(str(length).encode())
    positions = sorted({int(p) for p in np.linspace(0, length - 1, num=min(probes, length))}) if length else []
    for position in positions:
        sample = dataset[position]
        digest.update(pickle.dumps(_to_plain(sample), protocol=4))
    return digest.hexdigest()[:16]


def _to_plain(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy().tobytes()
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value
