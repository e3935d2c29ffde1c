"""Integrate events into frames: counts per (time bin, polarity, y, x), numpy reference + numba kernel.

``integrate(events, sensor_size, n_bins, by="time")`` returns int32 frames ``[n_bins, P, H, W]``
(tonic's ``(T, P, H, W)`` layout, ``sensor_size = (W, H, P)``):

* ``by="time"``: equal time windows. By default every event lands in a bin: the window is
  ``duration // n_bins + 1`` µs, so bin ``(t - t0) // window`` is always below ``n_bins``.
* ``by="count"``: equal event counts; event ``i`` of ``n`` goes to bin ``i * n_bins // n``.
* ``drop_incomplete=True`` reproduces tonic's ``ToFrame(n_time_bins=…)`` / ``(n_event_bins=…)``
  exactly: windows of ``duration // n_bins`` µs (or ``n // n_bins`` events), and events past the last
  full window — at least the final event, for time bins — are dropped. The default keeps them all.
* ``clip``: cap each count (e.g. 1 for binary frames).

Both implementations validate coordinates and polarity first and raise naming the first bad event.
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np

from ...kernels.numba_cache import CACHE


def _bins(events: np.ndarray, n_bins: int, by: str, drop_incomplete: bool) -> np.ndarray:
    """Bin of every event (int64; ``-1`` = dropped)."""
    count = events.shape[0]
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if by == "time":
        offsets = events["t"].astype(np.int64) - int(events["t"][0])
        duration = int(events["t"][-1]) - int(events["t"][0])
        window = duration // n_bins if drop_incomplete else duration // n_bins + 1
        if window == 0:
            return np.full(count, -1, dtype=np.int64)
        bins = offsets // window
    else:
        positions = np.arange(count, dtype=np.int64)
        if drop_incomplete:
            per_bin = count // n_bins
            if per_bin == 0:
                return np.full(count, -1, dtype=np.int64)
            bins = positions // per_bin
        else:
            bins = positions * n_bins // count
    return np.where(bins < n_bins, bins, -1)


def _validate(events: np.ndarray, sensor_size: tuple[int, int, int], n_bins: int, by: str) -> None:
    if n_bins <= 0:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    if by not in ("time", "count"):
        raise ValueError(f"by must be 'time' or 'count', got {by!r}")
    width, height, polarities = sensor_size
    bad = np.flatnonzero(
        (events["x"] < 0)
        | (events["x"] >= width)
        | (events["y"] < 0)
        | (events["y"] >= height)
        | (events["p"] < 0)
        | (events["p"] >= polarities)
    )
    if bad.size:
        e = events[bad[0]]
        raise ValueError(
            f"event {bad[0]} (x={e['x']}, y={e['y']}, p={e['p']}) is outside the sensor {sensor_size} (W, H, P)"
        )
    if events.shape[0] > 1 and np.any(np.diff(events["t"]) < 0):
        raise ValueError(
            f"timestamps must not decrease (first at event {np.flatnonzero(np.diff(events['t']) < 0)[0] + 1})"
        )


def integrate_reference(
    events: np.ndarray,
    sensor_size: tuple[int, int, int],
    n_bins: int,
    by: Literal["time", "count"] = "time",
    drop_incomplete: bool = False,
    clip: int | None = None,
) -> np.ndarray:
    """Numpy reference of ``integrate``."""
    _validate(events, sensor_size, n_bins, by)
    width, height, polarities = sensor_size
    frames = np.zeros((n_bins, polarities, height, width), dtype=np.int32)
    bins = _bins(events, n_bins, by, drop_incomplete)
    keep = bins >= 0
    np.add.at(frames, (bins[keep], events["p"][keep].astype(np.int64), events["y"][keep], events["x"][keep]), 1)
    return frames if clip is None else np.minimum(frames, clip)


@numba.njit(cache=CACHE, nogil=True)
def _accumulate(xs, ys, ps, ts, n_bins, polarities, height, width, by_time, drop_incomplete, clip):
    frames = np.zeros((n_bins, polarities, height, width), dtype=np.int32)
    count = xs.shape[0]
    if count == 0:
        return frames
    if by_time:
        duration = ts[count - 1] - ts[0]
        window = duration // n_bins if drop_incomplete else duration // n_bins + 1
        if window == 0:
            return frames
    else:
        per_bin = count // n_bins
        if drop_incomplete and per_bin == 0:
            return frames
    for i in range(count):
        if by_time:
            b = (ts[i] - ts[0]) // window
        elif drop_incomplete:
            b = i // per_bin
        else:
            b = i * n_bins // count
        if b < n_bins:
            frames[b, ps[i], ys[i], xs[i]] += 1
    if clip >= 0:
        np.minimum(frames, clip, frames)
    return frames


def integrate(
    events: np.ndarray,
    sensor_size: tuple[int, int, int],
    n_bins: int,
    by: Literal["time", "count"] = "time",
    drop_incomplete: bool = False,
    clip: int | None = None,
) -> np.ndarray:
    """Frames ``[n_bins, P, H, W]`` (int32) of a time-ordered event array; see the module docstring."""
    _validate(events, sensor_size, n_bins, by)
    width, height, polarities = sensor_size
    return _accumulate(
        np.ascontiguousarray(events["x"], dtype=np.int64),
        np.ascontiguousarray(events["y"], dtype=np.int64),
        np.ascontiguousarray(events["p"], dtype=np.int64),
        np.ascontiguousarray(events["t"], dtype=np.int64),
        n_bins,
        polarities,
        height,
        width,
        by == "time",
        drop_incomplete,
        -1 if clip is None else int(clip),
    )
