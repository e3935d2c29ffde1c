"""Data sources for ``sadp-data convert``: anything that yields N examples as field dictionaries.

A source spec is one of

* a folder of MNIST/Fashion-MNIST IDX files (``train-images-idx3-ubyte[.gz]`` and labels; ``--split``
  picks train or test);
* a ``.npz`` file with arrays ``x`` (examples) and ``y`` (labels);
* ``module:callable``, a function returning a map-style dataset whose items are ``(x, y)`` pairs or
  dicts of arrays/numbers;
* ``nmnist:PATH``, an N-MNIST folder: raw events per sample (``events.npy``, integrated at load
  time), or ``T`` pre-integrated frames with ``frames=T``;
* ``tonic:NAME:PATH``, a dataset in tonic's on-disk layout (``NMNIST``, ``DVSGesture``; PATH is
  tonic's ``save_to`` or ``save_to/NAME``), read in place without downloading
  (``sadp_data.sources.events.tonic_layout``), stored like ``nmnist:PATH``.

Every example becomes ``{"x.npy": array, "y.cls": int}`` (or ``"y.npy"`` for non-integer targets;
dict items keep their own keys), which webdataset's decoders understand.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class SourceError(ValueError):
    """A source spec names something that is not a usable dataset; the message names the spec."""


@dataclass
class Source:
    """``len(source)`` examples; ``source[i]`` is a dict of field name → numpy array or int."""

    name: str
    data: Any
    limit: int | None = None

    def __len__(self) -> int:
        return len(self.data) if self.limit is None else min(self.limit, len(self.data))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _fields(self.data[index], index, self.name)

    def head(self, count: int) -> Source:
        """The first ``count`` examples of this source."""
        if count <= 0:
            raise ValueError(f"limit must be positive, got {count}")
        return Source(f"{self.name}[:{count}]", self.data, count)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]


def _plain(value: Any) -> Any:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return value


def _fields(item: Any, index: int, name: str) -> dict[str, Any]:
    if isinstance(item, dict):
        return {key: _plain(value) for key, value in item.items()}
    if isinstance(item, (tuple, list)) and len(item) == 2:
        x, y = (_plain(v) for v in item)
        label = "y.cls" if isinstance(y, (int, np.integer)) else "y.npy"
        return {"x.npy": np.asarray(x), label: y if label == "y.cls" else np.asarray(y)}
    raise TypeError(f"{name}: item {index} is a {type(item).__name__}; expected an (x, y) pair or a dict of fields")


class _Pairs:
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.x[index], int(self.y[index])


class _Recordings:
    """Event recordings as ``{"events.npy": events, "y.cls": label}`` or ``T`` integrated frames.

    ``dataset`` items are ``(events, label)`` and ``dataset.path(index)`` names the file (for errors).
    Frames are ``integrate(events, sensor_size, T)`` (equal time bins, no event dropped) stored as
    int16: a count above 32767 raises rather than wrapping.
    """

    def __init__(self, dataset: Any, sensor_size: tuple[int, int, int], frames: int | None) -> None:
        self.dataset, self.sensor_size, self.frames = dataset, sensor_size, frames

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from .events.frames import integrate

        events, label = self.dataset[index]
        if self.frames is None:
            return {"events.npy": events, "y.cls": label}
        try:
            counts = integrate(events, self.sensor_size, self.frames)
        except ValueError as error:
            raise ValueError(f"{self.dataset.path(index)}: {error}") from error
        if counts.size and counts.max() > np.iinfo(np.int16).max:
            raise ValueError(f"{self.dataset.path(index)}: a frame count of {counts.max()} does not fit int16")
        return {"x.npy": counts.astype(np.int16), "y.cls": label}


def _event_source(spec: str, split: str, frames: int | None) -> Source:
    """``nmnist:PATH`` or ``tonic:NAME:PATH``; the split and the frame transform enter the name."""
    if frames is not None and frames <= 0:
        raise ValueError(f"--frames must be positive, got {frames}")
    suffix = "" if frames is None else f":frames={frames}:by=time"
    if spec.startswith("nmnist:"):
        from .events.nmnist import NMNIST, SENSOR_SIZE

        root = Path(spec.partition(":")[2])
        return Source(
            f"nmnist:{root.resolve().name}:{split}{suffix}", _Recordings(NMNIST(root, split), SENSOR_SIZE, frames)
        )
    from .events.tonic_layout import LAYOUTS, TonicFolder

    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError(f"{spec}: expected tonic:NAME:PATH with NAME one of {sorted(LAYOUTS)}")
    dataset = TonicFolder(parts[1], parts[2], split)
    name = f"tonic:{parts[1]}:{dataset.location.resolve().name}:{split}{suffix}"
    return Source(name, _Recordings(dataset, dataset.sensor_size, frames))


def open_source(spec: str, split: str = "train", frames: int | None = None) -> Source:
    """Resolve a source spec (see the module docstring); errors name the spec and what is wrong.

    The source's ``name`` (recorded in ``index.json``) holds no local absolute path: a folder or file
    is named by its base name (``idx:fashion-mnist:train``, ``npz:digits.npz``, ``nmnist:nmnist-small:train``),
    ``module:callable`` by the spec itself, so the same data converted from two folders gives
    byte-identical index files and a shared dataset does not reveal where it was converted.

    ``nmnist:PATH`` reads an N-MNIST folder and ``tonic:NAME:PATH`` a tonic layout; with ``frames=T``
    each recording is stored as ``T`` event-count frames (equal time bins, ``sadp_data.sources.events.frames``)
    instead of raw events, and ``T`` becomes part of the source name (and, through the shard bytes,
    of the fingerprint).
    """
    if spec.startswith(("nmnist:", "tonic:")):
        return _event_source(spec, split, frames)
    if frames is not None:
        raise ValueError("--frames applies to event sources (nmnist:PATH, tonic:NAME:PATH) only")
    path = Path(spec)
    if path.is_dir():
        from .datasets import FashionMNIST

        data = FashionMNIST(path, split)
        return Source(f"idx:{path.resolve().name}:{split}", _Pairs(data.images.numpy(), data.labels.numpy()))
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such .npz file")
        unreadable = Exception  # numpy's readers raise OSError, ValueError, BadZipFile, SyntaxError, ...
        try:
            loaded = np.load(path, allow_pickle=False)
        except unreadable as error:
            raise ValueError(f"{spec}: not a readable .npz archive ({error})") from error
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"{spec}: holds a single array, not an .npz archive with arrays x and y")
        with loaded as arrays:
            missing = {"x", "y"} - set(arrays.files)
            if missing:
                raise ValueError(f"{spec}: missing arrays {sorted(missing)} (found {arrays.files})")
            try:
                x, y = arrays["x"], arrays["y"]
            except unreadable as error:
                raise ValueError(f"{spec}: array x or y is unreadable ({error})") from error
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{spec}: x has {x.shape[0]} examples but y has {y.shape[0]}")
        return Source(f"npz:{path.name}", _Pairs(x, y))
    if ":" in spec and not path.exists():
        module_name, _, attribute = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"{spec}: cannot import {attribute!r} from {module_name!r}: {error}") from error
        try:
            dataset = factory()
        except Exception as error:
            raise SourceError(f"{spec}: {attribute}() raised {type(error).__name__}: {error}") from error
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise SourceError(
                f"{spec}: {attribute}() returned a {type(dataset).__name__}, not a map-style dataset "
                "(an object with __len__ and __getitem__, such as a list of (x, y) pairs)"
            )
        return Source(spec, dataset)
    raise FileNotFoundError(f"{spec}: not an IDX folder, a .npz file or a module:callable")
