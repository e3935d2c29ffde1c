"""Tonic's on-disk dataset layouts (``tonic.datasets``), read in place: never an archive, never a download.

tonic's dataset constructors look for the downloaded archive and a minimum file count (10,000 ``.bin``
files for N-MNIST) and download when either is missing, so a local or partial copy cannot be opened
through them. ``TonicFolder`` walks the same folders itself and reads each file the way tonic does:

* ``NMNIST``: ``save_to/NMNIST/{Train,Test}/<digit>/<name>.bin`` (tonic's ``location_on_system`` is
  ``save_to/NMNIST``); each file is read with tonic's own ``tonic.io.read_mnist_file`` (overflow
  events included), so this dataset needs tonic installed (``pip install tonic``; without it reading
  raises ``RuntimeError``). The label is the folder's digit.
* ``DVSGesture``: ``save_to/DVSGesture/{ibmGestureTrain,ibmGestureTest}/user<NN>_<lighting>/<label>.npy``,
  each an ``[n, 4]`` array of ``x, y, p, t`` with ``t`` in milliseconds. tonic has no reader function
  for these; the steps of ``tonic.datasets.DVSGesture.__getitem__`` are repeated here (``t`` times
  1000 in the file's own dtype, then cast to tonic's dtype), so no tonic import is needed.

``CIFAR10DVS`` is known but not supported: its ``.aedat4`` files need the ``aedat`` package (tonic's
``read_aedat4``), which sadp-data does not depend on, and no faithful small fixture could be written.

Guarantees: events come out as ``EVENT_DTYPE`` (``x``, ``y`` int16, ``t`` int64 µs, ``p`` int8) with
exactly the values tonic returns (tonic's dtypes differ: all-int64 fields for N-MNIST; field order
``x, y, p, t`` with a bool ``p`` for DVSGesture). Every event must lie on the sensor, otherwise a
``ValueError`` names the file; time order is not checked here (tonic does not either; frame
integration does). Recordings are ordered deterministically: split folder entries in string order
(tonic's ``dirs.sort()``), then, for N-MNIST, file names in string order — exactly
``tonic.datasets.NMNIST``'s order — and, for DVSGesture, labels ascending (tonic leaves that order
to the file system). Names starting with ``.`` and files of other types are skipped; a label folder
that is not a digit (N-MNIST), a user folder not named ``user<NN>_<lighting>`` or a recording not
named ``<label>.npy`` (DVSGesture) is an error naming the path, not silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dtype import EVENT_DTYPE

#: tonic's own N-MNIST dtype (``tonic.datasets.NMNIST.dtype``): what ``read_mnist_file`` is asked for.
NMNIST_TONIC_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
#: tonic's DVSGesture dtype (``tonic.datasets.DVSGesture.dtype``), in the files' column order.
DVSGESTURE_TONIC_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
_DIGIT = re.compile(r"[0-9]")
_USER = re.compile(r"user[0-9]+_.+")
_LABEL_FILE = re.compile(r"([0-9]+)\.npy")


def _visible(folder: Path) -> list[Path]:
    """Entries of ``folder`` in string order, without names starting with ``.``."""
    return sorted((entry for entry in folder.iterdir() if not entry.name.startswith(".")), key=lambda e: e.name)


def _on_sensor(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray, sensor: tuple, path: Path) -> np.ndarray:
    """``EVENT_DTYPE`` events from field arrays; ``ValueError`` naming ``path`` if one is off the sensor."""
    width, height, polarities = sensor
    bad = np.flatnonzero((x < 0) | (x >= width) | (y < 0) | (y >= height) | (p < 0) | (p >= polarities))
    if bad.size:
        i = bad[0]
        raise ValueError(f"{path}: event {i} (x={x[i]}, y={y[i]}, p={p[i]}) is outside the {sensor} (W, H, P) sensor")
    events = np.empty(x.shape[0], dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = x, y, t, p
    return events


def _walk_nmnist(split: Path) -> list[tuple[Path, int]]:
    found = []
    for folder in _visible(split):
        if not folder.is_dir():
            continue
        if not _DIGIT.fullmatch(folder.name):
            raise ValueError(f"{folder}: an N-MNIST label folder must be named by one digit 0-9, not {folder.name!r}")
        found += [(file, int(folder.name)) for file in _visible(folder) if file.suffix == ".bin" and file.is_file()]
    return found


def _read_nmnist(path: Path) -> np.ndarray:
    try:
        from tonic.io import read_mnist_file
    except ImportError as error:  # a RuntimeError, so that the command line reports it in one line
        raise RuntimeError(
            f"tonic:NMNIST reads {path} with tonic.io.read_mnist_file, but tonic is not installed (pip install tonic)"
        ) from error
    size = path.stat().st_size
    if size % 5:
        raise ValueError(f"{path}: truncated event at byte offset {size - size % 5} ({size % 5} of 5 bytes)")
    raw = read_mnist_file(str(path), dtype=NMNIST_TONIC_DTYPE)
    return _on_sensor(raw["x"], raw["y"], raw["t"], raw["p"], LAYOUTS["NMNIST"].sensor_size, path)


def _walk_dvsgesture(split: Path) -> list[tuple[Path, int]]:
    found = []
    for folder in _visible(split):
        if not folder.is_dir():
            continue
        if not _USER.fullmatch(folder.name):
            raise ValueError(f"{folder}: a DVSGesture folder must be named user<NN>_<lighting>, not {folder.name!r}")
        recordings = []
        for file in _visible(folder):
            if file.suffix != ".npy" or not file.is_file():
                continue
            match = _LABEL_FILE.fullmatch(file.name)
            if match is None:
                raise ValueError(f"{file}: a DVSGesture recording must be named <label>.npy, not {file.name!r}")
            recordings.append((int(match.group(1)), file))
        found += [(file, label) for label, file in sorted(recordings)]
    return found


def _read_dvsgesture(path: Path) -> np.ndarray:
    from numpy.lib.recfunctions import unstructured_to_structured

    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy array ({error})") from error
    if not isinstance(raw, np.ndarray) or raw.ndim != 2 or raw.shape[1] != 4 or raw.dtype.kind not in "iuf":
        found = f"{raw.dtype} {raw.shape}" if isinstance(raw, np.ndarray) else type(raw).__name__
        raise ValueError(f"{path}: expected a numeric [n, 4] array of x, y, p, t (ms), got {found}")
    raw[:, 3] *= 1000  # ms → µs, in the file's dtype, as tonic does
    events = unstructured_to_structured(raw, DVSGESTURE_TONIC_DTYPE)
    return _on_sensor(events["x"], events["y"], events["t"], events["p"], LAYOUTS["DVSGesture"].sensor_size, path)


@dataclass(frozen=True)
class Layout:
    """One tonic dataset's folders: split folder names, how to find recordings and how to read one."""

    name: str
    sensor_size: tuple[int, int, int]
    splits: dict[str, str]
    pattern: str
    walk: Callable[[Path], list[tuple[Path, int]]]
    read: Callable[[Path], np.ndarray]


