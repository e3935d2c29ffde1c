"""The store's update kernel: validate a batch of scores, then apply it and mark the touched chunks.

``apply_update`` (numba) and ``apply_update_reference`` (numpy) have the same contract and are tested
against each other. Validation comes first and the batch is applied only if every entry is valid,
so bad input changes nothing. Repeated indices: the last score wins, each occurrence counts as seen.
Fusing the checks, the scatter, the seen-count increment (``np.add.at`` in numpy, the slowest part)
and the dirty-chunk marking into one pass makes an update of a 256-example batch cost a few
microseconds instead of ~80 µs.
"""

from __future__ import annotations

import numba
import numpy as np

from .jit import CACHE


def bad_indices(index: np.ndarray, num_examples: int) -> np.ndarray:
    """Mask of the indices outside ``[0, num_examples)``."""
    return (index < 0) | (index >= num_examples)


def bad_scores(values: np.ndarray) -> np.ndarray:
    """Mask of the scores that are NaN, infinite or negative."""
    return ~np.isfinite(values) | (values < 0)


def apply_update_reference(
    scores: np.ndarray,
    seen: np.ndarray,
    epochs: np.ndarray,
    dirty: np.ndarray,
    index: np.ndarray,
    values: np.ndarray,
    stamp: int,
    chunk: int,
) -> int:
    """Apply the batch and return -1, or return the position of the first bad entry and change nothing.

    An entry is bad when its index is outside ``[0, N)`` or its value is NaN, infinite or negative.
    """
    bad = bad_indices(index, scores.shape[0]) | bad_scores(values)
    if bad.any():
        return int(np.flatnonzero(bad)[0])
    scores[index] = values
    np.add.at(seen, index, 1)
    epochs[index] = stamp
    dirty[np.unique(index // chunk)] = True
    return -1


@numba.njit(cache=CACHE, nogil=True)
def apply_update(
    scores: np.ndarray,
    seen: np.ndarray,
    epochs: np.ndarray,
    dirty: np.ndarray,
    index: np.ndarray,
    values: np.ndarray,
    stamp: int,
    chunk: int,
) -> int:  # pragma: no cover - compiled; tested against apply_update_reference
    """See ``apply_update_reference``; identical results."""
    count = scores.shape[0]
    for position in range(index.shape[0]):
        value = values[position]
        if index[position] < 0 or index[position] >= count or not (value >= 0.0) or value == np.inf:
            return position
    for position in range(index.shape[0]):
        target = index[position]
        scores[target] = values[position]
        seen[target] += 1
        epochs[target] = stamp
        dirty[target // chunk] = True
    return -1
