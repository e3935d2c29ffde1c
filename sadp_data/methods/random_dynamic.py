"""``random``: uniform dynamic pruning, a fresh random subset every epoch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..kernels import plan_epoch
from .base import Method, PlanRequest, to_host


@dataclass(frozen=True)
class RandomDynamic(Method):
    """A fresh simple random sample of K examples each epoch, weights 1.

    ``plan_epoch(ones, keep_ratio, seed, epoch, uniform=True)``: bit-identical to what
    ``SADPSampler(method="random")`` has always drawn (with the ``numpy``/``numba`` backends).
    Every example is drawn with probability K/N, so the mean loss over the plan is an unbiased
    estimate of the full-data mean loss.
    """

    name: ClassVar[str] = "random"
    score: ClassVar[str | None] = None

    def plan(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        order, weights = plan_epoch(
            np.ones(request.num_examples, dtype=np.float32),
            request.keep_ratio,
            request.seed,
            request.epoch,
            uniform=True,
            backend=request.backend,
        )
        return to_host(order), to_host(weights)