#: tonic dataset name (its class name, and the folder tonic saves it in) → layout.
LAYOUTS = {
    "NMNIST": Layout(
        "NMNIST", (34, 34, 2), {"train": "Train", "test": "Test"}, "<digit>/<id>.bin", _walk_nmnist, _read_nmnist
    ),
    "DVSGesture": Layout(
        "DVSGesture",
        (128, 128, 2),
        {"train": "ibmGestureTrain", "test": "ibmGestureTest"},
        "user<NN>_<lighting>/<label>.npy",
        _walk_dvsgesture,
        _read_dvsgesture,
    ),
}
#: Known tonic datasets this reader cannot open, and why.
UNSUPPORTED = {"CIFAR10DVS": "its .aedat4 recordings need the aedat package (tonic.io.read_aedat4)"}


def layout(name: str) -> Layout:
    """The layout of tonic dataset ``name``; ``ValueError`` listing the known names otherwise."""
    if name in UNSUPPORTED:
        raise ValueError(f"tonic:{name} is not supported: {UNSUPPORTED[name]}; supported: {sorted(LAYOUTS)}")
    if name not in LAYOUTS:
        raise ValueError(f"unknown tonic dataset {name!r}; known: {sorted(LAYOUTS)} (case-sensitive, tonic's names)")
    return LAYOUTS[name]


def locate(root: str | Path, dataset: Layout) -> Path:
    """The dataset folder: ``root/NAME`` when ``root`` is tonic's ``save_to``, else ``root`` itself."""
    root = Path(root)
    if (root / dataset.name).is_dir():
        return root / dataset.name
    if any((root / folder).is_dir() for folder in dataset.splits.values()):
        return root
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (tonic:{dataset.name} needs tonic's save_to folder)")
    folders = " or ".join(sorted(dataset.splits.values()))
    raise FileNotFoundError(
        f"{root}: not a tonic {dataset.name} layout: expected {root / dataset.name}/{folders} "
        f"(root is tonic's save_to) or {root}/{folders} (root is save_to/{dataset.name})"
    )


class TonicFolder:
    """Map-style dataset of one split of a tonic layout: items ``(events, label)``; see the module docstring.

    The folder is walked once, at construction (errors about the layout come then); files are read on
    each ``__getitem__``.
    """

    def __init__(self, name: str, root: str | Path, split: str = "train") -> None:
        self.layout = layout(name)
        if split not in self.layout.splits:
            raise ValueError(f"split must be one of {sorted(self.layout.splits)}, got {split!r}")
        self.location = locate(root, self.layout)
        folder = self.location / self.layout.splits[split]
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{self.location}: missing the {split} folder {self.layout.splits[split]} "
                f"(tonic layout: {name}/{self.layout.splits[split]}/{self.layout.pattern})"
            )
        self.recordings = self.layout.walk(folder)
        if not self.recordings:
            suffix = Path(self.layout.pattern).suffix
            raise FileNotFoundError(f"{folder}: no {suffix} recordings (expected {folder}/{self.layout.pattern})")

    @property
    def sensor_size(self) -> tuple[int, int, int]:
        """``(W, H, P)``, as tonic's ``sensor_size``."""
        return self.layout.sensor_size

    def __len__(self) -> int:
        return len(self.recordings)

    def path(self, index: int) -> Path:
        """The file of recording ``index``."""
        return self.recordings[index][0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.recordings[index]
        return self.layout.read(path), label
