"""A small synthetic N-MNIST folder in the layout of the ``nmnist-small`` subset, for tests without it.

The layout: ``samples/<id>.bs2`` recordings in N-MNIST's 40-bit binary format (5 bytes an event:
x, y, then polarity in bit 7 and the 23-bit timestamp in µs across the last three bytes, big-endian),
train ids ``1..n`` listed in ``train1K.txt`` and test ids ``60001..`` in ``test100.txt``, each list a
``#sample #class`` header and ``<id>\\t<label>`` lines. The events are random (x, y on the 34×34
sensor, both polarities, sorted timestamps up to ~0.34 s, as in N-MNIST's saccades); the labels are
balanced and shuffled, so a label's ids are not consecutive. Nothing here comes from the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SENSOR = 34
MAX_TIME_US = 336_040
LABEL_HEADER = "#sample #class\n"
TEST_FIRST_ID = 60001


def encode_events(x: np.ndarray, y: np.ndarray, p: np.ndarray, t: np.ndarray) -> bytes:
    """Events in N-MNIST's binary format (the inverse of ``sadp_data.sources.events.nmnist.read``)."""
    t = np.asarray(t, dtype=np.int64)
    if t.size and (t.min() < 0 or t.max() >= 1 << 23):
        raise ValueError("N-MNIST timestamps are 23-bit microseconds")
    raw = np.empty((t.size, 5), dtype=np.uint8)
    raw[:, 0] = x
    raw[:, 1] = y
    raw[:, 2] = (np.asarray(p, dtype=np.int64) << 7) | (t >> 16)
    raw[:, 3] = (t >> 8) & 0xFF
    raw[:, 4] = t & 0xFF
    return raw.tobytes()


def random_events(rng: np.random.Generator, low: int = 300, high: int = 3000) -> dict[str, np.ndarray]:
    """One recording's fields ``x, y, p, t``: between ``low`` and ``high`` events, time-sorted."""
    n = int(rng.integers(low, high))
    return {
        "x": rng.integers(0, SENSOR, n),
        "y": rng.integers(0, SENSOR, n),
        "p": rng.integers(0, 2, n),
        "t": np.sort(rng.integers(0, MAX_TIME_US + 1, n)),
    }


def write_synthetic_nmnist(root: Path, train: int = 300, test: int = 50, seed: int = 0) -> dict[int, dict]:
    """Write ``train`` + ``test`` random recordings and both label lists under ``root``.

    Returns every recording's fields by id (for tests that check what a reader returns).
    """
    rng = np.random.default_rng(seed)
    (root / "samples").mkdir(parents=True, exist_ok=True)
    written = {}
    for name, first, count in (("train1K.txt", 1, train), ("test100.txt", TEST_FIRST_ID, test)):
        labels = rng.permutation(np.arange(count) % 10)
        lines = []
        for sample_id, label in zip(range(first, first + count), labels.tolist(), strict=True):
            events = random_events(rng)
            (root / "samples" / f"{sample_id}.bs2").write_bytes(encode_events(**events))
            written[sample_id] = {**events, "label": label}
            lines.append(f"{sample_id}\t{label}\n")
        (root / name).write_text(LABEL_HEADER + "".join(lines))
    return written
