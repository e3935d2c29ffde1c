"""``ucb``: deterministic top-K by an upper confidence bound on the loss (Raju et al. 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import ClassVar

import numpy as np

from .base import Method, PlanRequest, method_rng, score_arrays, shuffle, top_k, unseen_first


@dataclass(frozen=True)
class UCB(Method):
    """The K examples with the largest ``ℓ_i + c·sqrt(log t / n_i)``, visited in a per-epoch shuffle, weights 1.

    From Raju, Daruwalla & Lipasti, "Accelerating Deep Learning with Dynamic Data Pruning" (arXiv
    2111.12621), which treats each example as a bandit arm and keeps the arms with the highest upper
    confidence bound on their loss. ``ℓ_i`` is the example's latest loss in the store, ``n_i`` the
    number of times it was scored and ``t = Σ n_i`` (at least 1) the number of scores recorded;
    never-scored examples rank first (infinite bonus). Ties at the cut are broken at random from
    ``(seed, epoch)``; otherwise the selection is deterministic given the scores. Weights are 1: the
    gradient is biased towards high-loss and rarely scored examples on purpose, as in the paper.

    Args:
        c: exploration strength, >= 0 (default 1.0). The bonus is on the scale of the loss: with
            cross-entropy losses of O(1) and, say, t = 5·10⁶ scores, an example scored 50 times gets
            a bonus of about 0.55·c, comparable to mid-training losses; ``c = 0`` is greedy top-K by loss.

    Where this differs from the paper: we had only the paper's abstract to check against. This
    version uses the count-based UCB1 bonus and the store's latest loss as the estimate (the store
    keeps one score per example, not a running mean or variance); the paper's estimator may differ.
    """

    c: float = 1.0
    name: ClassVar[str] = "ucb"
    score: ClassVar[str | None] = "loss"

    def __post_init__(self) -> None:
        if not isinstance(self.c, Real) or not math.isfinite(self.c) or self.c < 0:
            raise ValueError(f"ucb option c must be a finite number >= 0, got {self.c!r}")

    def upper_bounds(self, request: PlanRequest) -> np.ndarray:
        """float64[N]: ``ℓ_i + c·sqrt(log t / n_i)``, ``+inf`` for never-scored examples."""
        scores, seen = score_arrays(request, self)
        total = max(1, int(seen.sum()))
        bonus = self.c * np.sqrt(math.log(total) / np.maximum(seen, 1))
        return unseen_first(scores + bonus, seen)

    def plan(self, request: PlanRequest) -> tuple[np.ndarray, np.ndarray]:
        rng = method_rng(self, request.seed, request.epoch)
        return shuffle(top_k(self.upper_bounds(request), request.sample_size, rng), request)
