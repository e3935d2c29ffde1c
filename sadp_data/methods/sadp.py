"""``sadp``: spike-aware importance sampling (the library's own method, arXiv 2510.04098)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..kernels import plan_epoch
from .base import Method, PlanRequest, require_scores, to_host


@dataclass(frozen=True)
class SADP(Method):
    """K examples drawn with probabilities proportional to their smoothed scores, Horvitz–Thompson weights.

    ``plan_epoch(scores, keep_ratio, seed, epoch, seen=seen, smoothing=λ)``: bit-identical to
    ``SADPSampler(method="sadp")``. Example i is drawn with probability ``π_i ∝ (1 − λ)·s_i/mean(s) + λ``
    (capped at 1) and weighted ``K / (N π_i)``, so the weighted mean loss over the plan is an unbiased
    estimate of the full-data mean loss. Unseen examples count as of mean score. The scores are the
    spike-aware gradient-norm bound (``score = "spike_aware"``).
    """

    name: ClassVar[str] = "sadp"
    score: ClassVar[str | None] = "spike_aware"

    def plan(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        require_scores(request, self)
        order, weights = plan_epoch(
            request.scores,
            request.keep_ratio,
            request.seed,
            request.epoch,
            seen=request.seen,
            smoothing=request.smoothing,
            backend=request.backend,
        )
        return to_host(order), to_host(weights)
