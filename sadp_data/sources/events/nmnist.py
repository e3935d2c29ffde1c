"""N-MNIST (Orchard et al. 2015): 34×34 ATIS recordings in the original 40-bit binary format.

Each event is 5 bytes, big-endian bit fields: byte 0 = x, byte 1 = y, bit 7 of byte 2 = polarity,
the remaining 23 bits (byte 2 & 0x7F, byte 3, byte 4) = timestamp in microseconds. A dataset folder
(like ``nmnist-small``) holds ``samples/<id>.bs2`` (or ``.bin``) and label lists with a ``#`` header
and ``<id>\\t<label>`` lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .dtype import EVENT_DTYPE

SENSOR_SIZE = (34, 34, 2)
_INTEGER = re.compile(r"-?[0-9]+")
LABEL_FILES = {"train": "train1K.txt", "test": "test100.txt"}


def read(path: str | Path) -> np.ndarray:
    """Events of one recording; ``ValueError`` naming the file and byte offset when malformed."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 5:
        whole = raw.size - raw.size % 5
        raise ValueError(f"{path}: truncated event at byte offset {whole} ({raw.size % 5} of 5 bytes)")
    fields = raw.reshape(-1, 5).astype(np.int64)
    events = np.empty(fields.shape[0], dtype=EVENT_DTYPE)
    events["x"] = fields[:, 0]
    events["y"] = fields[:, 1]
    events["p"] = fields[:, 2] >> 7
    events["t"] = ((fields[:, 2] & 0x7F) << 16) | (fields[:, 3] << 8) | fields[:, 4]
    width, height, _ = SENSOR_SIZE
    bad = np.flatnonzero((events["x"] >= width) | (events["y"] >= height))
    if bad.size:
        raise ValueError(
            f"{path}: event {bad[0]} at byte offset {5 * bad[0]} has x={events['x'][bad[0]]}, "
            f"y={events['y'][bad[0]]} outside the {width}x{height} sensor"
        )
    backwards = np.flatnonzero(np.diff(events["t"]) < 0)
    if backwards.size:
        i = backwards[0] + 1
        raise ValueError(f"{path}: timestamp goes backwards at event {i} (byte offset {5 * i})")
    return events


def read_labels(root: str | Path, split: str = "train") -> np.ndarray:
    """``(id, label)`` pairs of a split, int64 ``[n, 2]``."""
    if split not in LABEL_FILES:
        raise ValueError(f"split must be one of {sorted(LABEL_FILES)}, got {split!r}")
    path = Path(root) / LABEL_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"{root}: missing label list {LABEL_FILES[split]}")
    # Parsed in Python: numpy.loadtxt's C parser crashed (SIGSEGV) on some malformed text in fuzzing.
    rows = []
    text = path.read_bytes().decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        fields = content.split()
        if len(fields) != 2 or not all(_INTEGER.fullmatch(field) for field in fields):
            raise ValueError(f"{path}, line {number}: expected '<id> <label>' (two integers), got {line.strip()!r}")
        rows.append((int(fields[0]), int(fields[1])))
    if not rows:
        raise ValueError(f"{path}: the label list has no '<id> <label>' lines")
    try:
        return np.array(rows, dtype=np.int64)
    except OverflowError as error:
        raise ValueError(f"{path}: an id or label does not fit in 64 bits ({error})") from error


class NMNIST:
    """Map-style dataset of an N-MNIST folder: items ``(events, label)``; ``transform`` applies to events."""

    def __init__(self, root: str | Path, split: str = "train", transform=None) -> None:
        self.root = Path(root)
        self.labels = read_labels(root, split)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, index: int) -> Path:
        sample_id = int(self.labels[index, 0])
        for suffix in (".bs2", ".bin"):
            candidate = self.root / "samples" / f"{sample_id}{suffix}"
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{self.root}/samples: no recording {sample_id}.bs2 or .bin")

    def __getitem__(self, index: int):
        events = read(self.path(index))
        if self.transform is not None:
            events = self.transform(events)
        return events, int(self.labels[index, 1])
