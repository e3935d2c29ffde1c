"""The measured cost of a reader's range requests, which ``FetchOptions(adaptive=True)`` plans reads by.

``sadp_data.fetch`` sends each block's remote ranges as one concurrent batch; ``RequestCosts``
fits what such a batch costs from the batches this reader has sent, so the planner can trade
requests for bytes where requests are expensive and keep to the planned bytes where they are not.
"""

from __future__ import annotations

import threading

import numpy as np

#: ``RequestCosts.request_cost``'s answer for the probe block: its first shard by the fixed rule, the rest whole.
PROBE = -1.0


class RequestCosts:
    """What one request costs this reader, fitted to its own request batches (``FetchOptions(adaptive=True)``).

    ``observe`` records each batch's request count, bytes and wall time, and ``fit`` solves
    ``seconds ≈ t₀ + a·requests + b·bytes`` by non-negative least squares (t₀: what a batch costs
    however large, e.g. latency that concurrency hides; a: what each request adds; b: what each
    byte adds). If every block were planned alike, requests and bytes would grow together and leave
    ``a`` and ``b`` unidentified, so the reader's first block is a probe (``PROBE``): its first shard
    is read by the fixed rule and its other shards whole, in two batches timed apart. Every later
    block is planned with ``request_cost = a/b`` bytes once the probe is back (it waits for it, at
    most ``probe_timeout`` s; ``None``, the fixed rule, while no fit is possible). Two distinct
    batches fit ``a`` and ``b`` alone (t₀ = 0), three or more all three. Trade-off: the probe reads
    a few whole shards the fixed rule would not, and the blocks after it wait for it (the first
    block's read-ahead is lost).
    """

    def __init__(self, probe_timeout: float = 60.0) -> None:
        self.probe_timeout = probe_timeout
        self.observations: list[tuple[int, int, float]] = []
        self.planned = 0
        self.probe_pending = False
        self.condition = threading.Condition()

    def observe(self, requests: int, size: int, seconds: float) -> None:
        with self.condition:
            self.observations.append((requests, size, seconds))

    def probe_done(self) -> None:
        """The probe block's reads are back (or failed): later blocks may be planned."""
        with self.condition:
            self.probe_pending = False
            self.condition.notify_all()

    def fit(self) -> tuple[float, float, float] | None:
        """``(t₀ s, a s per request, b s per byte)``; t₀ = 0 from 2 distinct observations, ``None`` from fewer."""
        with self.condition:
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
        """The ``request_cost`` (bytes) to plan the next block with: ``PROBE``, ``a/b`` of the fit, or ``None``."""
        with self.condition:
            number, self.planned = self.planned, self.planned + 1
            if number == 0 and not self.observations:
                self.probe_pending = True
                return PROBE
            self.condition.wait_for(lambda: not self.probe_pending, self.probe_timeout)
        fitted = self.fit()
        if fitted is None:
            return None
        _, per_request, per_byte = fitted
        if per_byte <= 0.0:
            return float("inf") if per_request > 0.0 else None
        return per_request / per_byte
