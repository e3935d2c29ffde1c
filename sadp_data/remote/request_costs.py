"""The measured cost of a reader's range requests, which ``FetchOptions(adaptive=True)`` plans reads by.

``sadp_data.remote.fetch`` sends each block's remote ranges as one concurrent batch; ``RequestCosts``
fits what such a batch costs from the batches this reader has sent, so the planner can trade
requests for bytes where requests are expensive and keep to the planned bytes where they are not.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np


class RequestCosts:
    """What one request costs this reader, fitted to its own request batches (``FetchOptions(adaptive=True)``).

    ``observe`` records each batch's request count, bytes and wall time (the last ``history``
    batches are kept), and ``fit`` solves ``seconds ≈ t₀ + a·requests + b·bytes`` by non-negative
    least squares (t₀: what a batch costs however large, e.g. latency that concurrency hides; a:
    what each request adds; b: what each byte adds). If every block were planned alike, requests
    and bytes would grow together and leave ``a`` and ``b`` unidentified, so while no fit is
    possible the next block is a probe: its first shard read by the fixed rule and its other shards
    whole, in two batches timed apart. Blocks planned while a probe is out wait for it (at most
    ``probe_timeout`` s), then take ``request_cost = a/b`` bytes, or ``None`` (the fixed rule) if
    the fit is still not possible. Two observations of independent (requests, bytes) fit ``a`` and
    ``b`` alone (t₀ = 0), three or more all three. Trade-off: a probe reads a few whole shards the
    fixed rule would not, and the blocks after it wait for it (the first block's read-ahead is lost).

    A copy sent to another process (a spawned DataLoader worker) carries the observations, not the lock.
    """

    def __init__(self, probe_timeout: float = 60.0, history: int = 256) -> None:
        self.probe_timeout = probe_timeout
        self.observations: deque[tuple[int, int, float]] = deque(maxlen=history)
        self.probe_pending = False
        self.condition = threading.Condition()

    def __getstate__(self) -> dict[str, Any]:
        return {"probe_timeout": self.probe_timeout, "observations": self.observations}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.probe_timeout, self.observations = state["probe_timeout"], state["observations"]
        self.probe_pending, self.condition = False, threading.Condition()

    def observe(self, requests: int, size: int, seconds: float) -> None:
        with self.condition:
            self.observations.append((requests, size, seconds))

    def probe_done(self) -> None:
        """The probe block's reads are back (or failed): blocks waiting for it may be planned."""
        with self.condition:
            self.probe_pending = False
            self.condition.notify_all()

    def fit(self) -> tuple[float, float, float] | None:
        """``(t₀ s, a s per request, b s per byte)``; ``None`` while ``a`` and ``b`` are not identifiable
        (fewer than two observations of independent (requests, bytes)); t₀ = 0 when it is not either."""
        with self.condition:
            data = np.array(self.observations, dtype=np.float64).reshape(-1, 3)
        scale = max(float(data[:, 1].max(initial=0.0)), 1.0)  # bytes in units of the largest batch
        design = np.column_stack([np.ones(len(data)), data[:, 0], data[:, 1] / scale])
        if np.linalg.matrix_rank(design[:, 1:]) < 2:
            return None
        full = np.linalg.matrix_rank(design) == 3
        best, best_error = np.zeros(3), float(np.sum(data[:, 2] ** 2))
        for mask in range(1, 8) if full else (2, 4, 6):  # exact NNLS: the best non-negative support
            columns = [j for j in range(3) if mask >> j & 1]
            solution, *_ = np.linalg.lstsq(design[:, columns], data[:, 2], rcond=None)
            if (solution >= 0).all():
                error = float(np.sum((design[:, columns] @ solution - data[:, 2]) ** 2))
                if error < best_error - 1e-18:
                    best, best_error = np.zeros(3), error
                    best[columns] = solution
        return float(best[0]), float(best[1]), float(best[2] / scale)

    def plan_next(self) -> tuple[bool, float | None]:
        """``(probe, request_cost)`` for the next block: ``(True, None)`` for a probe; else the ``a/b``
        bytes of the fit (``inf``: bytes measured as free), or ``None`` for the fixed rule."""
        while True:
            with self.condition:
                if self.probe_pending and not self.condition.wait_for(
                    lambda: not self.probe_pending, self.probe_timeout
                ):
                    self.probe_pending = False  # a probe that never came back: stop waiting for it
            fitted = self.fit()
            if fitted is not None:
                break
            with self.condition:
                if not self.probe_pending:
                    self.probe_pending = True
                    return True, None
            # another block took the probe meanwhile: wait for that one
        _, per_request, per_byte = fitted
        if per_byte <= 0.0:
            return False, (float("inf") if per_request > 0.0 else None)
        return False, per_request / per_byte
