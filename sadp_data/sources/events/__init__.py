"""Event-camera (DVS) data: readers of recording formats and event-to-frame integration.

Events are numpy structured arrays with fields ``x``, ``y`` (pixel), ``t`` (microseconds, int64) and
``p`` (polarity, 0 or 1) — the layout tonic uses — in time order. Each recording format is one small
module with a ``read(path) -> events`` function registered in ``READERS``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import nmnist
from .dtype import EVENT_DTYPE

__all__ = ["EVENT_DTYPE", "READERS", "read_events"]

#: Recording format name → reader; a new format is one module with ``read(path)`` plus a line here.
READERS = {"nmnist": nmnist.read}


def read_events(path: str | Path, format: str = "nmnist") -> np.ndarray:
    """Read one recording into an ``EVENT_DTYPE`` array; errors name the file (and byte offset)."""
    try:
        reader = READERS[format]
    except KeyError as error:
        raise ValueError(f"unknown event format {format!r}; known: {sorted(READERS)}") from error
    return reader(path)
