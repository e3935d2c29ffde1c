"""Loader bench, DVS backend: event-to-frame integration throughput on N-MNIST (numba vs numpy vs tonic)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any


def run_dvs_bench(data_dir: str | Path, rounds: int = 3, limit: int | None = None) -> dict[str, Any]:
    """Event-to-frame integration throughput (events/s): numba kernel vs numpy reference vs tonic.

    All recordings of the N-MNIST folder's train split are read into memory first; each
    implementation then integrates every recording into 8 equal-time frames, ``rounds`` times
    (median reported). tonic's ``ToFrame`` uses its own (event-dropping) binning, so it is timed,
    not compared, here; ``tests/sources/test_events.py`` checks it matches ``drop_incomplete=True``.
    """
    from sadp_data.sources.events.frames import integrate, integrate_reference
    from sadp_data.sources.events.nmnist import NMNIST, SENSOR_SIZE

    dataset = NMNIST(data_dir, "train")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    recordings = [dataset[i][0] for i in range(count)]
    total = sum(len(events) for events in recordings)
    implementations = {
        "numba": lambda events: integrate(events, SENSOR_SIZE, 8),
        "numpy": lambda events: integrate_reference(events, SENSOR_SIZE, 8),
    }
    try:
        from tonic.transforms import ToFrame

        implementations["tonic"] = ToFrame(sensor_size=SENSOR_SIZE, n_time_bins=8)
    except ImportError:
        pass
    integrate(recordings[0], SENSOR_SIZE, 8)  # load the compiled kernel once
    results = {}
    for name, function in implementations.items():
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for events in recordings:
                function(events)
            times.append(time.perf_counter() - start)
        results[name] = {"events_per_s": total / statistics.median(times), "seconds": statistics.median(times)}
    return {"backend": "dvs", "recordings": count, "events": total, "integration": results}
