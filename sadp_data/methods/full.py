"""``full``: no pruning, the reference every speedup is measured against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method, PlanRequest, shuffle


@dataclass(frozen=True)
class Full(Method):
    """Every example, every epoch, in a fresh per-epoch shuffle, weights 1.

    The plan is exactly ``plan_epoch``'s full-data plan. Raises ``ValueError`` for a keep ratio
    below 1: the sampler runs this method at keep ratio 1.0 whatever its schedule says.
    """

    name: ClassVar[str] = "full"
    score: ClassVar[str | None] = None

    def plan(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        if request.keep_ratio < 1.0:
            raise ValueError(f"method 'full' trains on every example: keep_ratio must be 1.0, got {request.keep_ratio}")
        return shuffle(np.arange(request.num_examples), request)
