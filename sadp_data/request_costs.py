"""The measured cost of a reader's range requests, which ``FetchOptions(adaptive=True)`` plans reads by.

``sadp_data.fetch`` sends each block's remote ranges as one concurrent batch; ``RequestCosts``
fits what such a batch costs from the batches this reader has sent, so the planner can trade
requests for bytes where requests are expensive and keep to the planned bytes where they are not.
"""

from __future__ import annotations

import math
import threading

import numpy as np


class RequestCosts:
    """What one request costs this reader, fitted to its own request batches (``FetchOptions(adaptive=True)``).

    Each block's remote ranges go out as one concurrent batch; ``observe`` records its request
    count, bytes and wall time, and ``fit`` solves ``seconds ≈ t₀ + a·requests + b·bytes`` by
    non-negative least squares (t₀: what a batch costs however large, e.g. latency that concurrency
    hides; a: what each request adds; b: what each byte adds). Requests and bytes grow together
    when every block is planned alike, which leaves ``a`` and ``b`` unidentified, so the first
    ``probe_blocks`` blocks alternate between the fixed rule and whole-shard reads. After them a
    block is planned with ``request_cost = a/b`` bytes (``None`` — the fixed rule — while the fit
    is not possible). Two distinct batches fit ``a`` and ``b`` alone (t₀ = 0), three or more all
    three. With the default read-ahead of 2, a reader's first three blocks are planned before any
    fit (two probes and one by the fixed rule); a reader whose part of the epoch is a few blocks
    long (DataLoader workers start afresh each epoch) gains less. Trade-off: the probes may read a
    few whole shards the fixed rule would not.
    """

    def __init__(self, probe_blocks: int = 2) -> None:
        self.probe_blocks = probe_blocks
        self.observations: list[tuple[int, int, float]] = []
        self.planned = 0
        self.lock = threading.Lock()

    def observe(self, requests: int, size: int, seconds: float) -> None:
        with self.lock:
            self.observations.append((requests, size, seconds))

    def fit(self) -> tuple[float, float, float] | None:
        """``(t₀ s, a s per request, b s per byte)``; t₀ = 0 from 2 distinct observations, ``None`` from fewer."""
        with self.lock:
            data = np.array(self.observations, dtype=np.float64).reshape(-1, 3)
        distinct = np.unique(data[:, :2], axis=0).shape[0]
        if distinct < 2:
            return None
        scale = max(float(data[:, 1].max()), 1.0)  # bytes in units of the largest batch: a conditioned system
        design = np.column_stack([np.ones(len(data)), data[:, 0], data[:, 1] / scale])
        best, best_error = np.zeros(3), float(np.sum(data[:, 2] ** 2))
        for mask in range(1, 8) if distinct >= 3 else (2, 4, 6):  # exact NNLS: the best non-negative support
            columns = [j for j in range(3) if mask >> j & 1]
            solution, *_ = np.linalg.lstsq(design[:, columns], data[:, 2], rcond=None)
            if (solution >= 0).all():
                error = float(np.sum((design[:, columns] @ solution - data[:, 2]) ** 2))
                if error < best_error - 1e-18:
                    best, best_error = np.zeros(3), error
                    best[columns] = solution
        return float(best[0]), float(best[1]), float(best[2] / scale)

    def request_cost(self) -> float | None:
        """The ``request_cost`` (bytes) to plan the next block with: a probe, ``a/b`` of the fit, or ``None``."""
        with self.lock:
            number, self.planned = self.planned, self.planned + 1
        if number < self.probe_blocks:
            return math.inf if number % 2 else None
        fitted = self.fit()
        if fitted is None:
            return None
        _, per_request, per_byte = fitted
        if per_byte <= 0.0:
            return math.inf if per_request > 0.0 else None
        return per_request / per_byte
